"""A worker's first start on a cluster that has none of its topics.

The race this guards against: the consumer group's first assignment was computed
while the broker's metadata did not show every topic yet ("Ignoring missing topic"),
the edit agent got no partition, and ``/healthz`` said ready anyway; a task then
stayed at 0 % until aiokafka's metadata refresh 5 minutes later.  Every run here gets
a fresh topic prefix and app id (so a fresh consumer group and no topic of its own
exists), and a task submitted the moment ``/healthz`` turns 200 must complete.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import form, make_png
from tests.support import (
    AGENT_SOURCE_TOPICS,
    Emulator,
    Worker,
    all_ready,
    free_port,
    get_json,
    start_worker,
    submit,
    wait_for,
    wait_task,
)

pytestmark = pytest.mark.integration

SOURCE_TOPICS = AGENT_SOURCE_TOPICS


class HealthWatch:
    """Polls a port's ``/healthz`` from before the worker listens until it says 200,
    keeping every answer (a thread: start_worker blocks the caller)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.answers: list[tuple[int, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import json
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + 240
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    self.answers.append((resp.status, json.loads(resp.read())))
                    return
            except urllib.error.HTTPError as exc:
                self.answers.append((exc.code, json.loads(exc.read() or b"null")))
            except OSError:
                pass  # not listening yet
            self._stop.wait(0.02)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(None if exc[0] is None else 0)  # the worker said 200: so will we, soon
        self._stop.set()


def fresh_app_id(tag: str) -> str:
    return f"fresh-{tag}-{uuid.uuid4().hex[:8]}"


async def assigned_source_partitions(workers: list[Worker]) -> dict[str, set[int]]:
    """Source topic → the partitions the workers' ``/healthz`` report as theirs."""
    out: dict[str, set[int]] = {name: set() for name in SOURCE_TOPICS}
    for worker in workers:
        status, health = await get_json(f"{worker.url}/healthz")
        assert status == 200, health
        for topic, partitions in health["source_partitions"].items():
            name = topic.removeprefix(f"{worker.app_id}.")
            assert name in out, health
            assert not out[name] & set(partitions), (name, out[name], partitions)  # nobody's twice
            out[name].update(partitions)
    return out


async def submit_and_finish(worker: Worker, n_images: int, salt: int) -> dict[str, Any]:
    status, accepted = await submit(worker.url, form([(f"f{salt}-{i}.png", make_png(salt + i)) for i in range(n_images)]))
    assert status == 202, accepted
    return await wait_task(worker.url, accepted["task_id"], timeout=60)


@pytest.mark.parametrize("partitions", [4, 8])
async def test_first_start_on_fresh_topics_is_ready_only_when_every_agent_has_partitions(
    kafka_bootstrap: str, fresh_emulator: Emulator, tmp_path: Path, partitions: int
) -> None:
    for run in range(5):
        app_id = fresh_app_id(f"p{partitions}r{run}")
        port = free_port()
        started = time.monotonic()
        with HealthWatch(port) as watch:
            worker = start_worker(f"fresh-{partitions}-{run}", kafka_bootstrap=kafka_bootstrap,
                                  emulator=fresh_emulator, data_dir=tmp_path / app_id, app_id=app_id,
                                  partitions=partitions, port=port)
        try:
            ready_s = time.monotonic() - started
            # Every answer before ready was an honest 503 naming what was missing.
            for code, body in watch.answers[:-1]:
                assert code == 503, (code, body)
                assert body["ready"] is False and body["waiting_for"], body
            code, body = watch.answers[-1]
            assert code == 200 and body["ready"] is True and body["waiting_for"] == [], watch.answers[-1]

            # Submitted the moment /healthz said 200: it completes.
            salt = uuid.uuid4().int % 1_000_000
            doc = await submit_and_finish(worker, 6, salt)
            assert doc["status"] == "completed", doc
            assert doc["completed_images"] == 6
            # result_url follows the port the worker serves on (IMAGESTREAM_API_URL unset).
            assert all(r["result_url"].startswith(f"{worker.url}/api/v1/blobs/") for r in doc["results"]), doc
            assigned = await assigned_source_partitions([worker])
            assert assigned == {name: set(range(partitions)) for name in SOURCE_TOPICS}, assigned
            log = worker.proc.log_path.read_text(errors="replace")
            assert f"Ignoring missing topic: '{app_id}." not in log
            print(f"\nfresh start, {partitions} partitions, run {run}: ready in {ready_s:.1f}s after "
                  f"{len(watch.answers) - 1} answers of 503")
        finally:
            worker.proc.stop()


async def test_two_workers_started_at_the_same_moment_on_fresh_topics(
    kafka_bootstrap: str, fresh_emulator: Emulator, tmp_path: Path
) -> None:
    app_id = fresh_app_id("pair")
    shared_blobs = tmp_path / "blobs"
    workers: list[Worker] = []
    errors: list[BaseException] = []

    def start(name: str) -> None:
        try:
            workers.append(start_worker(name, kafka_bootstrap=kafka_bootstrap, emulator=fresh_emulator,
                                        data_dir=tmp_path / name, app_id=app_id, partitions=4,
                                        extra_env={"IMAGESTREAM_BLOB_URL": shared_blobs.as_uri()}))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(f"fresh-pair-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    try:
        assert not errors, errors
        assert len(workers) == 2

        # The second join rebalances the first: wait until both say ready again.
        await wait_for(lambda: all_ready(workers), timeout=60, what="both workers ready")
        assigned = await assigned_source_partitions(workers)
        assert assigned == {name: set(range(4)) for name in SOURCE_TOPICS}, assigned
        salt = uuid.uuid4().int % 1_000_000
        docs = await asyncio.gather(*(submit_and_finish(w, 4, salt + 10 * i) for i, w in enumerate(workers)))
        assert [d["status"] for d in docs] == ["completed", "completed"], docs
        for worker in workers:
            assert f"Ignoring missing topic: '{app_id}." not in worker.proc.log_path.read_text(errors="replace")
    finally:
        for worker in workers:
            worker.proc.stop()
