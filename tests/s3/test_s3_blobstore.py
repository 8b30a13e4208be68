"""S3BlobStore against a real S3-compatible server (scripts/s3, started by conftest)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import uuid
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from streams.blobs import BlobError, BlobNotFound, BlobStore, BlobTooLarge
from streams.blobstore_s3 import S3BlobStore
from tests.s3.server import S3Server
from tests.support import REPO, wait_for

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 1000  # 256 KB: several chunks
MISSING = "0" * 64


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CallCounter:
    """Counts the client's calls of one operation (and still makes them)."""

    def __init__(self, store: S3BlobStore, s3: Any, operation: str) -> None:
        self.calls = 0
        real = getattr(s3, operation)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await real(*args, **kwargs)

        setattr(s3, operation, counted)


async def list_keys(store: S3BlobStore) -> list[str]:
    s3 = await store._client()
    page = await s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return sorted(obj["Key"] for obj in page.get("Contents", []))


def test_the_server_is_running(s3_server: S3Server) -> None:
    status = subprocess.run([str(REPO / "scripts" / "s3"), "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith(f"running {s3_server.endpoint}")


async def test_put_get_exists(s3_store: S3BlobStore) -> None:
    assert isinstance(s3_store, BlobStore)
    assert not await s3_store.exists(sha(PNG))
    digest = await s3_store.put(PNG)
    assert digest == sha(PNG)
    assert await s3_store.exists(digest)
    assert await s3_store.get(digest) == PNG
    # content-addressed, fanned out like the local folder: prefix/ab/cdef…
    assert await list_keys(s3_store) == [f"{s3_store.prefix}{digest[:2]}/{digest[2:]}"]
    s3 = await s3_store._client()
    head = await s3.head_object(Bucket=s3_store.bucket, Key=s3_store.key(digest))
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)


async def test_put_is_idempotent(s3_store: S3BlobStore) -> None:
    digest = await s3_store.put(PNG)
    puts = CallCounter(s3_store, await s3_store._client(), "put_object")
    assert await s3_store.put(PNG) == digest
    assert await s3_store.put(PNG, digest) == digest
    assert puts.calls == 0  # the HEAD found it: nothing was sent again
    assert await list_keys(s3_store) == [s3_store.key(digest)]
    # and the server itself refuses to overwrite (the race guard the store relies on)
    s3 = await s3_store._client()
    with pytest.raises(ClientError) as info:
        await s3.put_object(Bucket=s3_store.bucket, Key=s3_store.key(digest), Body=b"other", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert await s3_store.get(digest) == PNG


async def test_racing_writers_of_the_same_bytes(s3_server: S3Server, s3_store: S3BlobStore) -> None:
    """Two workers that both miss the HEAD: conditional PUTs, one object, both succeed."""
    other = s3_server.store(s3_store.prefix)
    try:
        data = PNG + b"race"
        stores = [s3_store, other]
        for store in stores:  # both see "absent", as two workers racing would
            async def absent(sha256: str) -> bool:
                return False

            store.exists = absent  # type: ignore[method-assign]
        digests = await asyncio.gather(*(store.put(data) for store in stores for _ in range(3)))
        assert set(digests) == {sha(data)}
        assert await list_keys(s3_store) == [s3_store.key(sha(data))]
        assert await other.get(sha(data)) == data
    finally:
        await other.close()


async def test_bytes_that_do_not_match_their_name_are_refused(s3_store: S3BlobStore) -> None:
    wrong = sha(b"something else")
    with pytest.raises(BlobError) as info:
        await s3_store.put(PNG, wrong)
    assert not isinstance(info.value, BlobNotFound)
    assert not await s3_store.exists(wrong)


async def test_size_limit_refuses_before_sending(s3_server: S3Server) -> None:
    store = s3_server.store(f"test-limit-{uuid.uuid4().hex[:8]}", max_bytes=1000)
    try:
        puts = CallCounter(store, await store._client(), "put_object")
        assert await store.put(b"x" * 1000) == sha(b"x" * 1000)
        assert puts.calls == 1
        with pytest.raises(BlobTooLarge):
            await store.put(b"x" * 1001)
        assert puts.calls == 1  # not a byte was sent
        assert not await store.exists(sha(b"x" * 1001))
    finally:
        await store.close()


async def test_streaming_read(s3_server: S3Server) -> None:
    store = s3_server.store(f"test-stream-{uuid.uuid4().hex[:8]}", chunk_size=64 * 1024)
    try:
        digest = await store.put(PNG)
        async with await store.open_stream(digest) as stream:
            assert stream.size == len(PNG)
            chunks = [chunk async for chunk in stream]
        assert b"".join(chunks) == PNG
        assert len(chunks) >= 4 and max(len(c) for c in chunks) <= 64 * 1024
        # a stream abandoned after one chunk is closed without reading the rest
        stream = await store.open_stream(digest)
        async for first in stream:
            break
        assert 0 < len(first) <= 64 * 1024 and PNG.startswith(first)
        await stream.aclose()
        assert [chunk async for chunk in stream] == []  # closed: nothing more is read
        await stream.aclose()  # closing twice is harmless
        assert await store.get(digest) == PNG  # the client still works afterwards
    finally:
        await store.close()


async def test_presigned_url_downloads_with_a_plain_get(s3_store: S3BlobStore) -> None:
    digest = await s3_store.put(PNG)
    url = await s3_store.presigned_url(digest, 60)
    assert url is not None and "X-Amz-Signature=" in url
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "image/png"
            assert await resp.read() == PNG
        # without the signature the object is not public
        async with http.get(url.split("?", 1)[0]) as resp:
            assert resp.status == 403


async def test_presigned_url_expires(s3_store: S3BlobStore) -> None:
    body = b"\xff\xd8short-lived"
    digest = await s3_store.put(body)
    url = await s3_store.presigned_url(digest, 3)
    assert url is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:  # valid first: a URL that never works proves nothing
            assert resp.status == 200, await resp.text()
            assert await resp.read() == body

        async def expired() -> bool:
            async with http.get(url) as resp:
                assert resp.status in (200, 403), (resp.status, await resp.text())
                return resp.status == 403

        await wait_for(expired, timeout=30, interval=0.2, what="the presigned URL to expire")


async def test_not_found(s3_store: S3BlobStore) -> None:
    assert not await s3_store.exists(MISSING)
    with pytest.raises(BlobNotFound) as info:
        await s3_store.get(MISSING)
    assert isinstance(info.value, FileNotFoundError) and info.value.code == "blob_not_found"
    with pytest.raises(BlobNotFound):
        await s3_store.open_stream(MISSING)
    with pytest.raises(ValueError, match="not a sha256"):
        await s3_store.get("not-a-sha")


async def test_missing_bucket_is_an_error_not_a_missing_blob(s3_server: S3Server) -> None:
    store = S3BlobStore(bucket="no-such-bucket-imagestream", endpoint_url=s3_server.endpoint,
                        region=s3_server.region, access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    try:
        with pytest.raises(BlobError) as info:
            await store.get(MISSING)
        assert not isinstance(info.value, BlobNotFound)
        with pytest.raises(BlobError):
            await store.put(b"data")
    finally:
        await store.close()


async def test_wrong_credentials_are_an_error(s3_server: S3Server) -> None:
    store = S3BlobStore(bucket=s3_server.bucket, endpoint_url=s3_server.endpoint, region=s3_server.region,
                        access_key=s3_server.access_key, secret_key="wrong-secret")
    try:
        with pytest.raises(BlobError) as info:
            await store.put(b"data")
        assert "wrong-secret" not in str(info.value)
    finally:
        await store.close()


async def test_unreachable_server_is_unavailable() -> None:
    from streams.blobs import BlobStoreUnavailable
    from tests.support import free_port

    store = S3BlobStore(bucket="b", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="b",
                        connect_timeout=1, max_attempts=1)
    try:
        with pytest.raises(BlobStoreUnavailable) as info:
            await store.get(MISSING)
        assert info.value.retriable
    finally:
        await store.close()
