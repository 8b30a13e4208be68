"""The blob store on any S3-compatible object store (AWS S3, MinIO, versitygw, …).

Keys are ``prefix/ab/cdef…`` (the sha256 of the bytes, fanned out like the local
folder), in one bucket shared by every worker.  Writes are idempotent twice over:
a HEAD first (the usual case for cache hits and re-submitted images: nothing is
sent), then a PUT with ``If-None-Match: *`` so two workers racing on the same bytes
never rewrite an object (the server answers 412 to the loser; a server without
conditional writes gets a plain PUT of identical bytes).  Each PUT carries
``x-amz-checksum-sha256`` of the bytes, so the server itself refuses a body that
does not match its name.  Bodies over ``max_bytes`` are refused before a byte is
sent.  Reads stream in chunks; ``presigned_url`` signs a GET (SigV4, query string).

The client is aiobotocore's, created on first use inside the running loop and
closed by :meth:`S3BlobStore.close`.  Credentials come from the settings or, when
those are unset, botocore's usual chain (``AWS_ACCESS_KEY_ID``…, instance roles).
They are never logged or shown in ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from streams.blobs import (
    CHUNK_SIZE,
    STORE_ID_NAME,
    BlobError,
    BlobNotFound,
    BlobStoreUnavailable,
    BlobStream,
    check_sha256,
    check_size,
    new_store_id,
    sniff_mime,
)

if TYPE_CHECKING:
    from config import Settings

__all__ = ["S3BlobStore", "parse_s3_url"]

log = logging.getLogger(__name__)

#: Blobs never change: let every cache keep them.
IMMUTABLE = "public, max-age=31536000, immutable"
#: SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_TTL = 7 * 24 * 3600

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_ALREADY_THERE = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})
_NO_CONDITIONAL = frozenset({"NotImplemented", "501"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")`` (prefix "" or ending in /)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"no query or fragment allowed in {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class S3BlobStore:
    """Blobs as objects ``prefix/ab/cdef…`` in ``bucket``."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        max_bytes: int | None = None,
        chunk_size: int = CHUNK_SIZE,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_pool_connections: int = 32,
        max_attempts: int = 4,
    ) -> None:
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = endpoint_url
        self.region = region
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self.location = f"s3://{bucket}/{self.prefix}" + (f" at {endpoint_url}" if endpoint_url else "")
        self._access_key = access_key
        self._secret_key = secret_key
        self._config = AioConfig(
            signature_version="s3v4",
            # Path-style (endpoint/bucket/key) for self-hosted servers: no wildcard DNS needed.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            # We send our own x-amz-checksum-sha256; no aws-chunked CRC trailers, which
            # not every S3-compatible server speaks.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._stack: AsyncExitStack | None = None
        self._s3: Any = None
        self._lock = asyncio.Lock()
        self._conditional_writes = True

    @classmethod
    def from_settings(cls, settings: Settings) -> S3BlobStore:
        assert settings.blob_url
        bucket, prefix = parse_s3_url(settings.blob_url)
        return cls(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            max_bytes=settings.blob_max_bytes,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location!r})"

    def key(self, sha256: str) -> str:
        check_sha256(sha256)
        return f"{self.prefix}{sha256[:2]}/{sha256[2:]}"

    async def _client(self) -> Any:
        if self._s3 is not None:
            return self._s3
        async with self._lock:
            if self._s3 is None:
                stack = AsyncExitStack()
                kwargs: dict[str, Any] = {"region_name": self.region, "config": self._config}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                if self._access_key and self._secret_key:
                    kwargs["aws_access_key_id"] = self._access_key
                    kwargs["aws_secret_access_key"] = self._secret_key
                self._s3 = await stack.enter_async_context(get_session().create_client("s3", **kwargs))
                self._stack = stack
                log.info("blob store: %s", self.location)
        return self._s3

    def _translate(self, exc: Exception, what: str, sha256: str) -> BlobError:
        """Foreign errors become ours, here and only here."""
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            if code == "NoSuchBucket":
                return BlobError(f"{what} {sha256[:12]}: bucket {self.bucket!r} does not exist")
            if code in _NOT_FOUND or status == 404:
                return BlobNotFound(f"no blob {sha256}")
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError"):
                return BlobStoreUnavailable(f"{what} {sha256[:12]}: object store answered {status} {code}")
            return BlobError(f"{what} {sha256[:12]}: object store answered {status} {code}")
        return BlobStoreUnavailable(f"{what} {sha256[:12]}: {type(exc).__name__}: {exc}")

    # --- BlobStore ------------------------------------------------------------------
    async def exists(self, sha256: str) -> bool:
        key = self.key(sha256)
        s3 = await self._client()
        try:
            await s3.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            err = self._translate(exc, "head", sha256)
            if isinstance(err, BlobNotFound):
                return False
            raise err from exc
        return True

    async def put(self, data: bytes, sha256: str | None = None) -> str:
        check_size(len(data), self.max_bytes)  # before a byte leaves
        digest = sha256 or hashlib.sha256(data).hexdigest()
        key = self.key(digest)
        if await self.exists(digest):
            return digest
        s3 = await self._client()
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentLength": len(data),
            "ContentType": sniff_mime(data[:16]),
            "CacheControl": IMMUTABLE,
            "ChecksumSHA256": base64.b64encode(bytes.fromhex(digest)).decode(),
        }
        while True:
            try:
                if self._conditional_writes:
                    await s3.put_object(IfNoneMatch="*", **args)
                else:
                    await s3.put_object(**args)
                return digest
            except ClientError as exc:
                code = _code(exc)
                if code in _ALREADY_THERE or _status(exc) == 412:
                    return digest  # another writer won the race with the same bytes
                if self._conditional_writes and code in _NO_CONDITIONAL:
                    log.warning("object store has no conditional writes; plain PUTs of identical bytes from now on")
                    self._conditional_writes = False
                    continue
                if code in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest"):
                    raise BlobError(f"bytes do not match their name {digest[:12]}…", code="blob_digest_mismatch") from exc
                raise self._translate(exc, "put", digest) from exc
            except (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise self._translate(exc, "put", digest) from exc

    async def _get_object(self, sha256: str) -> dict[str, Any]:
        key = self.key(sha256)
        s3 = await self._client()
        try:
            return await s3.get_object(Bucket=self.bucket, Key=key)  # type: ignore[no-any-return]
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._translate(exc, "get", sha256) from exc

    async def get(self, sha256: str) -> bytes:
        response = await self._get_object(sha256)
        try:
            async with response["Body"] as body:
                return await body.read()  # type: ignore[no-any-return]
        except (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._translate(exc, "get", sha256) from exc

    async def open_stream(self, sha256: str) -> BlobStream:
        response = await self._get_object(sha256)
        body = response["Body"]
        chunk_size = self.chunk_size

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in body.iter_chunks(chunk_size):
                    yield chunk
            except (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                raise self._translate(exc, "get", sha256) from exc

        async def close() -> None:
            body.close()

        return BlobStream(size=int(response["ContentLength"]), chunks=chunks(), _close=close)

    async def presigned_url(self, sha256: str, ttl: float) -> str | None:
        key = self.key(sha256)
        s3 = await self._client()
        expires = max(1, min(int(ttl), MAX_PRESIGN_TTL))
        return await s3.generate_presigned_url(  # type: ignore[no-any-return]
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires
        )

    async def store_id(self) -> str:
        """The object ``prefix/store-id``; the first worker to need it writes it with
        ``If-None-Match: *``, so racing workers all read back the winner's id."""
        s3 = await self._client()
        key = f"{self.prefix}{STORE_ID_NAME}"
        try:
            try:
                response = await s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _code(exc) not in _NOT_FOUND and _status(exc) != 404:
                    raise
                try:
                    conditional = {"IfNoneMatch": "*"} if self._conditional_writes else {}
                    await s3.put_object(Bucket=self.bucket, Key=key, Body=new_store_id().encode(), **conditional)
                except ClientError as put_exc:
                    if _code(put_exc) not in _ALREADY_THERE and _status(put_exc) != 412:
                        raise
                response = await s3.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                return (await body.read()).decode().strip()
        except (ClientError, BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise self._translate(exc, "store id", STORE_ID_NAME) from exc

    async def close(self) -> None:
        stack, self._stack, self._s3 = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    # --- tooling (tests, set-up scripts): not part of BlobStore ----------------------
    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (workers never need this)."""
        s3 = await self._client()
        try:
            await s3.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _status(exc) != 404 and _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        try:
            await s3.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
