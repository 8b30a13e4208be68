"""Issue 7.3: the Kafka broker restarts mid-run.

A private single-node broker (its own home dir and ports: the session's broker is
never touched) serves one worker.  Tasks are running against a slow emulator when
the broker is stopped and started again; the worker must reconnect by itself, every
task must end, and a task submitted after the restart must complete too.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.reliability.conftest import Fleet, PrivateBroker, form, make_png, unique_app_id
from tests.support import TERMINAL, emulator_stats, get_json, submit, wait_for, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_worker_reconnects_after_broker_restart_and_every_task_ends(
    fleet: Fleet, private_broker: PrivateBroker
) -> None:
    emulator = fleet.emulator("--latency", "fixed:1.0", name="rel-broker-emulator")
    worker = await fleet.worker("rel-broker-worker", emulator=emulator, app_id=unique_app_id("broker"),
                                kafka_bootstrap=private_broker.bootstrap, partitions=2)
    # A broker outage while streams/topics.py declare_topics still runs (the first
    # seconds after "Ready") crashes the worker (reported bug); this test is about an
    # outage mid-run, so it starts once the last topic has been declared.
    declared = f"Topic '{worker.topic('imagestream-dead-letters')}' created."

    async def topics_declared() -> bool:
        return declared in worker.proc.log_path.read_text(errors="replace")

    await wait_for(topics_declared, timeout=60, what="the worker's topics to be declared")
    salt = uuid.uuid4().int % 1_000_000
    accepted = await asyncio.gather(*(
        submit(worker.url, form([(f"b{t}-{i}.png", make_png(salt + 3 * t + i)) for i in range(3)]))
        for t in range(6)))
    assert all(status == 202 for status, _ in accepted), accepted
    ids = [doc["task_id"] for _, doc in accepted]

    async def calls_in_flight() -> bool:
        return (await emulator_stats(emulator))["in_flight"] > 0

    await wait_for(calls_in_flight, timeout=60, what="upstream calls in flight")
    stopped = time.monotonic()
    await asyncio.to_thread(private_broker.run, "stop", 120)
    down_s = time.monotonic() - stopped
    await asyncio.to_thread(private_broker.run, "start", 300)
    restarted = time.monotonic()
    assert worker.proc.alive(), worker.proc.log_tail()

    docs = [await wait_task(worker.url, task_id, timeout=180) for task_id in ids]
    all_ended = time.monotonic() - restarted
    status, accepted_after = await submit(worker.url, form([("after.png", make_png(salt + 999))]))
    assert status == 202, accepted_after
    after = await wait_task(worker.url, accepted_after["task_id"], timeout=120)
    health = await get_json(f"{worker.url}/healthz")
    print(f"\nbroker restart: stop took {down_s:.1f}s, start {restarted - stopped - down_s:.1f}s; all {len(ids)} tasks ended {all_ended:.1f}s after the restart "
          f"({[d['status'] for d in docs]}); a new task {after['status']}; healthz {health}")
    assert all(d["status"] in TERMINAL for d in docs)
    assert all(d["status"] == "completed" for d in docs), [(d["status"], d["failed_images"]) for d in docs]
    assert after["status"] == "completed"
    assert health[0] == 200
    assert worker.proc.alive()
