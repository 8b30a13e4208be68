"""docker-compose.yml can't run here (no Docker engine): check that its wiring lines
up with the settings, the broker the tests use and the emulator's command line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _expand(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment (or ``env``)."""
    env = env or {}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), value)


def _worker_env(compose: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    return {k: _expand(str(v), env) for k, v in compose["services"]["worker"]["environment"].items()}


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1].split("/")[0])


def test_services_exist_and_the_emulator_is_optional(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "minio", "minio-bucket", "worker", "emulator"} <= set(services)
    assert services["emulator"]["profiles"] == ["emulator"]
    assert "profiles" not in services["worker"]


def test_kafka_image_is_the_version_scripts_kafka_installs(compose: dict[str, Any]) -> None:
    pom = (REPO / "scripts" / "kafka-pom.xml").read_text()
    version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert version, "kafka.version not found in scripts/kafka-pom.xml"
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"
    env = compose["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # the app creates its topics


def test_worker_environment_is_valid_settings(compose: dict[str, Any]) -> None:
    env = _worker_env(compose)
    unknown = [k for k in env if k.startswith("IMAGESTREAM_") and k.removeprefix("IMAGESTREAM_").lower()
               not in {f.lower() for f in Settings.__dataclass_fields__}]
    assert not unknown, f"not settings: {unknown}"
    settings = Settings.from_env(env)  # raises on malformed values
    kafka_port = _port_of(compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    assert settings.kafka_bootstrap == f"kafka:{kafka_port}"
    assert settings.web_host == "0.0.0.0"
    assert settings.blob_url is not None and settings.blob_url.startswith("s3://")
    assert settings.s3_endpoint == "http://minio:9000"
    # The worker's published port is the port it listens on.
    published = compose["services"]["worker"]["ports"][0]
    assert _port_of(published) == settings.web_port


def test_real_service_by_default_emulator_when_asked(compose: dict[str, Any]) -> None:
    command = compose["services"]["emulator"]["command"]
    port = command[command.index("--port") + 1]
    key = command[command.index("--api-key") + 1]
    # Unset: the SDK's own endpoint (an empty value is removed before the SDK loads).
    assert _worker_env(compose)["DASHSCOPE_HTTP_BASE_URL"] == ""
    assert Settings.from_env(_worker_env(compose)).dashscope_base_url is None
    # The documented emulator command line reaches the emulator service with its key.
    local = _worker_env(compose, {"DASHSCOPE_HTTP_BASE_URL": f"http://emulator:{port}/api/v1"})
    assert local["DASHSCOPE_HTTP_BASE_URL"] == f"http://emulator:{port}/api/v1"
    assert local["DASHSCOPE_API_KEY"] == key
    assert f"DASHSCOPE_HTTP_BASE_URL=http://emulator:{port}/api/v1" in (REPO / "docker-compose.yml").read_text()


def test_bucket_and_credentials_match(compose: dict[str, Any]) -> None:
    env = _worker_env(compose)
    minio_env = {k: _expand(str(v)) for k, v in compose["services"]["minio"]["environment"].items()}
    assert env["IMAGESTREAM_S3_ACCESS_KEY"] == minio_env["MINIO_ROOT_USER"]
    assert env["IMAGESTREAM_S3_SECRET_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    bucket = env["IMAGESTREAM_BLOB_URL"].removeprefix("s3://").split("/")[0]
    assert f"local/{bucket}" in " ".join(compose["services"]["minio-bucket"]["command"])


def test_worker_healthcheck_asks_healthz_on_the_port_it_serves(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    check = " ".join(worker["healthcheck"]["test"])
    port = _worker_env(compose)["IMAGESTREAM_WEB_PORT"]
    assert f"http://127.0.0.1:{port}/healthz" in check
    assert worker["healthcheck"]["test"][:2] == ["CMD", "python"]
