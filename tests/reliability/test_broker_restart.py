"""Issue 7.3: the Kafka broker restarts mid-run, or while a worker starts.

A private single-node broker (its own home dir and ports: the session's broker is
never touched) serves one worker.  Mid-run: tasks are running against a slow
emulator when the broker is stopped and started again; the worker must reconnect by
itself, every task must end, and a task submitted after the restart must complete
too.  At start-up: the broker stops right after the worker process is spawned
(the process held meanwhile), so the worker's ``streams.topics.create_topics`` meets
the outage; the worker must survive it and become ready by itself once the broker is
back.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import pytest

from tests.reliability.conftest import Fleet, PrivateBroker, form, make_png, unique_app_id
from tests.support import (
    TERMINAL,
    Proc,
    emulator_stats,
    free_port,
    get_json,
    http_status,
    submit,
    wait_for,
    wait_for_sync,
    wait_task,
)

#: What streams/topics.py create_topics logs when the broker does not answer.
RETRY_LINE = "creating topics failed"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_worker_reconnects_after_broker_restart_and_every_task_ends(
    fleet: Fleet, private_broker: PrivateBroker
) -> None:
    emulator = fleet.emulator("--latency", "fixed:1.0", name="rel-broker-emulator")
    worker = await fleet.worker("rel-broker-worker", emulator=emulator, app_id=unique_app_id("broker"),
                                kafka_bootstrap=private_broker.bootstrap, partitions=2)
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


async def test_a_broker_outage_while_the_worker_starts_only_delays_it(
    fleet: Fleet, private_broker: PrivateBroker
) -> None:
    emulator = fleet.emulator("--latency", "fixed:0.05", name="rel-broker-start-emulator")
    port = free_port()
    seen: dict[str, object] = {}

    def outage(proc: Proc) -> None:
        """In the start-up thread, right after the worker process exists."""
        # Held while the broker stops (a few seconds), so however fast it would start,
        # the worker meets the outage in create_topics, not after it.
        proc.popen.send_signal(signal.SIGSTOP)
        try:
            private_broker.run("stop", 120)
        finally:
            proc.popen.send_signal(signal.SIGCONT)
        seen["alive_when_stopped"] = proc.alive()
        seen["healthz_when_stopped"] = _healthz(port)
        # The worker reaches create_topics, finds no broker and retries (it does not exit).
        wait_for_sync(lambda: _retried(proc) or not proc.alive(), timeout=120, interval=0.2,
                      what="the worker to try the stopped broker")
        seen["alive_after_retries"] = proc.alive()
        seen["healthz_while_down"] = _healthz(port)
        seen["retries_logged"] = _retried(proc)
        private_broker.run("start", 300)

    started = time.monotonic()
    worker = await fleet.worker("rel-broker-start-worker", emulator=emulator, app_id=unique_app_id("brokerstart"),
                                kafka_bootstrap=private_broker.bootstrap, partitions=2, port=port, on_spawn=outage)
    ready_after = time.monotonic() - started
    print(f"\nbroker outage at start-up: {seen}; ready {ready_after:.1f}s after the spawn")
    assert seen["alive_when_stopped"] and seen["healthz_when_stopped"] != 200, seen  # the outage was inside start-up
    assert seen["alive_after_retries"] and seen["retries_logged"], (seen, worker.proc.log_tail())
    assert seen["healthz_while_down"] != 200, seen
    salt = uuid.uuid4().int % 1_000_000
    status, accepted = await submit(worker.url, form([(f"start-{i}.png", make_png(salt + i)) for i in range(2)]))
    assert status == 202, accepted
    doc = await wait_task(worker.url, accepted["task_id"], timeout=120)
    assert doc["status"] == "completed", doc
    assert (await get_json(f"{worker.url}/healthz"))[0] == 200
    assert worker.proc.alive()


def _retried(proc: Proc) -> bool:
    return RETRY_LINE in proc.log_path.read_text(errors="replace")


def _healthz(port: int) -> int | None:
    """/healthz status, or None while nothing listens on the port yet."""
    try:
        return http_status(f"http://127.0.0.1:{port}/healthz")
    except OSError:
        return None
