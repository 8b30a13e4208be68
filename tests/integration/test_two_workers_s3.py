"""Two workers, different data dirs, one S3 bucket (scripts/s3): nothing a worker on
another host needs stays local.

A task submitted through worker A is processed by whichever worker owns each job's
partition, its status reads the same from either worker, its input and result images
download from either (A streams them from S3, B answers 302 to a presigned URL), and
the same images submitted again through B are cache hits made by either worker.
"""

from __future__ import annotations

import io
import time
from hashlib import sha256
import uuid
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.conftest import Emulator, start_worker
from tests.integration.test_image_edit import make_png
from tests.s3.server import S3Server, s3_server  # noqa: F401 - the session fixture
from tests.support import all_ready, edit_form, emulator_stats, submit, wait_for, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _download(url: str) -> tuple[int, bytes, list[int]]:
    """Status, body and the statuses of the redirects followed on the way."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, await resp.read(), [r.status for r in resp.history]


async def test_two_workers_share_one_bucket(
    kafka_bootstrap: str, emulator: Emulator, s3_server: S3Server, tmp_path: Path  # noqa: F811
) -> None:
    app_id = f"imagestream-s3two-{uuid.uuid4().hex[:8]}"
    prefix = f"{app_id}/blobs"
    # The host's default blob folder, which S3 replaces: nothing may land there.
    env = {**s3_server.env(prefix), "XDG_DATA_HOME": str(tmp_path / "host")}
    workers = [
        start_worker("s3-worker-a", kafka_bootstrap=kafka_bootstrap, emulator=emulator, data_dir=tmp_path / "a",
                     app_id=app_id, partitions=2, extra_env=env),
        start_worker("s3-worker-b", kafka_bootstrap=kafka_bootstrap, emulator=emulator, data_dir=tmp_path / "b",
                     app_id=app_id, partitions=2,
                     extra_env={**env, "IMAGESTREAM_BLOB_PRESIGN": "true", "IMAGESTREAM_BLOB_PRESIGN_TTL": "120"}),
    ]
    a, b = workers
    try:
        await wait_for(lambda: all_ready(workers), timeout=90, what="both workers ready after the rebalance")
        salt = int(time.time() * 1000) % 100000
        files = [(f"s3-{i}.png", make_png(salt + i)) for i in range(6)]
        calls_before = (await emulator_stats(emulator))["total_requests"]

        status, accepted = await submit(a.url, edit_form(files, params={"prompt": "two workers, one bucket"}))
        assert status == 202, accepted
        task_id = accepted["task_id"]
        doc_b = await wait_task(b.url, task_id, timeout=120)  # read through B
        assert doc_b["status"] == "completed", doc_b
        doc_a = await wait_task(a.url, task_id, timeout=30)  # and through A: the same snapshot
        assert doc_a["results"] == doc_b["results"]
        assert (await emulator_stats(emulator))["total_requests"] - calls_before == len(files)

        store = s3_server.store(prefix)
        try:
            for (name, data), result in zip(files, doc_b["results"], strict=True):
                blob = result["result_blob"]
                assert await store.exists(blob), f"result of {name} is not in the bucket"
                from_a = await _download(f"{a.url}/api/v1/blobs/{blob}")
                from_b = await _download(f"{b.url}/api/v1/blobs/{blob}")
                assert from_a[0] == 200 and from_a[2] == [], from_a[0]  # streamed by A
                assert from_b[0] == 200 and from_b[2] == [302], from_b[0]  # B redirects to S3
                assert from_a[1] == from_b[1] == await store.get(blob)
                Image.open(io.BytesIO(from_a[1])).verify()  # a real image
                # the uploaded input is shared too
                status_in, body_in, _ = await _download(f"{b.url}/api/v1/blobs/{sha256(data).hexdigest()}")
                assert status_in == 200 and body_in == data
        finally:
            await store.close()

        # Nothing was stored in the host's default blob folder (nor in the data dirs).
        local = [p for p in tmp_path.rglob("*") if p.is_file() and "blobs" in p.parts]
        assert local == [], local

        # The same edit submitted through B: every image is a cache hit, whoever owns it.
        status, again = await submit(b.url, edit_form(files, params={"prompt": "two workers, one bucket"}))
        assert status == 202, again
        doc2 = await wait_task(a.url, again["task_id"], timeout=60)
        assert doc2["status"] == "completed", doc2
        assert all(r["from_cache"] for r in doc2["results"]), doc2["results"]
        assert [r["result_blob"] for r in doc2["results"]] == [r["result_blob"] for r in doc_b["results"]]
        assert (await emulator_stats(emulator))["total_requests"] - calls_before == len(files)

        # A missing blob is our 404 on both, redirect mode or not.
        for w in workers:
            status_missing, body_missing, _ = await _download(f"{w.url}/api/v1/blobs/{'0' * 64}")
            assert status_missing == 404 and b"blob_not_found" in body_missing
    finally:
        for w in workers:
            w.proc.stop()
