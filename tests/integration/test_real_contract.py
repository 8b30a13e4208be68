"""The real DashScope contract (issue 14): per-task models checked against the catalogue,
all n outputs kept, account errors, cost.  Real broker, real worker, real SDK → emulator."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from config.catalogue import load_catalogue
from tests.conftest import Emulator, Worker
from tests.support import (
    TopicReader,
    edit_form,
    emulator_config,
    emulator_stats,
    get_json,
    start_worker,
    submit,
    wait_for,
    wait_task,
)

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
    assert per_model.get("qwen-image-edit", {}).get("requests", 0) == 0, per_model
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
    price = load_catalogue().model("qwen-image-edit-plus").price_in("cn-beijing")
    _, before = await get_json(f"{worker.url}/api/v1/stats")
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
    # (6) cost: 2 calls × 3 generated images × the catalogue price; the resubmission saved as much.
    assert done["cost"]["currency"] == "CNY"
    assert done["cost"]["spent"] == pytest.approx(2 * 3 * price) and done["cost"]["saved"] == 0
    assert again["cost"]["spent"] == 0 and again["cost"]["saved"] == pytest.approx(2 * 3 * price)
    assert done["results"][0]["cost"]["spent"] == pytest.approx(3 * price)
    _, after = await get_json(f"{worker.url}/api/v1/stats")
    was = before["cost"]["by_model"].get("qwen-image-edit-plus", {"spent": 0.0, "saved": 0.0})
    now = after["cost"]["by_model"]["qwen-image-edit-plus"]
    assert now["spent"] - was["spent"] == pytest.approx(6 * price)
    assert now["saved"] - was["saved"] == pytest.approx(6 * price)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/metrics") as resp:
            assert 'cost_spent_total{currency="CNY",model="qwen-image-edit-plus"}' in await resp.text()


# --- (3) account-state errors stop the spending ----------------------------------------
@pytest.fixture(scope="module")
def probing_worker(kafka_bootstrap: str, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory,
                   session_id: str) -> Iterator[Worker]:
    """A worker of its own whose blocked models are probed every 2 s (default 30 s), so
    recovery is seen quickly."""
    w = start_worker("probing-worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                     data_dir=tmp_path_factory.mktemp("probing"), app_id=f"imagestream-probe-{session_id}",
                     extra_env={"IMAGESTREAM_UPSTREAM_PROBE_INTERVAL": "2"})
    yield w
    w.proc.stop()


async def test_account_error_blocks_the_model_then_work_resumes_by_itself(
    probing_worker: Worker, kafka_bootstrap: str, fresh_emulator: Emulator, tmp_path: Path
) -> None:
    worker = probing_worker
    model = "qwen-image-edit-plus"
    seed = unique_seed()
    await emulator_config(fresh_emulator, account_error={model: "arrears"})
    try:
        files = [(f"{i}.png", picture(seed + i)) for i in range(12)]
        async with TopicReader(kafka_bootstrap, worker.topic("imagestream-upstream-blocks")) as board:
            status, body = await submit(worker.url, edit_form(files, params={"model": model}))
            assert status == 202, body
            done = await wait_task(worker.url, body["task_id"])
            event, *_ = await board.collect(lambda v: v.get("model") == model and v.get("blocked"), timeout=30)
        assert event["code"] == "account_in_arrears"
        assert done["status"] == "failed" and done["failed_images"] == 12, done
        assert {r["error"]["code"] for r in done["results"]} == {"account_in_arrears"}
        # At most the three calls in flight when the first answer came; the rest failed at once.
        requests = (await emulator_stats(fresh_emulator))["per_model"][model]["requests"]
        assert 1 <= requests <= 3, requests
        _, stats = await get_json(f"{worker.url}/api/v1/stats")
        [blocked] = stats["upstream"]["blocked"]
        assert (blocked["model"], blocked["code"]) == (model, "account_in_arrears") and blocked["since"] > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{worker.url}/metrics") as resp:
                text = await resp.text()
        assert f'upstream_blocked{{code="account_in_arrears",model="{model}"}} 1' in text, text[-2000:]
        # Another model of the same account is not blocked.
        status, body = await submit(worker.url, edit_form([("other.png", picture(seed + 50))]))
        assert (await wait_task(worker.url, body["task_id"]))["status"] == "completed"
        # A worker that joins later learns the block from the topic, without a request.
        calls = (await emulator_stats(fresh_emulator))["total_requests"]
        other = await asyncio.to_thread(
            start_worker, "probing-worker-2", kafka_bootstrap=kafka_bootstrap, emulator=fresh_emulator,
            data_dir=tmp_path, app_id=worker.app_id, extra_env={"IMAGESTREAM_UPSTREAM_PROBE_INTERVAL": "2"})
        try:
            async def learnt() -> bool:
                _, doc = await get_json(f"{other.url}/api/v1/stats")
                return [(b["model"], b["code"]) for b in doc["upstream"]["blocked"]] == [(model, "account_in_arrears")]

            await wait_for(learnt, timeout=30, what="the second worker to learn the block")
            assert (await emulator_stats(fresh_emulator))["total_requests"] == calls
        finally:
            other.proc.stop()
    finally:
        await emulator_config(fresh_emulator, account_error=None)
    # The bill is paid: a probe (one job, at most every 2 s here) finds out, and the
    # model works again without a restart.
    attempt = 0

    async def recovered() -> bool:
        nonlocal attempt
        attempt += 1
        _, body = await submit(worker.url, edit_form([("again.png", picture(seed + 100 + attempt))],
                                                     params={"model": model}))
        return (await wait_task(worker.url, body["task_id"]))["status"] == "completed"

    await wait_for(recovered, timeout=30, interval=0.5, what="the blocked model to work again")
    _, stats = await get_json(f"{worker.url}/api/v1/stats")
    assert stats["upstream"]["blocked"] == []
    assert (await emulator_stats(fresh_emulator))["per_model"][model]["requests"] <= 3 + attempt


# --- (5) multi-image calls -----------------------------------------------------------------
def group_form(files: list[tuple[str, bytes]], groups: Any, **params: Any) -> aiohttp.FormData:
    form = edit_form(files, edit_type="enhance", params={"model": "qwen-image-edit-plus", **params})
    form.add_field("groups", groups if isinstance(groups, str) else json.dumps(groups))
    return form


async def test_groups_are_one_call_each_and_the_order_is_part_of_the_key(
    worker: Worker, fresh_emulator: Emulator
) -> None:
    seed = unique_seed()
    files = [(f"{i}.png", picture(seed + i, size=(160 + 16 * i, 120))) for i in range(4)]
    status, body = await submit(worker.url, group_form(files, [[0, 1], [2, 3]]))
    assert status == 202 and body["total_images"] == 2, body
    done = await wait_task(worker.url, body["task_id"])
    assert done["status"] == "completed" and done["total_images"] == 2, done
    assert [(r["index"], r["inputs"], r["filename"]) for r in done["results"]] == [
        (0, [0, 1], "1.png"), (1, [2, 3], "3.png")]
    assert (await emulator_stats(fresh_emulator))["per_model"]["qwen-image-edit-plus"]["requests"] == 2
    # The output follows the last input of each group: the same edit of that image alone.
    alone = await wait_task(worker.url, (await submit(worker.url, edit_form(
        [files[1]], edit_type="enhance", params={"model": "qwen-image-edit-plus"})))[1]["task_id"])
    grouped = await download(done["results"][0]["result_url"])
    single = await download(alone["results"][0]["result_url"])
    assert grouped.size == single.size == (176, 120)
    assert list(grouped.convert("RGB").get_flattened_data()) == list(single.convert("RGB").get_flattened_data())
    # The same group again hits; the swapped order is another call.
    again = await wait_task(worker.url, (await submit(worker.url, group_form(files, [[0, 1]])))[1]["task_id"])
    assert again["results"][0]["cache_status"] == "HIT", again
    swapped = await wait_task(worker.url, (await submit(worker.url, group_form(files, [[1, 0]])))[1]["task_id"])
    assert swapped["results"][0]["cache_status"] == "MISS" and swapped["results"][0]["inputs"] == [1, 0]
    assert (await download(swapped["results"][0]["result_url"])).size == (160, 120)  # follows image 0


@pytest.mark.parametrize(
    "groups", ["[]", "[[]]", "[[0, 1, 2, 3]]", "[[0, 4]]", "[[0, 0]]", '"0,1"', "[[true]]", "[[0], 1]", "{nope"])
async def test_bad_groups_are_refused_before_any_call(worker: Worker, fresh_emulator: Emulator, groups: str) -> None:
    files = [(f"{i}.png", picture(200 + i)) for i in range(4)]
    status, body = await submit(worker.url, group_form(files, groups))
    assert status == 400 and body["error"]["code"] == "invalid_groups", body
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 0
