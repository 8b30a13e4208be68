"""Content-addressed blob store: input images and result images, named by sha256.

Writes are idempotent (same bytes → same name → written once) and atomic (a temp
file renamed into place), so a crash never leaves a half-written blob under a
valid name.  Blocking file I/O runs in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["BlobStore", "is_sha256", "sniff_mime"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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


class BlobStore:
    """Blobs under ``root/ab/cdef…`` (two-level fan-out keeps folders small)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_sync(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data``; return its sha256.  ``sha256`` may be passed if known."""
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
        """The blob's bytes; :class:`FileNotFoundError` if absent."""
        return self.path(sha256).read_bytes()

    async def put(self, data: bytes, sha256: str | None = None) -> str:
        return await asyncio.to_thread(self.put_sync, data, sha256)

    async def get(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self.get_sync, sha256)
