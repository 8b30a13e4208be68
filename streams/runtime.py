"""Long-lived resources of a worker: blob store, HTTP sessions, upstream client.

Created on first use inside the running event loop (agents and views start at
different moments of Faust's start-up) and closed when the app shuts down; never
created at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp

from config import Settings
from streams.app import app, settings
from streams.blob_sharing import sharing
from streams.blobs import BlobStore, ExplainedStore, make_blob_store

__all__ = ["Runtime", "runtime"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything the agents and views share."""

    settings: Settings
    blobs: BlobStore
    #: Plain session for the upstream's own result URLs (trusted hosts).
    http: aiohttp.ClientSession
    _guarded_http: aiohttp.ClientSession | None = field(default=None, repr=False)

    @property
    def guarded_http(self) -> aiohttp.ClientSession:
        """Session whose resolver refuses private/loopback addresses (user-given URLs)."""
        if self._guarded_http is None:
            from streams.dimensions.fetch import make_session

            self._guarded_http = make_session(self.settings)
        return self._guarded_http

    async def close(self) -> None:
        await self.blobs.close()
        await self.http.close()
        if self._guarded_http is not None:
            await self._guarded_http.close()


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The worker's :class:`Runtime`, created on first call (inside the loop)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(
            settings=settings,
            # A blob missing while the group's workers use different stores says so.
            blobs=ExplainedStore(make_blob_store(settings), sharing.missing_blob),
            http=aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=settings.upstream_timeout, sock_connect=10),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": "imagestream/0.1"},
            ),
        )
        log.info(
            "runtime ready: blobs=%s upstream=%s",
            _runtime.blobs.location,
            "emulator/proxy at " + settings.dashscope_base_url if settings.dashscope_base_url else "DashScope",
        )
    return _runtime


@app.on_before_shutdown.connect  # type: ignore[misc]
async def _close_runtime(app: object, **kwargs: object) -> None:
    global _runtime
    if _runtime is not None:
        await _runtime.close()
        _runtime = None
