"""The real DashScope contract (issue 14): per-task models checked against the catalogue,
all n outputs kept, account errors, cost.  Real broker, real worker, real SDK → emulator."""

from __future__ import annotations

import io
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from tests.conftest import Emulator, Worker
from tests.support import edit_form, emulator_stats, submit, wait_task

pytestmark = pytest.mark.integration


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    img = Image.new("RGB", size, (seed * 29 % 256, seed * 83 % 256, seed * 41 % 256))
    ImageDraw.Draw(img).ellipse((5 + seed % 40, 10, 90 + seed % 30, 100), fill=(250 - seed % 200, 40, 180))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def unique_seed() -> int:
    return int(time.time() * 1000) % 100_000


# --- (1) the model catalogue ---------------------------------------------------------
async def test_task_chooses_its_model(worker: Worker, fresh_emulator: Emulator) -> None:
    image = picture(unique_seed())
    status, body = await submit(worker.url, edit_form([("a.png", image)], edit_type="enhance",
                                                      params={"model": "qwen-image-edit-plus"}))
    assert status == 202, body
    done = await wait_task(worker.url, body["task_id"])
    assert done["status"] == "completed", done
    per_model = (await emulator_stats(fresh_emulator))["per_model"]
    assert per_model["qwen-image-edit-plus"]["requests"] == 1, per_model
    assert "qwen-image-edit" not in per_model, per_model
    # The same picture and edit on the default model is another cache key: a new call.
    status, body = await submit(worker.url, edit_form([("a.png", image)], edit_type="enhance"))
    done = await wait_task(worker.url, body["task_id"])
    assert done["results"][0]["cache_status"] == "MISS", done
    assert (await emulator_stats(fresh_emulator))["per_model"]["qwen-image-edit"]["requests"] == 1


@pytest.mark.parametrize(
    ("params", "code", "named"),
    [
        ({"model": "qwen-image-edit-ultra"}, "unknown_model", "qwen-image-edit-ultra"),
        ({"n": 3}, "invalid_edit_params", "n=3"),  # qwen-image-edit makes one image
        ({"size": "1024*1024"}, "invalid_edit_params", "size"),
        ({"prompt_extend": True}, "invalid_edit_params", "prompt_extend"),
        ({"model": "qwen-image-edit-plus", "size": "1000*1000"}, "invalid_edit_params", "16"),
        ({"model": "qwen-image-edit-plus", "size": "4096*1024"}, "invalid_edit_params", "2048"),
        ({"model": "qwen-image-edit-max", "n": 7}, "invalid_edit_params", "n"),
        ({"negative_prompt": "x" * 501}, "prompt_too_long", "negative_prompt"),
    ],
)
async def test_params_checked_against_the_model_before_any_call(
    worker: Worker, fresh_emulator: Emulator, params: dict[str, Any], code: str, named: str
) -> None:
    status, body = await submit(worker.url, edit_form([("a.png", picture(7))], params=params))
    assert status == 400, body
    assert body["error"]["code"] == code, body
    assert named in body["error"]["message"], body
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 0


# --- (2) every paid output kept --------------------------------------------------------
async def download(url: str) -> Image.Image:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200, url
            return Image.open(io.BytesIO(await resp.read()))


async def test_n_outputs_are_all_kept_and_all_come_back_from_the_cache(
    worker: Worker, fresh_emulator: Emulator
) -> None:
    seed = unique_seed()
    files = [("a.png", picture(seed)), ("b.png", picture(seed + 1))]
    params = {"model": "qwen-image-edit-plus", "n": 3, "seed": 11}
    status, body = await submit(worker.url, edit_form(files, edit_type="enhance", params=params))
    assert status == 202, body
    done = await wait_task(worker.url, body["task_id"])
    assert done["status"] == "completed", done
    stats = await emulator_stats(fresh_emulator)
    assert stats["per_model"]["qwen-image-edit-plus"]["requests"] == 2  # one call per image, not per output
    first: dict[int, list[str]] = {}
    for result in done["results"]:
        urls = result["result_urls"]
        assert len(urls) == 3 and result["result_url"] == urls[0], result
        assert len(set(urls)) == 3, "the three outputs are different pictures"
        for url in urls:
            assert (await download(url)).size[0] > 0
        first[result["index"]] = urls
    # Resubmitted: every image from the cache, with all three outputs, no new call.
    status, body = await submit(worker.url, edit_form(files, edit_type="enhance", params=params))
    again = await wait_task(worker.url, body["task_id"])
    assert all(r["cache_status"] == "HIT" for r in again["results"]), again
    assert {r["index"]: r["result_urls"] for r in again["results"]} == first
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 2
