"""A real S3-compatible server for the session: ``scripts/s3 start`` (fixtures).

Used by tests/s3/conftest.py and by integration tests that need the shared store.

The server (versitygw or MinIO, built with ``go install`` and cached in .cache/s3) is
left running afterwards, like the Kafka broker: `make test` and later sessions reuse
it; ``scripts/s3 stop`` ends it.  If it cannot be had the run fails: these tests are
never skipped silently.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from streams.blobstore_s3 import S3BlobStore
from tests.support import REPO

#: A first install builds the server from source (minutes); later starts take ~1 s.
START_TIMEOUT = 1800


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str

    def env(self, prefix: str) -> dict[str, str]:
        """Worker settings that put its blobs under ``s3://bucket/prefix``."""
        return {
            "IMAGESTREAM_BLOB_URL": f"s3://{self.bucket}/{prefix}",
            "IMAGESTREAM_S3_ENDPOINT": self.endpoint,
            "IMAGESTREAM_S3_REGION": self.region,
            "IMAGESTREAM_S3_ACCESS_KEY": self.access_key,
            "IMAGESTREAM_S3_SECRET_KEY": self.secret_key,
        }

    def store(self, prefix: str, **kwargs: object) -> S3BlobStore:
        return S3BlobStore(bucket=self.bucket, prefix=prefix, endpoint_url=self.endpoint, region=self.region,
                           access_key=self.access_key, secret_key=self.secret_key, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    env = {**os.environ}
    started = subprocess.run([str(REPO / "scripts" / "s3"), "start"], capture_output=True, text=True,
                             timeout=START_TIMEOUT, env=env)
    endpoint = started.stdout.strip().splitlines()[-1] if started.stdout.strip() else ""
    if started.returncode != 0 or not endpoint.startswith("http"):
        pytest.fail(f"scripts/s3 start failed ({started.returncode}):\n{started.stderr[-3000:]}", pytrace=False)
    return S3Server(
        endpoint=endpoint,
        access_key=env.get("S3_ACCESS_KEY", "imagestream"),
        secret_key=env.get("S3_SECRET_KEY", "imagestream-secret"),
        region=env.get("S3_REGION", "us-east-1"),
        bucket=env.get("S3_BUCKET") or "imagestream",
    )


@pytest.fixture
async def s3_store(s3_server: S3Server) -> AsyncIterator[S3BlobStore]:
    """A store under a prefix of its own: tests never see each other's blobs."""
    store = s3_server.store(f"test-{uuid.uuid4().hex[:12]}/blobs")
    yield store
    await store.close()
