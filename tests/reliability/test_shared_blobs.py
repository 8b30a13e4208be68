"""Several workers and their blob store (issue 19).

An image is uploaded to the worker that receives the request and read by the one that
owns its job's partition.  On one host the default store is the host's folder, shared
whatever each worker's DATA_DIR; workers that do not share a store are refused loudly
(``blob_store_not_shared``), never discovered image by image as ``blob_not_found``.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.conftest import Fleet, form, make_png, unique_app_id
from tests.s3.server import S3Server, s3_server  # noqa: F401 - the session fixture
from tests.support import (
    TERMINAL,
    TopicReader,
    Worker,
    all_ready,
    emulator_stats,
    get_json,
    start_worker,
    submit,
    wait_for,
    wait_task,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
TASKS = 3
IMAGES = 20


async def healthz(worker: Worker) -> dict[str, Any]:
    return (await get_json(f"{worker.url}/healthz"))[1]


async def submit_alternately(workers: list[Worker], salt: int) -> list[str]:
    """TASKS tasks of IMAGES images, each to the next worker."""
    ids = []
    for t in range(TASKS):
        files = [(f"t{t}-{i}.png", make_png(salt + IMAGES * t + i)) for i in range(IMAGES)]
        status, accepted = await submit(workers[t % len(workers)].url, form(files))
        assert status == 202, accepted
        ids.append(accepted["task_id"])
    return ids


async def test_two_workers_on_default_settings_share_the_hosts_blob_folder(fleet: Fleet) -> None:
    """Different data dirs, no blob setting: every image of tasks sent to both completes."""
    emulator = fleet.emulator("--latency", "fixed:0.2", name="blobs-default-emulator")
    app_id = unique_app_id("blobs-default")
    host = {"XDG_DATA_HOME": str(fleet.tmp / "host")}  # one host; the workers say nothing of blobs
    workers = [await fleet.worker(f"blobs-default-{n}", emulator=emulator, app_id=app_id, partitions=PARTITIONS,
                                  data_dir=fleet.tmp / f"data-{n}", extra_env=host) for n in "ab"]
    await wait_for(lambda: all_ready(workers), timeout=60, what="both workers ready")
    ids = await submit_alternately(workers, uuid.uuid4().int % 1_000_000)
    docs = [await wait_task(workers[0].url, task_id, timeout=120) for task_id in ids]
    assert [d["status"] for d in docs] == ["completed"] * TASKS, [(d["status"], d["failed_images"]) for d in docs]
    assert sum(d["completed_images"] for d in docs) == TASKS * IMAGES
    healths = [await healthz(w) for w in workers]
    assert healths[0]["blob_store"]["store_id"] == healths[1]["blob_store"]["store_id"]
    assert healths[0]["blob_store"]["store"] == str(fleet.tmp / "host" / "imagestream" / "blobs")
    assert (await emulator_stats(emulator))["total_requests"] == TASKS * IMAGES


async def test_workers_with_different_stores_are_refused_not_failed(fleet: Fleet) -> None:
    emulator = fleet.emulator("--latency", "fixed:0.2", name="blobs-split-emulator")
    app_id = unique_app_id("blobs-split")
    a = await fleet.worker("blobs-split-a", emulator=emulator, app_id=app_id, partitions=PARTITIONS,
                           extra_env={"IMAGESTREAM_BLOB_URL": (fleet.tmp / "a-blobs").as_uri()})
    # b never becomes ready (its store differs from a's): started without waiting.
    b = start_worker("blobs-split-b", kafka_bootstrap=fleet.kafka_bootstrap, emulator=emulator,
                     data_dir=fleet.tmp / "data-b", app_id=app_id, partitions=PARTITIONS, wait=False,
                     extra_env={"IMAGESTREAM_BLOB_URL": (fleet.tmp / "b-blobs").as_uri()})
    fleet.workers.append(b)

    def refuses(worker: Worker) -> Any:
        async def check() -> dict[str, Any] | None:
            status, body = await get_json(f"{worker.url}/healthz")
            return body if status == 503 and "blob_store_not_shared" in body["waiting_for"] else None
        return check

    for worker in (a, b):
        body = await wait_for(refuses(worker), timeout=90, what=f"{worker.proc.name} to refuse the split")
        assert body["ready"] is False
        stores = set(body["blob_store"]["members"].values())
        assert stores == {str(fleet.tmp / "a-blobs"), str(fleet.tmp / "b-blobs")}, body

    status, refused = await submit(a.url, form([("x.png", make_png(7))]))
    assert status == 503, refused
    assert refused["error"]["code"] == "blob_store_not_shared"
    assert "IMAGESTREAM_BLOB_URL=s3://" in refused["error"]["message"]
    assert "a-blobs" in refused["error"]["message"] and "b-blobs" in refused["error"]["message"]
    status_b, refused_b = await submit(b.url, form([("x.png", make_png(7))]))
    assert status_b == 503 and refused_b["error"]["code"] == "blob_store_not_shared", refused_b
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{a.url}/api/v1/blobs", data=make_png(8)) as resp:
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "blob_store_not_shared"
    for worker in (a, b):
        assert "BLOB STORE NOT SHARED" in worker.proc.log_path.read_text(errors="replace")

    # b goes away: a serves alone again.
    b.proc.stop()
    await wait_for(lambda: all_ready([a]), timeout=60, what="worker a ready alone")
    doc = await wait_task(a.url, (await submit(a.url, form([("y.png", make_png(9))])))[1]["task_id"])
    assert doc["status"] == "completed", doc
    # Nothing was accepted while refused, so nothing failed and nothing was paid.
    assert (await emulator_stats(emulator))["total_requests"] == 1


@pytest.mark.parametrize("store", ["host-folder", "s3"])
async def test_kill_nine_with_a_shared_store_every_task_completes_every_result_the_same(
    fleet: Fleet, store: str, request: pytest.FixtureRequest
) -> None:
    emulator = fleet.emulator("--latency", "fixed:2.0", name=f"blobs-kill-{store}-emulator")
    app_id = unique_app_id(f"blobs-kill-{store}")
    if store == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        env = server.env(f"{app_id}/blobs")
    else:
        env = {"XDG_DATA_HOME": str(fleet.tmp / "host")}
    names = ["a", "b"]
    workers = {n: await fleet.worker(f"blobs-kill-{store}-{n}", emulator=emulator, app_id=app_id,
                                     partitions=PARTITIONS, data_dir=fleet.tmp / f"data-{n}", extra_env=env)
               for n in names}
    ports = {n: int(w.url.rsplit(":", 1)[1]) for n, w in workers.items()}
    await wait_for(lambda: all_ready(list(workers.values())), timeout=60, what="both workers ready")
    rng = random.Random(19)
    kills: list[str] = []
    async with TopicReader(fleet.kafka_bootstrap, workers["a"].topic("image-edit-results")) as results:
        ids = await submit_alternately(list(workers.values()), uuid.uuid4().int % 1_000_000)
        for round_no in range(4):
            async def calls_in_flight_or_done() -> str | None:
                if (await emulator_stats(emulator))["in_flight"] > 0:
                    return "in flight"
                done = await asyncio.gather(*(get_json(f"{workers['a'].url}/api/v1/image-edit/task/{t}")
                                              for t in ids))
                return "done" if all(c == 200 and d["status"] in TERMINAL for c, d in done) else None

            state = await wait_for(calls_in_flight_or_done, timeout=60,
                                   what=f"upstream calls before kill {round_no + 1}")
            if state == "done":
                break
            victim = rng.choice(names)
            workers[victim].proc.kill()
            kills.append(victim)
            workers[victim] = await fleet.worker(f"blobs-kill-{store}-{victim}-r{round_no}", emulator=emulator,
                                                 app_id=app_id, partitions=PARTITIONS,
                                                 data_dir=fleet.tmp / f"data-{victim}", port=ports[victim],
                                                 extra_env=env)
        started = time.monotonic()
        docs = [await wait_task(workers["a"].url, task_id, timeout=240) for task_id in ids]
        published = await results.collect(lambda v: v.get("task_id") in ids, count=TASKS * IMAGES, timeout=60)
        published = [v for v in await results.drain() if v.get("task_id") in ids]
    calls = (await emulator_stats(emulator))["total_requests"]
    copies = Counter((v["task_id"], v["index"]) for v in published)
    # At least once: a worker killed between publishing a result and committing the
    # update it came from publishes it again after the restart, the same result.
    versions = {(v["task_id"], v["index"]): set() for v in published}
    for v in published:
        versions[(v["task_id"], v["index"])].add((v["status"], v["result_blob"], v["cache_key"]))
    print(f"\n{store}: kills {kills}; tasks ended {time.monotonic() - started:.1f}s after the last restart; "
          f"{calls} upstream calls for {TASKS * IMAGES} images; result events {len(published)} "
          f"({sum(n - 1 for n in copies.values())} repeated)")
    assert len(kills) >= 2, f"the tasks ended after {len(kills)} kills: too little was tested"
    assert [d["status"] for d in docs] == ["completed"] * TASKS, [(d["status"], d["failed_images"]) for d in docs]
    assert all(r["status"] == "completed" for d in docs for r in d["results"])
    assert sorted(copies) == sorted((t, i) for t in ids for i in range(IMAGES))
    assert all(len(v) == 1 for v in versions.values()), {k: v for k, v in versions.items() if len(v) > 1}
    assert not any("blob_not_found" in str(r.get("error")) for d in docs for r in d["results"])
