"""The client library end to end: real broker, the session worker, the emulator."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from producers import (
    DimensionClient,
    ImageEditClient,
    ImageResult,
    TaskStatus,
    submit_and_wait,
)
from tests.conftest import Emulator, Worker
from tests.support import TopicReader, emulator_config, free_port, serve_images, wait_for

pytestmark = pytest.mark.integration


def make_png(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A small PNG, different for every seed (well under the 64 KiB inline limit)."""
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    ImageDraw.Draw(img).rectangle((5 + seed % 40, 10, 60 + seed % 50, 90), fill=(255 - seed % 256, 30, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def salt() -> int:
    return uuid.uuid4().int % 10_000_000


@pytest.fixture
def client_kwargs(worker: Worker, kafka_bootstrap: str) -> dict[str, Any]:
    return {"api_url": worker.url, "kafka_bootstrap": kafka_bootstrap, "topic_prefix": f"{worker.app_id}."}


@pytest.fixture
async def client(client_kwargs: dict[str, Any]) -> AsyncIterator[ImageEditClient]:
    async with ImageEditClient(**client_kwargs) as c:
        yield c


@pytest.fixture(scope="module")
async def image_host() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on 127.0.0.1 (allow-listed for the worker) serving ``images``."""
    async with serve_images() as served:
        yield served


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# --- image edit ----------------------------------------------------------------------------
async def test_http_submit_results_each_image_once_wait_and_download(
    client: ImageEditClient, fresh_emulator: Emulator, tmp_path: Path
) -> None:
    s = salt()
    images = [(f"pic-{i}.png", make_png(s + i)) for i in range(3)]
    task = await client.submit(images, "enhance", prompt="make it crisp")
    assert task.via == "http" and task.total_images == 3 and len(task.task_id) == 32

    seen: list[ImageResult] = [r async for r in task.results(timeout=60)]
    assert sorted(r.index for r in seen) == [0, 1, 2]  # every image, once
    assert all(r.status == "completed" and r.from_cache is False for r in seen)
    assert {r.filename for r in seen} == {name for name, _ in images}

    final = await task.wait(timeout=60)
    assert isinstance(final, TaskStatus) and final.status == "completed" and final.completed_images == 3
    paths = [await client.download(r, tmp_path) for r in sorted(final.results, key=lambda r: r.index)]
    assert [p.name for p in paths] == ["00-pic-0.png", "01-pic-1.png", "02-pic-2.png"]
    assert all(decode(p.read_bytes()).size == (160, 120) for p in paths)

    # The same edit again: every image from the cache, and results() still sees each once.
    again = await client.submit(images, "enhance", prompt="  make   it crisp ")
    cached = [r async for r in again.results(timeout=60)]
    assert sorted(r.index for r in cached) == [0, 1, 2] and all(r.from_cache for r in cached)


async def test_results_after_the_task_finished_come_from_its_status(
    client: ImageEditClient, fresh_emulator: Emulator
) -> None:
    s = salt()
    task = await client.submit([make_png(s), make_png(s + 1)], "grayscale")
    final = await client.wait(task.task_id, timeout=60)
    assert final.status == "completed"
    late = [r async for r in client.results(task.task_id, timeout=30)]
    assert sorted(r.index for r in late) == [0, 1]


async def test_kafka_submit_inline_and_url_images(
    client: ImageEditClient, fresh_emulator: Emulator, kafka_bootstrap: str, worker: Worker,
    image_host: tuple[str, dict[str, bytes]]
) -> None:
    base, served = image_host
    s = salt()
    served[f"remote-{s}.png"] = make_png(s + 1)
    task_id = f"client-{uuid.uuid4().hex[:12]}"
    async with TopicReader(kafka_bootstrap, worker.topic("image-edit-requests")) as requests:
        task = await client.submit([("local.png", make_png(s)), f"{base}/remote-{s}.png"], "enhance",
                                   via="kafka", task_id=task_id)
        [event] = await requests.collect(lambda v: v.get("task_id") == task_id, timeout=30)
    assert (task.task_id, task.via, task.total_images) == (task_id, "kafka", 2)
    assert [img.keys() - {"filename"} for img in event["images"]] == [{"data"}, {"url"}]
    assert requests.seen[-1][0] == f'"{task_id}"'.encode()  # JSON string key, as the worker writes keys

    results = [r async for r in task.results(timeout=60)]
    assert sorted(r.index for r in results) == [0, 1]
    final = await client.wait(task_id, timeout=60)
    assert final.status == "completed", final
    assert [r.filename for r in final.results] == ["local.png", f"remote-{s}.png"]


async def test_wait_and_results_are_fed_by_kafka_not_by_polling(
    client_kwargs: dict[str, Any], fresh_emulator: Emulator
) -> None:
    # One HTTP read right after subscribing, the next only after 60 s: what arrives
    # in between can only have come from the topics.
    await emulator_config(fresh_emulator, latency="fixed:1.0")
    async with ImageEditClient(**client_kwargs, poll_interval=60.0) as c:
        task = await c.submit([make_png(salt()), make_png(salt())], "enhance")
        started = time.monotonic()
        results = [r async for r in task.results(timeout=30)]
        final = await task.wait(timeout=30)
    assert sorted(r.index for r in results) == [0, 1]
    assert final.status == "completed"
    assert time.monotonic() - started < 20


async def test_kafka_task_with_a_bad_edit_type_ends_failed(client: ImageEditClient) -> None:
    task = await client.submit(make_png(salt()), "turn-into-gold", via="kafka")
    final = await task.wait(timeout=60)
    assert final.status == "failed" and final.error is not None
    assert final.error.code == "unknown_edit_type"


def noise_png(nbytes: int) -> bytes:
    side = int((nbytes / 3) ** 0.5) + 1
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


async def test_kafka_uploads_a_large_local_image_and_sends_a_blob_reference(
    client: ImageEditClient, worker: Worker
) -> None:
    big = noise_png(client.config.inline_image_bytes * 3)
    assert len(big) > client.config.inline_image_bytes
    task = await client.submit(("big.png", big), "enhance", via="kafka")
    final = await task.wait(timeout=60)
    assert final.status == "completed", final
    # The input went through the blob store, not inline in the Kafka event.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/blobs/{hashlib.sha256(big).hexdigest()}") as resp:
            assert resp.status == 200 and await resp.read() == big


async def test_blob_upload_validates_the_image(worker: Worker) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{worker.url}/api/v1/blobs", data=b"not an image at all") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "unsupported_format"


async def test_wait_falls_back_to_polling_when_kafka_is_unreachable(
    client_kwargs: dict[str, Any], fresh_emulator: Emulator
) -> None:
    kwargs = {**client_kwargs, "kafka_bootstrap": f"127.0.0.1:{free_port()}", "kafka_timeout": 2.0}
    async with ImageEditClient(**kwargs) as c:
        task = await c.submit(make_png(salt()), "colorize")
        started = time.monotonic()
        final = await c.wait(task.task_id, timeout=60)
        results = [r async for r in c.results(task.task_id, timeout=30)]
    assert final.status == "completed" and [r.index for r in results] == [0]
    assert time.monotonic() - started < 30


async def test_sync_submit_and_wait(client_kwargs: dict[str, Any], fresh_emulator: Emulator,
                                    tmp_path: Path) -> None:
    final = await asyncio.to_thread(submit_and_wait, [make_png(salt())], "style_anime", out=tmp_path,
                                    timeout=60, **client_kwargs)
    assert final.status == "completed"
    assert [p.name for p in tmp_path.iterdir()] == ["00-image-0.png"]


# --- dimensions ----------------------------------------------------------------------------
async def test_dimension_client_http_and_kafka(
    client_kwargs: dict[str, Any], image_host: tuple[str, dict[str, bytes]]
) -> None:
    base, served = image_host
    s = salt()
    served[f"dims-{s}.png"] = make_png(s, size=(321, 123))
    url = f"{base}/dims-{s}.png"
    session = f"sess-{s}"
    async with DimensionClient(**client_kwargs) as dims:
        first = await dims.get(session, "res", 1, url)
        assert (first.session_id, first.scene, first.url) == (session, "1", url)

        async def fetched() -> Any:
            got = await dims.get(session, "res", 1, url)
            return got if not got.is_placeholder else None

        known = await wait_for(fetched, timeout=30, what="the fetched size")
        assert (known.width, known.height, known.source) == (321, 123, "cache")

        computed = await dims.compute(session, "res", 2, make_png(s, size=(50, 40)))
        assert (computed.width, computed.height, computed.source) == (50, 40, "computed")

        prewarmed = await dims.prewarm([url])
        assert prewarmed["accepted"] == 1

        answer = await dims.publish({"session_id": session, "resource": "res", "scene": 1, "url": url},
                                    wait=True, timeout=30)
        assert answer is not None and (answer.width, answer.height) == (321, 123)


@pytest.mark.parametrize("via", ["http", "kafka"])
async def test_client_submits_groups_model_and_n_and_reads_outputs_inputs_cost(
    client: ImageEditClient, fresh_emulator: Emulator, via: str
) -> None:
    s = salt()
    images = [(f"g-{i}.png", make_png(s + i)) for i in range(3)]
    task = await client.submit(images, "enhance", params={"model": "qwen-image-edit-plus", "n": 2},
                               groups=[[0, 1], [2]], via=via)  # type: ignore[arg-type]
    assert task.total_images == 2
    final = await task.wait(timeout=60)
    assert final.status == "completed", final
    assert [(r.index, r.inputs, len(r.result_urls)) for r in final.results] == [(0, (0, 1), 2), (1, (2,), 2)]
    assert final.cost is not None and final.cost.currency == "CNY" and final.cost.spent > 0
