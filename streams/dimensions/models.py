"""Records of the dimension pipeline (DESIGN.md §4, §7).

Plain JSON on the wire (``include_metadata=False``) so kcat and any language can read
and write them.  ``DimensionRequest`` and ``DimensionResult`` are the public shapes
(topics ``dimension-requests`` / ``dimension-results``, keyed by
``session_id|resource|scene``); the rest are internal.

Incoming requests are parsed by :func:`streams.dimensions.service.parse_request`
(``scene`` may be an int or a string on the wire; it is always a string here).
"""

from __future__ import annotations

from typing import Optional

import faust

__all__ = [
    "DimensionEntry",
    "DimensionRequest",
    "DimensionResult",
    "DimensionUpdate",
    "ErrorInfo",
    "FetchJob",
    "SceneSizes",
    "UrlEntry",
    "Waiter",
]

#: Values of ``DimensionResult.source``.
SOURCES = ("cache", "fetched", "computed", "placeholder")


class _Record(faust.Record, serializer="json", include_metadata=False, abstract=True):
    pass


class ErrorInfo(_Record):
    """``{code, message}`` of a failed fetch or a refused input."""

    code: str
    message: str


class DimensionRequest(_Record):
    """A client's question: the size of the image at ``url`` (or in ``data``)."""

    session_id: str
    resource: str
    scene: str
    url: Optional[str] = None
    data: Optional[str] = None  # base64 image bytes (size computed in-line)
    refresh: bool = False  # force a new fetch even when the size is known
    requested_at: float = 0.0


class DimensionResult(_Record):
    """The answer (``dimension-results``, and the body of ``GET /api/v1/dimensions``)."""

    session_id: str
    resource: str
    scene: str
    url: Optional[str]
    width: int
    height: int
    orientation: int = 1
    format: Optional[str] = None
    source: str = "placeholder"  # cache | fetched | computed | placeholder
    fetched_at: Optional[float] = None
    bytes_read: int = 0
    raw_width: int = 0
    raw_height: int = 0
    error: Optional[ErrorInfo] = None
    flagged: Optional[str] = None  # e.g. "anomalous_size": real size, not cached


class Waiter(_Record):
    """A (session, resource, scene) waiting for a URL's size."""

    session_id: str
    resource: str
    scene: str
    requested_at: float = 0.0


class FetchJob(_Record):
    """Internal (``imagestream-dimension-fetches``, keyed by URL): fetch this URL's size.

    No waiters: a prewarm (fill ``url_dimensions`` only)."""

    url: str
    requested_at: float
    refresh: bool = False
    waiters: list[Waiter] = []


class DimensionUpdate(_Record):
    """Internal (``imagestream-dimension-updates``, keyed by session|resource|scene):
    a size (or a failure) for one key, written to ``dimensions`` by its owner."""

    session_id: str
    resource: str
    scene: str
    url: Optional[str]
    requested_at: float
    source: str  # fetched | computed (cache when it came from url_dimensions)
    fetched_at: float = 0.0
    width: int = 0
    height: int = 0
    raw_width: int = 0
    raw_height: int = 0
    orientation: int = 1
    format: Optional[str] = None
    bytes_read: int = 0
    error: Optional[ErrorInfo] = None
    flagged: Optional[str] = None
    #: Publish a DimensionResult for it (False when the requester was answered already).
    notify: bool = True
    #: With ``error``: the URL's failure is remembered until then (epoch seconds), so
    #: the key's owner answers requests for the URL at once, without a fetch job.
    #: 0: not remembered.
    retry_at: float = 0.0


class DimensionEntry(_Record):
    """Value of the ``dimensions`` table: what this (session, resource, scene) saw."""

    url: Optional[str]
    width: int
    height: int
    raw_width: int
    raw_height: int
    orientation: int
    format: Optional[str]
    source: str  # fetched | computed
    fetched_at: float
    requested_at: float
    bytes_read: int = 0


class UrlEntry(_Record):
    """Value of the ``url_dimensions`` table: a URL's size when last fetched, or its
    last failure (``error`` set, sizes 0), remembered until ``retry_at`` (the
    negative cache: :func:`streams.dimensions.service.plan_fetch`)."""

    url: str
    width: int
    height: int
    raw_width: int
    raw_height: int
    orientation: int
    format: Optional[str]
    fetched_at: float
    bytes_read: int = 0
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    #: A failure (no size): why, and until when (epoch seconds) it is answered
    #: without fetching.
    error: Optional[ErrorInfo] = None
    retry_at: float = 0.0
    #: A real but implausible size (``"anomalous_size"``): answered flagged, never
    #: cached per session, and remembered only until ``retry_at`` like a failure.
    flagged: Optional[str] = None


class SceneSizes(_Record):
    """Value of the ``scene_sizes`` table: how often each real size was seen in a scene
    (bounded: only the most frequent few sizes are kept)."""

    counts: dict[str, int] = {}  # "WxH" -> count
    total: int = 0
    updated_at: float = 0.0
