"""Session fixtures: one real Kafka broker, one DashScope emulator, one worker.

The broker comes from, in order:
1. ``IMAGESTREAM_KAFKA_BOOTSTRAP`` if it is set and answers a Metadata request;
2. ``scripts/kafka start`` (a KRaft broker from Maven Central jars);
3. testcontainers' Kafka where a Docker engine answers.
If none works the run fails loudly: integration tests are never skipped silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from tests.support import REPO, Emulator, Worker, start_emulator, start_worker

__all__ = ["Emulator", "Worker", "start_emulator", "start_worker"]

PROBE = REPO / "scripts" / "kafka_probe.py"


def _broker_answers(bootstrap: str) -> bool:
    first = bootstrap.split(",")[0].strip()
    result = subprocess.run([sys.executable, str(PROBE), first], capture_output=True, timeout=30)
    return result.returncode == 0


def _docker_engine_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for the whole session."""
    errors: list[str] = []
    given = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP")
    if given:
        if _broker_answers(given):
            yield given
            return
        errors.append(f"IMAGESTREAM_KAFKA_BOOTSTRAP={given} does not answer a Metadata request")

    started = subprocess.run([str(REPO / "scripts" / "kafka"), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode == 0 and started.stdout.strip():
        yield started.stdout.strip().splitlines()[-1]
        return  # left running: `make test` and later sessions reuse it; `scripts/kafka stop` ends it
    errors.append(f"scripts/kafka start failed ({started.returncode}): {started.stderr[-2000:]}")

    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer  # optional extra: .[docker]

        with KafkaContainer("apache/kafka:3.9.1").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
            return
    errors.append("no Docker engine for testcontainers")
    pytest.fail("no real Kafka broker could be had:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The DashScope emulator as a separate process (latency 0.2 s, no faults)."""
    try:
        # Unlimited: the project has no cluster-wide account-budget scheduler yet, so a
        # default worker against the real per-model limits (2 requests/s) meets 429s;
        # these tests are not about limits (tests/emulator shows the limit is on by
        # default).  Output at the input's size: tests compare pixels with the input.
        emu = start_emulator("--latency", "fixed:0.2", "--unlimited", "--output-size", "input")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield emu
    emu.proc.stop()


@pytest.fixture(scope="session")
def session_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def worker(kafka_bootstrap: str, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory,
           session_id: str) -> Iterator[Worker]:
    """One worker for the session (both pipelines, HTTP API) on 1 partition, so the
    per-partition upstream window is also the whole worker's."""
    data_dir = tmp_path_factory.mktemp("worker-data")
    try:
        w = start_worker("worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator, data_dir=data_dir,
                         app_id=f"imagestream-test-{session_id}")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield w
    w.proc.stop()
