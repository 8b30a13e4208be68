"""Issue 7.2: two workers of one app on topics with 4 partitions.

Both use their own data dir (tables) and, with nothing set, the host's blob folder.

* Tasks spread over both workers (both plan tasks and call the upstream), and
  ``GET /api/v1/image-edit/task/{id}`` answers the same on either worker for every task.
* A third worker joins, then is stopped (SIGTERM) while it has upstream calls in
  flight: its partitions move to the other two, which recover their tables from the
  changelogs; every task still finishes and every status is readable.  (A worker of
  its own, so the pair stays whole for the other test, whatever the order.)
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
    def __init__(self, emulator: Emulator, a: Worker, b: Worker, app_id: str, env: dict[str, str]) -> None:
        self.emulator, self.a, self.b = emulator, a, b
        self.app_id, self.env = app_id, env
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

    await wait_for(lambda: _assigned([a, b]), timeout=90, interval=0.2, what="both workers to hold partitions")
    return Pair(emulator, a, b, app_id, shared)


async def _assigned(workers: list[Worker], total: int | None = None) -> list[int] | None:
    """Partitions each worker holds, once every one is ready, not rebalancing and holds
    some (and, given ``total``, once together they hold exactly that many)."""
    docs = [await get_json(f"{w.url}/healthz") for w in workers]
    if all(status == 200 and not doc["rebalancing"] and doc["assigned_partitions"] > 0 for status, doc in docs):
        held = [doc["assigned_partitions"] for _, doc in docs]
        return held if total is None or sum(held) == total else None
    return None


async def _same_on_both(pair: Pair, task_id: str) -> dict[str, Any]:
    (sa, da), (sb, db) = await asyncio.gather(get_task(pair.a.url, task_id), get_task(pair.b.url, task_id))
    assert sa == 200 and sb == 200, (task_id, sa, da, sb, db)
    assert da == db, (task_id, da, db)
    return da


async def test_tasks_spread_over_both_and_read_on_either(pair: Pair) -> None:
    salt = uuid.uuid4().int % 1_000_000
    # Counters before, so the figures are this test's whatever ran before it.
    a0, b0 = await worker_stats(pair.a), await worker_stats(pair.b)
    calls0 = (await emulator_stats(pair.emulator))["total_requests"]
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
    planned = (sa["tasks"]["planned"] - a0["tasks"]["planned"], sb["tasks"]["planned"] - b0["tasks"]["planned"])
    calls = (sa["upstream"]["calls"] - a0["upstream"]["calls"], sb["upstream"]["calls"] - b0["upstream"]["calls"])
    print(f"\ntwo workers: planned {planned[0]:g} / {planned[1]:g}, upstream calls {calls[0]:g} / {calls[1]:g}")
    assert planned[0] > 0 and planned[1] > 0
    assert calls[0] > 0 and calls[1] > 0
    assert sum(planned) == 16
    assert (await emulator_stats(pair.emulator))["total_requests"] - calls0 == 32


async def test_stopping_one_worker_moves_its_partitions_and_its_tasks_finish(pair: Pair, module_fleet: Fleet) -> None:
    # Every partition of the app's topics, as the settled pair holds them now.
    total = sum(await wait_for(lambda: _assigned([pair.a, pair.b]), timeout=60, interval=0.2,
                               what="the pair to hold its partitions"))
    c = await module_fleet.worker("rel-pair-c", emulator=pair.emulator, app_id=pair.app_id, partitions=PARTITIONS,
                                  extra_env=pair.env)
    held = await wait_for(lambda: _assigned([pair.a, pair.b, c], total), timeout=90, interval=0.2,
                          what=f"the three workers to share the {total} partitions")
    await emulator_config(pair.emulator, latency="fixed:1.5")
    try:
        salt = uuid.uuid4().int % 1_000_000 + 7
        accepted = await asyncio.gather(*(
            submit(pair.a.url, form([(f"q{t}-{i}.png", make_png(salt + 3 * t + i)) for i in range(3)]))
            for t in range(12)))
        assert all(status == 202 for status, _ in accepted), accepted
        ids = [doc["task_id"] for _, doc in accepted]

        async def c_is_calling() -> bool:
            in_flight = (await worker_stats(c))["upstream"]["in_flight"]
            return sum(in_flight.values()) > 0

        try:
            await wait_for(c_is_calling, timeout=60, what="upstream calls in flight on worker c")
        except TimeoutError:
            status, health = await get_json(f"{c.url}/healthz")
            raise AssertionError(f"c never called the upstream; its partitions: {status} {health}") from None
        stopped_at = time.monotonic()
        await asyncio.to_thread(c.proc.stop)
        assert c.proc.popen.returncode is not None

        docs = [await wait_task(pair.a.url, task_id, timeout=120) for task_id in ids + pair.tasks]
        took = time.monotonic() - stopped_at

        after = await wait_for(lambda: _assigned([pair.a, pair.b], total), timeout=60, interval=0.2,
                               what=f"a and b to hold all {total} partitions")
    finally:
        await emulator_config(pair.emulator, latency="fixed:0.3")
    print(f"\nafter stopping c: {len(docs)} tasks finished within {took:.1f}s; partitions a/b/c {held} → a/b {after}")
    assert all(d["status"] == "completed" for d in docs), [(d["task_id"], d["status"]) for d in docs]
    assert all(d["status"] in TERMINAL for d in docs)
    # c held some partitions; with c gone the two left hold them all.
    assert held[2] > 0 and sum(after) == total, (held, after)
    for task_id in ids[:3]:
        assert (await _same_on_both(pair, task_id))["status"] == "completed"
