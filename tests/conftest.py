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
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    ARTIFACTS,
    REPO,
    Proc,
    free_port,
    http_status,
    imagestream_cmd,
    spawn,
    wait_for_sync,
)

PROBE = REPO / "scripts" / "kafka_probe.py"
EMULATOR_KEY = "sk-emulator-test"


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


@dataclass
class Emulator:
    base_url: str  # http://127.0.0.1:PORT
    api_url: str  # base_url + /api/v1, what DASHSCOPE_HTTP_BASE_URL is set to
    api_key: str
    proc: Proc


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """The DashScope emulator as a separate process (latency 0.2 s, no faults)."""
    port = free_port()
    proc = spawn(
        "emulator",
        imagestream_cmd("emulator", "--host", "127.0.0.1", "--port", str(port), "--latency", "fixed:0.2",
                        "--api-key", EMULATOR_KEY),
        {},
        ARTIFACTS,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_sync(lambda: http_status(f"{base}/_emulator/stats") == 200, timeout=30, what="emulator")
    except TimeoutError:
        proc.stop()
        pytest.fail(f"emulator did not start:\n{proc.log_tail()}", pytrace=False)
    yield Emulator(base_url=base, api_url=f"{base}/api/v1", api_key=EMULATOR_KEY, proc=proc)
    proc.stop()


@dataclass
class Worker:
    url: str
    data_dir: Path
    app_id: str
    proc: Proc

    def topic(self, name: str) -> str:
        """The worker's name for a topic (tests give each worker group a prefix)."""
        return f"{self.app_id}.{name}"


def start_worker(
    name: str,
    *,
    kafka_bootstrap: str,
    emulator: Emulator,
    data_dir: Path,
    app_id: str,
    partitions: int = 1,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
) -> Worker:
    """Start ``imagestream worker`` as a subprocess; returns once /healthz says ready."""
    port = port or free_port()
    env = {
        "IMAGESTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "IMAGESTREAM_APP_ID": app_id,
        "IMAGESTREAM_DATA_DIR": str(data_dir),
        "IMAGESTREAM_WEB_PORT": str(port),
        "IMAGESTREAM_API_URL": f"http://127.0.0.1:{port}",
        "IMAGESTREAM_TOPIC_PARTITIONS": str(partitions),
        # Topics of their own: events left by earlier sessions on this broker are
        # not replayed, and each worker group can have its own partition count.
        "IMAGESTREAM_TOPIC_PREFIX": f"{app_id}.",
        "IMAGESTREAM_FETCH_ALLOWLIST": "127.0.0.1",
        "DASHSCOPE_HTTP_BASE_URL": emulator.api_url,
        "DASHSCOPE_API_KEY": emulator.api_key,
        **(extra_env or {}),
    }
    proc = spawn(name, imagestream_cmd("worker", "-l", "info"), env, ARTIFACTS)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"worker exited with {proc.popen.returncode}")
        return http_status(f"{url}/healthz") == 200

    try:
        wait_for_sync(ready, timeout=180, interval=0.2, what=f"{name} /healthz")
    except (TimeoutError, RuntimeError) as exc:
        proc.stop()
        pytest.fail(f"{name} did not become ready: {exc}\n{proc.log_tail(80)}", pytrace=False)
    return Worker(url=url, data_dir=data_dir, app_id=app_id, proc=proc)


@pytest.fixture(scope="session")
def session_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def worker(kafka_bootstrap: str, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory,
           session_id: str) -> Iterator[Worker]:
    """One worker for the session (both pipelines, HTTP API) on 1 partition, so the
    per-partition upstream window is also the whole worker's."""
    data_dir = tmp_path_factory.mktemp("worker-data")
    w = start_worker("worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator, data_dir=data_dir,
                     app_id=f"imagestream-test-{session_id}")
    yield w
    w.proc.stop()
