"""The image-edit pipeline end to end: real broker, real worker, real SDK → emulator."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from tests.conftest import Emulator, Worker
from tests.support import (
    TERMINAL,
    TopicReader,
    edit_form,
    emulator_config,
    emulator_stats,
    get_json,
    get_task,
    produce,
    serve_images,
    submit,
    wait_for,
    wait_task,
)

pytestmark = pytest.mark.integration

PROMPT = "提升画质，增强细节"


def make_png(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    draw = ImageDraw.Draw(img)
    draw.rectangle((10 + seed % 50, 20, 120 + seed % 70, 140), fill=(255 - seed % 256, 30, 200))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# --- the foundation: an event in, the worker's output on a topic -------------------------
async def test_task_event_on_kafka_yields_results_and_status_on_topics(
    worker: Worker, kafka_bootstrap: str, fresh_emulator: Emulator
) -> None:
    task_id = f"kafka-{uuid.uuid4().hex[:8]}"
    image = make_png(1000 + int(time.time()) % 1000)
    event = {
        "task_id": task_id,
        "edit_type": "grayscale",
        "edit_params": {},
        "images": [{"filename": "inline.png", "data": base64.b64encode(image).decode()}],
    }
    async with TopicReader(kafka_bootstrap, worker.topic("image-edit-results")) as results, \
            TopicReader(kafka_bootstrap, worker.topic("image-edit-task-status")) as statuses:
        await produce(kafka_bootstrap, worker.topic("image-edit-requests"), event, key=task_id)
        [result] = await results.collect(lambda v: v.get("task_id") == task_id, timeout=60)
        [final] = await statuses.collect(
            lambda v: v.get("task_id") == task_id and v.get("status") in TERMINAL, timeout=60)
    assert result["status"] == "completed", result
    assert result["index"] == 0 and result["filename"] == "inline.png"
    assert result["from_cache"] is False
    assert final["status"] == "completed" and final["completed_images"] == 1 and final["progress"] == 100
    # The result is an edited image served by our own blob API.
    async with aiohttp.ClientSession() as session:
        async with session.get(result["result_url"]) as resp:
            assert resp.status == 200
            edited = Image.open(io.BytesIO(await resp.read())).convert("RGB")
    pixels = list(edited.get_flattened_data())[:500]
    assert all(r == g == b for r, g, b in pixels), "grayscale edit was not applied"


# --- the old system's flow -------------------------------------------------------------
async def test_a_slow_call_holds_one_slot_while_the_others_slide_then_whitespace_variant_hits_cache(
    worker: Worker, fresh_emulator: Emulator
) -> None:
    """One slow call among fast ones: fixed batches of 3 would keep the slow call's
    batch (so at most 2 other calls) waiting for it; a sliding window hands each freed
    slot to the next job at once, so many fast calls run and end inside the slow one."""
    salt = int(time.time() * 1000) % 100000
    slow_s, fast_s = 4.0, 0.1
    await emulator_config(fresh_emulator, latency=f"fixed:{slow_s}")
    status, slow_task = await submit(worker.url, edit_form([("slow.png", make_png(salt))], params={"prompt": PROMPT}))
    assert status == 202, slow_task

    async def slow_call_started() -> bool:
        return (await emulator_stats(fresh_emulator))["in_flight"] == 1

    await wait_for(slow_call_started, timeout=30, what="the slow call to start")
    await emulator_config(fresh_emulator, latency=f"fixed:{fast_s}")  # calls drawn from now on are fast
    files = [(f"img-{i}.png", make_png(salt + 1 + i)) for i in range(8)]
    status, accepted = await submit(worker.url, edit_form(files, params={"prompt": PROMPT}))
    assert status == 202, accepted
    assert accepted["total_images"] == 8 and accepted["status"] == "pending"
    doc = await wait_task(worker.url, accepted["task_id"])
    slow_doc = await wait_task(worker.url, slow_task["task_id"])

    assert doc["status"] == "completed" and slow_doc["status"] == "completed", (doc, slow_doc)
    assert doc["completed_images"] == 8 and doc["failed_images"] == 0 and doc["progress"] == 100
    assert [r["index"] for r in doc["results"]] == list(range(8))
    assert all(r["status"] == "completed" and r["from_cache"] is False for r in doc["results"])
    stats = await emulator_stats(fresh_emulator)
    assert stats["total_requests"] == 9
    assert stats["max_in_flight"] == 3, stats  # one partition → one window of 3, and it is used
    # The emulator's call timeline ([started, finished] wall clock of every call).
    status, drawn = await get_json(f"{fresh_emulator.base_url}/_emulator/latencies")
    assert status == 200, drawn
    calls = sorted(drawn["calls"])
    assert len(calls) == 9, calls
    slow = max(calls, key=lambda c: c[1] - c[0])
    inside = [c for c in calls if c is not slow and slow[0] <= c[0] and c[1] <= slow[1]]
    assert len(inside) >= 4, (f"only {len(inside)} calls started and ended while the slow one held its slot "
                              f"(batches of 3 allow 2): {calls}")
    # Never more than 3 at once, by the timeline too.
    for start, _ in calls:
        overlapping = sum(1 for s, f in calls if s <= start < f)
        assert overlapping <= 3, (start, calls)

    # Same images, prompt with extra spaces, a tab and a trailing CRLF: all from cache.
    messy = " \u3000 " + PROMPT + "  \t\r\n"
    status, again = await submit(worker.url, edit_form(files, params={"prompt": messy}))
    assert status == 202
    doc2 = await wait_task(worker.url, again["task_id"])
    assert doc2["status"] == "completed"
    assert all(r["from_cache"] is True for r in doc2["results"]), doc2["results"]
    assert [r["result_url"] for r in doc2["results"]] == [r["result_url"] for r in doc["results"]]
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 9  # zero new upstream calls


async def test_five_concurrent_identical_tasks_make_one_call_per_distinct_image(
    worker: Worker, fresh_emulator: Emulator
) -> None:
    salt = int(time.time() * 1000) % 100000 + 7
    files = [(f"same-{i}.png", make_png(salt + i)) for i in range(3)]
    await emulator_config(fresh_emulator, latency="fixed:0.5")
    accepted = await asyncio.gather(*(submit(worker.url, edit_form(files, params={"prompt": "make it pop"}))
                                      for _ in range(5)))
    assert all(status == 202 for status, _ in accepted)
    docs = await asyncio.gather(*(wait_task(worker.url, doc["task_id"]) for _, doc in accepted))
    assert all(d["status"] == "completed" and d["completed_images"] == 3 for d in docs)
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 3
    statuses = [r["from_cache"] for d in docs for r in d["results"]]
    assert statuses.count(False) == 3  # exactly one paid call per distinct image


async def test_same_image_by_multipart_url_and_base64_hits_one_entry(
    worker: Worker, kafka_bootstrap: str, fresh_emulator: Emulator, image_server: tuple[str, dict[str, bytes]]
) -> None:
    image = make_png(424242 + int(time.time()) % 999)
    # 1) multipart
    status, accepted = await submit(worker.url, edit_form([("a.png", image)], params={"prompt": "sharpen it"}))
    assert status == 202
    first = await wait_task(worker.url, accepted["task_id"])
    assert first["results"][0]["from_cache"] is False
    # 2) URL and 3) base64, both as Kafka events
    base, files = image_server
    files["same.png"] = image
    for ref in ({"url": f"{base}/same.png"}, {"data": base64.b64encode(image).decode()}):
        task_id = uuid.uuid4().hex
        await produce(kafka_bootstrap, worker.topic("image-edit-requests"),
                      {"task_id": task_id, "edit_type": "enhance", "edit_params": {"prompt": " sharpen   it "},
                       "images": [{"filename": "b.png", **ref}]}, key=task_id)
        doc = await wait_task(worker.url, task_id)
        assert doc["results"][0]["status"] == "completed", doc
        assert doc["results"][0]["from_cache"] is True, ref.keys()
        assert doc["results"][0]["result_url"] == first["results"][0]["result_url"]
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 1


async def test_reencoded_image_with_same_pixels_hits_but_other_params_miss(
    worker: Worker, fresh_emulator: Emulator
) -> None:
    png = make_png(777 + int(time.time()) % 999)
    img = Image.open(io.BytesIO(png))
    reencoded = io.BytesIO()
    img.save(reencoded, "PNG", compress_level=1)  # different bytes, same pixels
    assert reencoded.getvalue() != png
    bmp = io.BytesIO()
    img.save(bmp, "BMP")

    _, a = await submit(worker.url, edit_form([("a.png", png)], params={"prompt": "warm tones"}))
    await wait_task(worker.url, a["task_id"])
    _, b = await submit(worker.url, edit_form([("b.png", reencoded.getvalue()), ("c.bmp", bmp.getvalue())],
                                               params={"prompt": "warm tones"}))
    doc_b = await wait_task(worker.url, b["task_id"])
    assert [r["from_cache"] for r in doc_b["results"]] == [True, True]
    _, c = await submit(worker.url, edit_form([("a.png", png)], params={"prompt": "warm tones", "seed": 7}))
    doc_c = await wait_task(worker.url, c["task_id"])
    assert doc_c["results"][0]["from_cache"] is False  # a different seed is a different edit
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 2


async def test_upstream_errors_retry_and_every_task_ends(worker: Worker, fresh_emulator: Emulator) -> None:
    await emulator_config(fresh_emulator, latency="fixed:0.05", rate_500=0.3, seed=1234)
    salt = int(time.time() * 1000) % 100000 + 31
    accepted = []
    for t in range(3):
        files = [(f"e{t}-{i}.png", make_png(salt + 10 * t + i)) for i in range(4)]
        status, doc = await submit(worker.url, edit_form(files, params={"prompt": "retry me"}))
        assert status == 202
        accepted.append(doc["task_id"])
    docs = [await wait_task(worker.url, task_id, timeout=120) for task_id in accepted]
    assert all(d["status"] in TERMINAL for d in docs)
    results = [r for d in docs for r in d["results"]]
    assert len(results) == 12
    # An image fails only after 5 attempts all drew a 500 (0.3**5 ≈ 0.2 % each).
    failed = [r for r in results if r["status"] == "failed"]
    assert len(failed) <= 1, failed
    assert all(r["error"]["code"] == "upstream_unavailable" for r in failed)
    stats = await emulator_stats(fresh_emulator)
    assert stats["by_status"].get("500", 0) > 0  # errors were injected ...
    assert stats["total_requests"] == 12 + stats["by_status"]["500"] - len(failed)  # ... and each was retried


async def test_content_inspection_failure_fails_that_image_only(worker: Worker, fresh_emulator: Emulator) -> None:
    await emulator_config(fresh_emulator, latency="fixed:0.01", rate_inspection=1.0)
    salt = int(time.time() * 1000) % 100000 + 61
    _, doc = await submit(worker.url, edit_form([("x.png", make_png(salt))], params={"prompt": "inspect me"}))
    final = await wait_task(worker.url, doc["task_id"])
    assert final["status"] == "failed"
    assert final["results"][0]["error"]["code"] == "DataInspectionFailed"
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 1  # 400-class: never retried


# --- bad input over HTTP: 400 with a code, nothing enqueued ----------------------------
@pytest.mark.parametrize(
    ("case", "expected_status", "expected_code"),
    [
        ("not_an_image", 400, "unsupported_format"),
        ("truncated_png", 400, "invalid_image"),
        ("bomb", 413, "image_too_large"),
        ("unknown_edit_type", 400, "unknown_edit_type"),
        ("malformed_params", 400, "invalid_edit_params"),
        ("params_not_object", 400, "invalid_edit_params"),
        ("seed_wrong_type", 400, "invalid_edit_params"),
        ("prompt_too_long", 400, "prompt_too_long"),
        ("no_images", 400, "no_images"),
        ("too_many_images", 400, "too_many_images"),
    ],
)
async def test_bad_submissions_get_a_clear_error(worker: Worker, case: str, expected_status: int,
                                                 expected_code: str) -> None:
    good = make_png(5)
    files = [("a.png", good)]
    kwargs: dict[str, Any] = {"params": {"prompt": "ok"}}
    if case == "not_an_image":
        files = [("a.png", b"this is plain text, not an image at all")]
    elif case == "truncated_png":
        files = [("a.png", good[: len(good) // 2])]
    elif case == "bomb":
        files = [("bomb.png", decompression_bomb())]
    elif case == "unknown_edit_type":
        kwargs["edit_type"] = "turn-into-gold"
    elif case == "malformed_params":
        kwargs = {"raw_params": '{"prompt": "unclosed'}
    elif case == "params_not_object":
        kwargs = {"raw_params": '["prompt"]'}
    elif case == "seed_wrong_type":
        kwargs = {"params": {"prompt": "ok", "seed": "seven"}}
    elif case == "prompt_too_long":
        kwargs = {"params": {"prompt": "长" * 801}}
    elif case == "no_images":
        files = []
    elif case == "too_many_images":
        files = [(f"{i}.png", good) for i in range(51)]
    status, body = await submit(worker.url, edit_form(files, **kwargs))
    assert status == expected_status, body
    assert body["error"]["code"] == expected_code, body
    assert body["error"]["message"]


async def test_non_multipart_and_unknown_task(worker: Worker) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{worker.url}/api/v1/image-edit/submit", data=b"{not json") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid_content_type"
    status, body = await get_task(worker.url, "no-such-task")
    assert status == 404 and body["error"]["code"] == "task_not_found"


#: Three poison events and the dead-letter code each must get.
POISON_CODES = {
    b"\x00\xff garbage": "malformed_json",
    b'{"task_id": 5}': "invalid_task_id",
    b'{"task_id":"x","edit_type":"enhance","images":[]}': "no_images",
}


async def test_poison_events_are_dead_lettered_and_the_partition_moves_on(
    worker: Worker, kafka_bootstrap: str, fresh_emulator: Emulator
) -> None:
    good_id = uuid.uuid4().hex
    async with TopicReader(kafka_bootstrap, worker.topic("imagestream-dead-letters")) as dead:
        for garbage in POISON_CODES:
            await produce(kafka_bootstrap, worker.topic("image-edit-requests"), garbage, key=b"\xfe\xfd")
        await produce(kafka_bootstrap, worker.topic("image-edit-requests"),
                      {"task_id": good_id, "edit_type": "grayscale",
                       "images": [{"filename": "g.png", "data": base64.b64encode(make_png(9)).decode()}]},
                      key=good_id)
        letters = await dead.collect(lambda v: v.get("source_topic", "").endswith("image-edit-requests"),
                                     count=3, timeout=30)
    # one partition: dead letters in the order the poison was produced
    assert [letter["code"] for letter in letters] == list(POISON_CODES.values()), letters
    assert all(letter["reason"] for letter in letters)
    doc = await wait_task(worker.url, good_id)
    assert doc["status"] == "completed"


def decompression_bomb() -> bytes:
    """A ~30 KB PNG that claims 20000 × 20000 pixels (400 MP)."""
    img = Image.new("1", (20000, 20000), 0)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
async def image_server() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    async with serve_images() as served:
        yield served


async def test_stats_and_metrics_count_hits_and_calls(worker: Worker, fresh_emulator: Emulator) -> None:
    async def stats() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{worker.url}/api/v1/stats") as resp:
                assert resp.status == 200
                return await resp.json()

    before = await stats()
    image = make_png(31337 + int(time.time()) % 999)
    for _ in range(2):
        _, doc = await submit(worker.url, edit_form([("s.png", image)], params={"prompt": "count me"}))
        await wait_task(worker.url, doc["task_id"])
    after = await stats()
    assert after["upstream"]["calls"] == before["upstream"]["calls"] + 1
    assert after["cache"]["hits"] >= before["cache"]["hits"] + 1
    assert after["tasks"]["submitted"] == before["tasks"]["submitted"] + 2
    assert 0 < after["cache"]["hit_rate"] <= 1
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert "# TYPE imagestream_upstream_calls_total counter" in text
    assert 'imagestream_cache_hits_total{kind="hit"}' in text
    assert "imagestream_consumer_lag{" in text


async def test_offsets_are_committed_once_results_are_durable(worker: Worker, fresh_emulator: Emulator) -> None:
    """Agents ack by hand (on delivery); the committed offsets must still reach the end."""
    salt = int(time.time() * 1000) % 100000 + 91
    _, doc = await submit(worker.url, edit_form([(f"c{i}.png", make_png(salt + i)) for i in range(3)],
                                                 params={"prompt": "commit me"}))
    await wait_task(worker.url, doc["task_id"])

    async def caught_up() -> dict[str, float] | None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{worker.url}/api/v1/stats") as resp:
                lag = (await resp.json())["consumer_lag"]
        watched = {k: v for k, v in lag.items()
                   if any(t in k for t in ("image-edit-requests", "image-edit-jobs", "imagestream-task-updates"))}
        return watched if watched and all(v == 0 for v in watched.values()) else None

    lag = await wait_for(caught_up, timeout=30, interval=0.2, what="committed offsets to reach the end")
    assert len(lag) == 3


async def test_invalidated_entry_is_computed_again(worker: Worker, fresh_emulator: Emulator) -> None:
    image = make_png(55555 + int(time.time()) % 999)
    _, first = await submit(worker.url, edit_form([("i.png", image)], params={"prompt": "invalidate me"}))
    done = await wait_task(worker.url, first["task_id"])
    key = done["results"][0]["cache_key"]
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{worker.url}/api/v1/cache/{key}") as resp:
            assert resp.status == 202, await resp.text()
        async with session.delete(f"{worker.url}/api/v1/cache/not-a-key") as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_cache_key"
    _, second = await submit(worker.url, edit_form([("i.png", image)], params={"prompt": "invalidate me"}))
    again = await wait_task(worker.url, second["task_id"])
    assert again["results"][0]["from_cache"] is False
    assert again["results"][0]["cache_key"] == key
    assert (await emulator_stats(fresh_emulator))["total_requests"] == 2


def noise_png(target_bytes: int) -> bytes:
    """An incompressible PNG of about ``target_bytes`` (random pixels)."""
    side = int((target_bytes / 3) ** 0.5)
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    return buf.getvalue()


async def test_large_upload_is_accepted_and_edited(worker: Worker, fresh_emulator: Emulator) -> None:
    big = noise_png(9_500_000)
    assert 9_000_000 < len(big) <= 10 * 1024 * 1024
    status, doc = await submit(worker.url, edit_form([("big.png", big)], params={"prompt": "enhance the big one"}))
    assert status == 202, doc
    final = await wait_task(worker.url, doc["task_id"], timeout=120)
    assert final["status"] == "completed", final


async def test_upload_over_the_limit_is_413(worker: Worker) -> None:
    too_big = noise_png(10 * 1024 * 1024 + 200_000)
    assert len(too_big) > 10 * 1024 * 1024
    status, body = await submit(worker.url, edit_form([("huge.png", too_big)], params={"prompt": "x"}))
    assert status == 413 and body["error"]["code"] == "image_too_large", body
