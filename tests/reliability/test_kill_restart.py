"""Issue 7.1: a worker killed with ``kill -9`` mid-task loses nothing and pays little twice.

A 30-image task runs against an emulator that answers in 1 s (3 calls in flight per
partition, so ~10 s of upstream work).  The worker is hard-killed twice while calls
are in flight and restarted on the same data dir and app id each time.  Then:

* the task completes with all 30 results, every index exactly once;
* ``image-edit-results`` holds each index at least once, and any duplicate is the same
  result (same status, blob, cache key);
* upstream calls ≤ 30 + the calls in flight at each kill (the emulator's own count);
* no restart hits Faust's ``ConsistencyError`` (DESIGN §11) on the real broker.

The same for the dimension pipeline: kill during a fetch held by a slow server,
restart, ask again → the real size.
"""

from __future__ import annotations

import io
import time
import uuid
from collections import defaultdict
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

from tests.reliability.conftest import Fleet, ImageServer, form, make_png, unique_app_id
from tests.support import TopicReader, emulator_stats, get_json, submit, wait_for, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES = 30
#: Fields that make two published results "the same result".
SAME_RESULT = ("task_id", "index", "filename", "status", "result_blob", "result_url", "cache_key", "error")


def _port(url: str) -> int:
    port = urlparse(url).port
    assert port is not None
    return port


async def test_task_survives_two_hard_kills(fleet: Fleet) -> None:
    emulator = fleet.emulator("--latency", "fixed:1.0", name="rel-kill-emulator")
    app_id = unique_app_id("kill")
    data_dir = fleet.tmp / "kill-data"
    worker = await fleet.worker("rel-kill-worker", emulator=emulator, app_id=app_id, data_dir=data_dir)
    port = _port(worker.url)
    salt = uuid.uuid4().int % 1_000_000
    files = [(f"k{i}.png", make_png(salt + i)) for i in range(N_IMAGES)]

    kills: list[dict[str, Any]] = []
    async with TopicReader(fleet.kafka_bootstrap, worker.topic("image-edit-results")) as results:
        status, accepted = await submit(worker.url, form(files))
        assert status == 202, accepted
        task_id = accepted["task_id"]

        for round_no in range(2):
            before_requests = (await emulator_stats(emulator))["total_requests"]

            async def calls_in_flight() -> dict[str, Any] | None:
                s = await emulator_stats(emulator)
                # Some progress since the (re)start, calls in flight right now, and none
                # started in the last 0.3 s: the calls that ended to free their slots did
                # so at least that long ago, so their results are durable — what is lost
                # by the kill is exactly what is in flight.
                started_a_while_ago = (s["in_flight_min_age_s"] or 0) >= 0.3
                return s if (s["total_requests"] >= before_requests + 4 and s["in_flight"] > 0
                             and started_a_while_ago) else None

            seen = await wait_for(calls_in_flight, timeout=90, interval=0.05,
                                  what=f"upstream calls in flight before kill {round_no + 1}")
            worker.proc.kill()
            killed_at = time.monotonic()
            # The emulator holds every call for 1 s, so what it counts in flight right
            # after the kill is every call the dead worker had started.
            after = await emulator_stats(emulator)
            assert after["total_requests"] < N_IMAGES, "the task finished before the kill: nothing tested"
            kills.append({"in_flight_before": seen["in_flight"], "in_flight_at_kill": after["in_flight"],
                          "requests_at_kill": after["total_requests"]})

            worker = await fleet.worker(f"rel-kill-worker-r{round_no + 1}", emulator=emulator, app_id=app_id,
                                        data_dir=data_dir, port=port)
            ready_s = time.monotonic() - killed_at
            requests_then = after["total_requests"]
            await wait_for(lambda: _more_requests(emulator, requests_then), timeout=45,
                           what="upstream calls after the restart")
            kills[-1].update(ready_s=round(ready_s, 2), first_call_s=round(time.monotonic() - killed_at, 2))

        doc = await wait_task(worker.url, task_id, timeout=180)
        published = await results.collect(lambda v: v.get("task_id") == task_id, count=N_IMAGES, timeout=60)

    final = await emulator_stats(emulator)
    repeated = final["total_requests"] - N_IMAGES
    allowed = sum(k["in_flight_at_kill"] for k in kills)
    print(f"\nkill/restart: kills={kills} upstream_calls={final['total_requests']} repeated={repeated} "
          f"allowed={allowed}")

    assert doc["status"] == "completed", doc
    assert doc["total_images"] == N_IMAGES and doc["completed_images"] == N_IMAGES and doc["failed_images"] == 0
    indexes = [r["index"] for r in doc["results"]]
    assert sorted(indexes) == list(range(N_IMAGES)), indexes  # every index, exactly once
    assert all(r["status"] == "completed" and r["result_blob"] for r in doc["results"])

    by_index: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for result in published:
        by_index[result["index"]].append(result)
    assert sorted(by_index) == list(range(N_IMAGES))
    for index, copies in by_index.items():
        distinct = {tuple(str(c.get(f)) for f in SAME_RESULT) for c in copies}
        assert len(distinct) == 1, f"index {index} published as different results: {copies}"

    assert final["total_requests"] >= N_IMAGES
    assert repeated <= allowed, f"{repeated} repeated upstream calls > {allowed} in flight at the kills: {kills}"
    for w in fleet.workers:
        assert "ConsistencyError" not in w.proc.log_path.read_text(errors="replace")


async def _more_requests(emulator: Any, than: int) -> bool:
    return (await emulator_stats(emulator))["total_requests"] > than


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 90, 200)).save(buf, "PNG")
    return buf.getvalue()


async def test_dimension_fetch_survives_a_hard_kill(fleet: Fleet, image_server: ImageServer) -> None:
    emulator = fleet.emulator(name="rel-kill-dims-emulator")
    app_id = unique_app_id("killdims")
    data_dir = fleet.tmp / "dims-data"
    worker = await fleet.worker("rel-killdims-worker", emulator=emulator, app_id=app_id, data_dir=data_dir)
    port = _port(worker.url)
    url, item = image_server.add(_png(800, 600), held=True)
    tag = uuid.uuid4().hex[:8]
    query = f"session_id=s-{tag}&resource=r-{tag}&scene=1&url={url}"

    status, first = await get_json(f"{worker.url}/api/v1/dimensions?{query}")
    assert status == 200 and first["source"] == "placeholder", first
    await wait_for(lambda: _true(item.hits >= 1), timeout=30, what="the fetch to reach the image server")
    worker.proc.kill()
    killed_at = time.monotonic()
    assert item.gate is not None
    item.gate.set()  # the server answers from now on; the dead worker's connection is gone

    worker = await fleet.worker("rel-killdims-worker-r1", emulator=emulator, app_id=app_id, data_dir=data_dir,
                                port=port)

    async def real_size() -> dict[str, Any] | None:
        status, body = await get_json(f"{worker.url}/api/v1/dimensions?{query}")
        return body if status == 200 and body["source"] == "cache" else None

    cached = await wait_for(real_size, timeout=60, interval=0.1, what="the real size after the restart")
    print(f"\ndimension kill/restart: real size {time.monotonic() - killed_at:.2f}s after the kill; "
          f"server hits {item.hits}")
    assert (cached["width"], cached["height"], cached["format"]) == (800, 600, "png")
    assert item.hits >= 2  # fetched again after the kill (the first never answered)
    assert "ConsistencyError" not in worker.proc.log_path.read_text(errors="replace")


async def _true(value: bool) -> bool:
    return value
