"""Issue 7.2: two workers of one app on topics with 4 partitions.

Both use their own data dir (tables) and, with nothing set, the host's blob folder.

* Tasks spread over both workers (both plan tasks and call the upstream), and
  ``GET /api/v1/image-edit/task/{id}`` answers the same on either worker for every task.
* One worker is stopped (SIGTERM) while it has upstream calls in flight: its
  partitions move to the survivor, which recovers their tables from the changelogs,
  every task still finishes, and every status is readable from the survivor.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.reliability.conftest import Fleet, form, make_png, unique_app_id, worker_stats
from tests.support import (
    Emulator,
    TERMINAL,
    Worker,
    emulator_config,
    emulator_stats,
    get_json,
    get_task,
    submit,
    wait_for,
    wait_task,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4


class Pair:
    def __init__(self, emulator: Emulator, a: Worker, b: Worker) -> None:
        self.emulator, self.a, self.b = emulator, a, b
        self.tasks: list[str] = []


@pytest.fixture(scope="module")
async def pair(module_fleet: Fleet) -> Pair:
    emulator = module_fleet.emulator("--latency", "fixed:0.3", name="rel-pair-emulator")
    app_id = unique_app_id("pair")
    # Own data dirs (RocksDB), no blob setting: the default store is the host's folder,
    # so an image uploaded to one worker is found by whichever owns its partition.
    shared = {"XDG_DATA_HOME": str(module_fleet.tmp / "host")}
    a = await module_fleet.worker("rel-pair-a", emulator=emulator, app_id=app_id, partitions=PARTITIONS,
                                  extra_env=shared)
    b = await module_fleet.worker("rel-pair-b", emulator=emulator, app_id=app_id, partitions=PARTITIONS,
                                  extra_env=shared)

    async def split() -> bool:
        docs = [await get_json(f"{w.url}/healthz") for w in (a, b)]
        return all(s == 200 and d["assigned_partitions"] > 0 for s, d in docs)

    await wait_for(split, timeout=90, interval=0.2, what="both workers to hold partitions")
    return Pair(emulator, a, b)


async def _same_on_both(pair: Pair, task_id: str) -> dict[str, Any]:
    (sa, da), (sb, db) = await asyncio.gather(get_task(pair.a.url, task_id), get_task(pair.b.url, task_id))
    assert sa == 200 and sb == 200, (task_id, sa, da, sb, db)
    assert da == db, (task_id, da, db)
    return da


async def test_tasks_spread_over_both_and_read_on_either(pair: Pair) -> None:
    salt = uuid.uuid4().int % 1_000_000
    accepted = await asyncio.gather(*(
        submit((pair.a, pair.b)[t % 2].url, form([(f"p{t}-{i}.png", make_png(salt + 2 * t + i)) for i in range(2)]))
        for t in range(16)))
    assert all(status == 202 for status, _ in accepted), accepted
    ids = [doc["task_id"] for _, doc in accepted]
    pair.tasks.extend(ids)
    for task_id in ids:
        await wait_task((pair.a, pair.b)[hash(task_id) % 2].url, task_id, timeout=120)
    for task_id in ids:
        doc = await _same_on_both(pair, task_id)
        failed = [r for r in doc["results"] if r["status"] != "completed"]
        assert doc["status"] == "completed" and doc["completed_images"] == 2, (doc["status"], [r.get("error") for r in failed])
    sa, sb = await worker_stats(pair.a), await worker_stats(pair.b)
    print(f"\ntwo workers: planned {sa['tasks']['planned']:g} / {sb['tasks']['planned']:g}, upstream calls "
          f"{sa['upstream']['calls']:g} / {sb['upstream']['calls']:g}")
    assert sa["tasks"]["planned"] > 0 and sb["tasks"]["planned"] > 0
    assert sa["upstream"]["calls"] > 0 and sb["upstream"]["calls"] > 0
    assert sa["tasks"]["planned"] + sb["tasks"]["planned"] == 16
    assert (await emulator_stats(pair.emulator))["total_requests"] == 32


async def test_stopping_one_worker_moves_its_partitions_and_its_tasks_finish(pair: Pair) -> None:
    await emulator_config(pair.emulator, latency="fixed:1.5")
    salt = uuid.uuid4().int % 1_000_000 + 7
    accepted = await asyncio.gather(*(
        submit(pair.a.url, form([(f"q{t}-{i}.png", make_png(salt + 3 * t + i)) for i in range(3)]))
        for t in range(12)))
    assert all(status == 202 for status, _ in accepted), accepted
    ids = [doc["task_id"] for _, doc in accepted]

    async def b_is_calling() -> bool:
        in_flight = (await worker_stats(pair.b))["upstream"]["in_flight"]
        return sum(in_flight.values()) > 0

    await wait_for(b_is_calling, timeout=60, what="upstream calls in flight on worker b")
    stopped_at = time.monotonic()
    await asyncio.to_thread(pair.b.proc.stop)
    assert pair.b.proc.popen.returncode is not None

    docs = [await wait_task(pair.a.url, task_id, timeout=120) for task_id in ids + pair.tasks]
    took = time.monotonic() - stopped_at
    health = (await get_json(f"{pair.a.url}/healthz"))[1]
    print(f"\nafter stopping b: {len(docs)} tasks readable and finished on a within {took:.1f}s; a holds "
          f"{health['assigned_partitions']} partitions")
    assert all(d["status"] == "completed" for d in docs), [(d["task_id"], d["status"]) for d in docs]
    assert all(d["status"] in TERMINAL for d in docs)
