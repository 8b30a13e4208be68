"""Content-addressed blob store: input images and result images, named by sha256.

One small interface, :class:`BlobStore`, two backends:

- :class:`LocalBlobStore` — a folder, ``root/ab/cdef…`` (the default; one worker);
- :class:`~streams.blobstore_s3.S3BlobStore` — any S3-compatible object store,
  ``prefix/ab/cdef…`` in one bucket (several workers on several hosts).

:func:`make_blob_store` picks one from the settings (``IMAGESTREAM_BLOB_URL``).

Every backend keeps the same promises: a blob's name is the sha256 of its bytes;
writes are idempotent (same bytes → same name → written once, never rewritten) and
all-or-nothing (no half-written blob is ever visible under a valid name); bodies over
``max_bytes`` are refused before a byte is stored; reads of a missing blob raise
:class:`BlobNotFound` (a :class:`FileNotFoundError` too, for older callers).

Errors::

    ImagestreamError
    └── BlobError                 blob_store_error (500)
        ├── BlobNotFound          blob_not_found (404; also a FileNotFoundError)
        ├── BlobTooLarge          blob_too_large (413)
        ├── BlobStoreUnavailable  blob_store_unavailable (503, retriable)
        └── BlobStoreNotShared    blob_store_not_shared (503): the workers of a group
                                  do not all see this store (streams/blob_sharing.py)

Every store also has an identity, :meth:`BlobStore.store_id`: a random id written
once into the folder or bucket prefix (``store-id``; never a blob name, which is a
sha256).  Two workers see the same store exactly when they read the same id, however
they name it (two paths to one NFS folder, two endpoints of one bucket).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from streams.errors import ImagestreamError

if TYPE_CHECKING:
    from config import Settings

__all__ = [
    "BlobError",
    "BlobNotFound",
    "BlobStore",
    "BlobStoreNotShared",
    "BlobStoreUnavailable",
    "BlobStream",
    "BlobTooLarge",
    "ExplainedStore",
    "LocalBlobStore",
    "is_sha256",
    "make_blob_store",
    "sniff_mime",
]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: Bytes per chunk of a streaming read.
CHUNK_SIZE = 256 * 1024


def is_sha256(text: str) -> bool:
    """True for a lowercase hex sha256 digest (the only names blobs have)."""
    return bool(_SHA256.match(text))


def sniff_mime(head: bytes) -> str:
    """MIME type of an image from its first 16 bytes (the formats the upstream takes)."""
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return "application/octet-stream"


# --- errors ---------------------------------------------------------------------------


class BlobError(ImagestreamError):
    """The blob store failed."""

    code = "blob_store_error"
    status = 500


class BlobNotFound(BlobError, FileNotFoundError):
    """No blob of that name."""

    code = "blob_not_found"
    status = 404


class BlobTooLarge(BlobError):
    """A body over the store's ``max_bytes``; nothing was stored."""

    code = "blob_too_large"
    status = 413


class BlobStoreUnavailable(BlobError):
    """The object store could not be reached or answered 5xx; try again later."""

    code = "blob_store_unavailable"
    status = 503
    retriable = True


class BlobStoreNotShared(BlobError):
    """The workers of this group do not all use one blob store, so an image uploaded
    to one of them may be missing on the one that edits it."""

    code = "blob_store_not_shared"
    status = 503


#: The name of a store's identity file/object (not a sha256, so never a blob's).
STORE_ID_NAME = "store-id"


def new_store_id() -> str:
    return uuid.uuid4().hex


def check_sha256(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ValueError(f"not a sha256 digest: {sha256[:80]!r}")
    return sha256


def check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise BlobTooLarge(f"blob of {size} bytes is over the store's limit of {max_bytes} bytes")


# --- the interface --------------------------------------------------------------------


@dataclass
class BlobStream:
    """An open streaming read: ``size`` in bytes, then ``chunks`` (iterate once).

    Close it (``async with`` or :meth:`aclose`) even when not read to the end: it
    holds a file or an HTTP connection.
    """

    size: int
    chunks: AsyncIterator[bytes]
    _close: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks

    def __iter__(self):  # noqa: ANN204 - lets callers write ``size, chunks = stream``
        return iter((self.size, self.chunks))

    async def aclose(self) -> None:
        close, self._close = self._close, None
        aclose = getattr(self.chunks, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            if close is not None:
                await close()

    async def __aenter__(self) -> BlobStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@runtime_checkable
class BlobStore(Protocol):
    """What the agents and views need from a blob store."""

    #: Where the blobs are, for logs (``/data/blobs``, ``s3://bucket/prefix``); no secrets.
    location: str

    async def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` (idempotent); return its sha256.  ``sha256`` may be passed if
        known (it must be the digest of ``data``).  :class:`BlobTooLarge` over the limit."""
        ...

    async def get(self, sha256: str) -> bytes:
        """The blob's bytes; :class:`BlobNotFound` if absent."""
        ...

    async def exists(self, sha256: str) -> bool:
        ...

    async def open_stream(self, sha256: str) -> BlobStream:
        """Start a streaming read; :class:`BlobNotFound` if absent."""
        ...

    async def presigned_url(self, sha256: str, ttl: float) -> str | None:
        """A URL anyone may GET the blob from for ``ttl`` seconds, or None where the
        backend has no such thing (the local folder)."""
        ...

    async def store_id(self) -> str:
        """The store's identity, written on first use; the same for every process
        that reads this store, different for any other store."""
        ...

    async def close(self) -> None:
        ...


# --- local folder ---------------------------------------------------------------------


class LocalBlobStore:
    """Blobs under ``root/ab/cdef…`` (two-level fan-out keeps folders small).

    Writes go to a temp file in the target folder, are fsynced and renamed into
    place, so a crash never leaves a half-written blob under a valid name.  Blocking
    file I/O runs in a thread.
    """

    def __init__(self, root: Path, *, max_bytes: int | None = None, chunk_size: int = CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.chunk_size = chunk_size
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalBlobStore({self.location!r})"

    def path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256[2:]

    # --- blocking API (threads, tools) ----------------------------------------------
    def put_sync(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data``; return its sha256.  ``sha256`` may be passed if known."""
        check_size(len(data), self.max_bytes)
        digest = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.is_file():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def get_sync(self, sha256: str) -> bytes:
        """The blob's bytes; :class:`BlobNotFound` if absent."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None

    def exists_sync(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def store_id_sync(self) -> str:
        """Read ``root/store-id``; the first process to need it writes it.  A hard
        link of a complete temp file makes the write all-or-nothing and first-wins:
        two processes racing both read back the winner's id."""
        path = self.root / STORE_ID_NAME
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(new_store_id() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process was first: its id is the store's
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path.read_text().strip()

    # --- BlobStore ----------------------------------------------------------------
    async def put(self, data: bytes, sha256: str | None = None) -> str:
        return await asyncio.to_thread(self.put_sync, data, sha256)

    async def get(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, sha256)

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self.exists_sync, sha256)

    async def open_stream(self, sha256: str) -> BlobStream:
        path = self.path(sha256)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {sha256}") from None
        try:
            size = os.fstat(fh.fileno()).st_size
        except BaseException:
            fh.close()
            raise
        chunk_size = self.chunk_size

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk

        async def close() -> None:
            fh.close()

        return BlobStream(size=size, chunks=chunks(), _close=close)

    async def presigned_url(self, sha256: str, ttl: float) -> str | None:
        check_sha256(sha256)
        return None

    async def store_id(self) -> str:
        return await asyncio.to_thread(self.store_id_sync)

    async def close(self) -> None:
        return None


# --- missing blobs explained ---------------------------------------------------------


class ExplainedStore:
    """A :class:`BlobStore` whose reads of a missing blob raise what ``explain`` says
    is the reason (e.g. :class:`BlobStoreNotShared`) instead of :class:`BlobNotFound`,
    when it knows one."""

    def __init__(self, store: BlobStore, explain: Callable[[str], BlobError | None]) -> None:
        self.store = store
        self.explain = explain
        self.location = store.location

    def __repr__(self) -> str:
        return repr(self.store)

    def _missing(self, sha256: str, exc: BlobNotFound) -> BlobError:
        return self.explain(sha256) or exc

    async def put(self, data: bytes, sha256: str | None = None) -> str:
        return await self.store.put(data, sha256)

    async def get(self, sha256: str) -> bytes:
        try:
            return await self.store.get(sha256)
        except BlobNotFound as exc:
            raise self._missing(sha256, exc) from None

    async def exists(self, sha256: str) -> bool:
        return await self.store.exists(sha256)

    async def open_stream(self, sha256: str) -> BlobStream:
        try:
            return await self.store.open_stream(sha256)
        except BlobNotFound as exc:
            raise self._missing(sha256, exc) from None

    async def presigned_url(self, sha256: str, ttl: float) -> str | None:
        return await self.store.presigned_url(sha256, ttl)

    async def store_id(self) -> str:
        return await self.store.store_id()

    async def close(self) -> None:
        await self.store.close()


# --- choosing a backend ---------------------------------------------------------------


def make_blob_store(settings: Settings) -> BlobStore:
    """The store the settings name: ``IMAGESTREAM_BLOB_URL`` unset → the local folder
    ``DATA_DIR/blobs``; ``file:///path`` → that folder; ``s3://bucket/prefix`` → S3
    with ``IMAGESTREAM_S3_*`` endpoint, region and credentials."""
    url = settings.blob_url
    if not url:
        return LocalBlobStore(settings.blob_dir, max_bytes=settings.blob_max_bytes)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalBlobStore(Path(unquote(parts.path)), max_bytes=settings.blob_max_bytes)
    if parts.scheme == "s3":
        from streams.blobstore_s3 import S3BlobStore  # aiobotocore only where used

        return S3BlobStore.from_settings(settings)
    raise ValueError(f"unsupported blob store URL {url!r} (use s3://bucket/prefix or file:///path)")
