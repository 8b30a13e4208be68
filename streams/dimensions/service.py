"""The dimension pipeline's decisions, as plain functions (no Faust, no I/O).

Agents and views are thin loops around these:

* :func:`dimension_key` / :func:`split_key` -- the ``session_id|resource|scene`` key,
  with ``|`` and ``\\`` escaped so distinct triples never share a key;
* :func:`parse_request` -- validation of a request from a query string, a JSON body or
  a Kafka event (``scene`` may be an int); errors are :class:`InvalidRequest` with a
  specific ``code``;
* :func:`parse_batch` -- the same for a batch (``items``: one conversation's images);
* :func:`accept_update` -- latest write wins (by ``fetched_at`` for the same URL);
* :func:`anomaly` -- sizes that are flagged and never cached;
* :func:`record_size` / :func:`choose_placeholder` -- the smart placeholder per scene;
* :func:`url_entry_fresh` -- TTL of URL-level entries;
* :func:`plan_fetch` -- what a fetch job does with the URL's entry: answer from it,
  answer a remembered failure, revalidate it (conditional GET) or fetch;
* :func:`remember_failure` / :func:`failure_ttl` -- the negative cache: permanent
  failures (404, not an image, ...) are remembered longer than transient ones;
* :func:`revalidated_entry` -- an entry after a ``304 Not Modified``;
* :func:`flagged_entry` -- an implausible size, remembered like a failure;
* :class:`RememberedFailures` -- the key owners' memory of those failures;
* :class:`RecentSet` and :class:`PendingFetches` -- in-flight dedupe with expiry.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from streams.dimensions.models import (
    DimensionEntry,
    DimensionRequest,
    DimensionResult,
    DimensionUpdate,
    ErrorInfo,
    SceneSizes,
    UrlEntry,
    Waiter,
)
from streams.errors import ImageTooLarge, InvalidRequest

__all__ = [
    "ANOMALOUS_SIZE",
    "BatchRequest",
    "batch_key",
    "is_batch",
    "parse_batch",
    "CACHED",
    "FAILED",
    "FETCH",
    "MAX_ASPECT_RATIO",
    "MAX_PIXELS",
    "PERMANENT_FAILURES",
    "PendingFetches",
    "REVALIDATE",
    "RecentSet",
    "RememberedFailures",
    "accept_update",
    "anomaly",
    "choose_placeholder",
    "decode_base64",
    "dimension_key",
    "entry_from_update",
    "failed_update",
    "failure_is_permanent",
    "failure_ttl",
    "flagged_entry",
    "parse_bool",
    "parse_request",
    "placeholder_result",
    "plan_fetch",
    "record_size",
    "remember_failure",
    "result_dict",
    "result_from_entry",
    "result_from_update",
    "revalidated_entry",
    "scene_sizes_key",
    "split_key",
    "update_from_url_entry",
    "url_entry_failed",
    "url_entry_fresh",
    "waiter_key",
]

#: ``flagged`` value of a result whose size is implausible (never cached).
ANOMALOUS_SIZE = "anomalous_size"
#: More pixels than this is an anomaly (100 megapixels).
MAX_PIXELS = 100_000_000
#: A longer side more than this many times the shorter one is an anomaly (1:50).
MAX_ASPECT_RATIO = 50.0

MAX_ID_CHARS = 512
MAX_URL_CHARS = 4096
#: Sizes kept per scene (per partition) in ``scene_sizes``; the rarest is dropped.
SCENE_SIZES_KEPT = 16
#: Observations a scene needs before its most common size replaces the configured one.
PLACEHOLDER_MIN_SAMPLES = 3

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# --------------------------------------------------------------------------- keys
def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace("|", "\\|")


def dimension_key(session_id: str, resource: str, scene: str | int) -> str:
    """``session_id|resource|scene`` with ``\\`` and ``|`` escaped inside each part.

    Without escaping, ``("a|b", "c", "1")`` and ``("a", "b|c", "1")`` would collide.
    Parts without ``|`` or ``\\`` give the plain join, as external producers write it.
    """
    return "|".join(_escape(str(part)) for part in (session_id, resource, scene))


def split_key(key: str) -> tuple[str, str, str]:
    """Inverse of :func:`dimension_key`; ValueError if ``key`` has not three parts."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, "\\"))
        elif ch == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    if len(parts) != 3:
        raise ValueError(f"expected session_id|resource|scene, got {len(parts)} parts")
    return parts[0], parts[1], parts[2]


def waiter_key(waiter: Waiter) -> str:
    return dimension_key(waiter.session_id, waiter.resource, waiter.scene)


def scene_sizes_key(scene: str, partition: int) -> str:
    """Key of one partition's size counts for ``scene`` (see :func:`record_size`).

    Each partition of ``imagestream-dimension-updates`` keeps its own row, written
    only from that partition's events, so the table stays consistent with its
    changelog; readers merge the rows they hold."""
    return f"{_escape(scene)}|{partition}"


# ---------------------------------------------------------------------- validation
def _text(obj: Mapping[str, Any], name: str, *, required: bool = True, allow_int: bool = False) -> str | None:
    value = obj.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidRequest(f"missing parameter {name!r}", code="missing_parameter")
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InvalidRequest(f"parameter {name!r} must be a string", code="invalid_parameter")
    value = value.strip()
    if len(value) > MAX_ID_CHARS:
        raise InvalidRequest(f"parameter {name!r} is longer than {MAX_ID_CHARS} characters",
                             code="invalid_parameter")
    if any(ord(ch) < 32 for ch in value):
        raise InvalidRequest(f"parameter {name!r} contains control characters", code="invalid_parameter")
    return value


def parse_bool(value: Any, name: str = "refresh") -> bool:
    """``true``/``false`` as JSON booleans or the usual query-string spellings."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidRequest(f"parameter {name!r} must be true or false", code="invalid_parameter")


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host, or :class:`InvalidRequest` (``invalid_url``)."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(f"url is longer than {MAX_URL_CHARS} characters", code="invalid_url")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidRequest("url is not a valid URL", code="invalid_url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise InvalidRequest("url must be http or https", code="invalid_url")
    if not host:
        raise InvalidRequest("url has no host", code="invalid_url")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidRequest("url contains whitespace or control characters", code="invalid_url")
    return url


def parse_request(
    obj: Any, *, require_source: bool = True, now: float | None = None
) -> DimensionRequest:
    """Validate a request given as a mapping (query string, JSON body, event value).

    ``scene`` may be an int or a string; at least one of ``url`` and ``data`` is
    needed unless ``require_source`` is false (a cache-only lookup)."""
    if not isinstance(obj, Mapping):
        raise InvalidRequest("request must be a JSON object", code="invalid_request")
    session_id = _text(obj, "session_id")
    resource = _text(obj, "resource", allow_int=True)
    scene = _text(obj, "scene", allow_int=True)
    url = _text(obj, "url", required=False)
    if url is not None:
        url = check_url(url)
    data = obj.get("data")
    if data is not None and not isinstance(data, str):
        raise InvalidRequest("parameter 'data' must be a base64 string", code="invalid_parameter")
    if data is not None and not data.strip():
        data = None
    if require_source and url is None and data is None:
        raise InvalidRequest("one of 'url' or 'data' is required", code="missing_parameter")
    requested_at = obj.get("requested_at")
    if not isinstance(requested_at, (int, float)) or isinstance(requested_at, bool) or requested_at <= 0:
        requested_at = time.time() if now is None else now
    assert session_id is not None and resource is not None and scene is not None
    return DimensionRequest(
        session_id=session_id,
        resource=resource,
        scene=scene,
        url=url,
        data=data,
        refresh=parse_bool(obj.get("refresh")),
        requested_at=float(requested_at),
    )


@dataclass(frozen=True)
class BatchRequest:
    """A validated batch: one session and scene, items in the caller's order."""

    session_id: str
    scene: str
    items: tuple[DimensionRequest, ...]
    refresh: bool = False
    #: The caller's id for the batch (echoed in the answer event), if it gave one.
    request_id: str | None = None


def is_batch(obj: Any) -> bool:
    """A request document that carries ``items`` (a batch), not a single image."""
    return isinstance(obj, Mapping) and "items" in obj


def batch_key(session_id: str, scene: str) -> str:
    """Key of a batch's answer event when its request event had none."""
    return f"{_escape(session_id)}|{_escape(scene)}"


def parse_batch(obj: Any, *, max_items: int, now: float | None = None) -> BatchRequest:
    """Validate ``{session_id, scene, items: [{resource, url | data, refresh?}], refresh?,
    request_id?}``.  Every item needs a ``resource`` and a ``url`` or ``data``; an item
    may not name another session or scene.  Errors name the item (``items[3]: ...``);
    more than ``max_items`` items is ``too_many_items``."""
    if not isinstance(obj, Mapping):
        raise InvalidRequest("request must be a JSON object", code="invalid_request")
    session_id = _text(obj, "session_id")
    scene = _text(obj, "scene", allow_int=True)
    request_id = _text(obj, "request_id", required=False, allow_int=True)
    items = obj.get("items")
    if not isinstance(items, list):
        raise InvalidRequest("'items' must be a list of {resource, url | data}", code="invalid_parameter")
    if not items:
        raise InvalidRequest("'items' is empty", code="missing_parameter")
    if len(items) > max_items:
        raise InvalidRequest(f"{len(items)} items; at most {max_items} per batch", code="too_many_items")
    refresh = parse_bool(obj.get("refresh"))
    at = time.time() if now is None else now
    requested_at = obj.get("requested_at")
    if isinstance(requested_at, (int, float)) and not isinstance(requested_at, bool) and requested_at > 0:
        at = float(requested_at)
    assert session_id is not None and scene is not None
    parsed: list[DimensionRequest] = []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise InvalidRequest("must be an object {resource, url | data}", code="invalid_parameter")
            for name, value in (("session_id", session_id), ("scene", scene)):
                if item.get(name) is not None and str(item.get(name)).strip() != value:
                    raise InvalidRequest(f"{name!r} differs from the batch's", code="invalid_parameter")
            req = parse_request({**item, "session_id": session_id, "scene": scene, "requested_at": at,
                                 "refresh": refresh if item.get("refresh") is None else item["refresh"]})
        except InvalidRequest as exc:
            raise InvalidRequest(f"items[{index}]: {exc.message}", code=exc.code) from None
        parsed.append(req)
    return BatchRequest(session_id=session_id, scene=scene, items=tuple(parsed), refresh=refresh,
                        request_id=request_id)


def decode_base64(data: str, *, max_bytes: int) -> bytes:
    """Bytes of a base64 image (plain or a ``data:...;base64,`` URI), size-capped."""
    text = data.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise InvalidRequest("data URI must be base64-encoded", code="invalid_base64")
    if len(text) > (max_bytes * 4) // 3 + 8:
        raise ImageTooLarge(f"inline image is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("parameter 'data' is not valid base64", code="invalid_base64") from None
    if not raw:
        raise InvalidRequest("parameter 'data' is empty", code="invalid_base64")
    if len(raw) > max_bytes:
        raise ImageTooLarge(f"inline image is larger than {max_bytes} bytes")
    return raw


# -------------------------------------------------------------------------- sizes
def anomaly(width: int, height: int) -> str | None:
    """``"anomalous_size"`` for 0, > 100 megapixels or an aspect ratio beyond 1:50."""
    if width <= 0 or height <= 0:
        return ANOMALOUS_SIZE
    if width * height > MAX_PIXELS:
        return ANOMALOUS_SIZE
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        return ANOMALOUS_SIZE
    return None


def accept_update(current: DimensionEntry | None, update: DimensionUpdate) -> bool:
    """Whether ``update`` replaces ``current`` in the ``dimensions`` table.

    * failures and flagged sizes never do;
    * same URL: the later ``fetched_at`` wins (ties accepted: replays are idempotent),
      so an older fetch finishing late never overwrites a newer one;
    * another URL: the later request wins (the key now refers to the new image, even
      when that image's size was fetched earlier, e.g. by a prewarm).
    """
    if update.error is not None or update.flagged is not None or update.width <= 0 or update.height <= 0:
        return False
    if current is None:
        return True
    if update.url == current.url:
        return update.fetched_at >= current.fetched_at
    return update.requested_at >= current.requested_at


def entry_from_update(update: DimensionUpdate) -> DimensionEntry:
    return DimensionEntry(
        url=update.url,
        width=update.width,
        height=update.height,
        raw_width=update.raw_width or update.width,
        raw_height=update.raw_height or update.height,
        orientation=update.orientation,
        format=update.format,
        source=update.source,
        fetched_at=update.fetched_at,
        requested_at=update.requested_at,
        bytes_read=update.bytes_read,
    )


def url_entry_fresh(entry: UrlEntry | None, *, now: float, ttl: float) -> bool:
    """A URL entry with a size, younger than ``ttl`` seconds (``ttl <= 0``: never
    expires); a flagged size until its ``retry_at``.  A failure entry is never fresh
    (see :func:`url_entry_failed`)."""
    if entry is None or entry.error is not None:
        return False
    if entry.flagged is not None:
        return now < entry.retry_at
    if ttl <= 0:
        return True
    return now - entry.fetched_at < ttl


# ------------------------------------------------------------ negative cache, 304
#: Values of :func:`plan_fetch`.
CACHED = "cached"  # answer from the entry
FAILED = "failed"  # answer the remembered failure, no request to the origin
REVALIDATE = "revalidate"  # expired, has a validator: conditional GET (304 keeps the size)
FETCH = "fetch"  # unconditional GET

#: Fetch error codes (``FetchError.reason``) that another try soon would repeat.
#: ``http_status`` is decided by the status itself (:func:`failure_is_permanent`);
#: everything else (timeout, connection, truncated, internal_error, ...) is transient.
PERMANENT_FAILURES = frozenset(
    {"unsupported_format", "too_large", "refused_address", "too_many_redirects", "invalid_url"}
)
#: 4xx statuses that are about the moment, not the resource.
TRANSIENT_HTTP_STATUSES = frozenset({408, 425, 429})


def failure_is_permanent(code: str, http_status: int | None = None) -> bool:
    """Whether a failed fetch would fail the same way if repeated soon: 404, 410 and
    the other 4xx (but 408/425/429), not an image, too large, a refused address, a
    redirect loop.  Timeouts, connection errors and 5xx are transient."""
    if code == "http_status":
        return http_status is not None and 400 <= http_status < 500 and http_status not in TRANSIENT_HTTP_STATUSES
    return code in PERMANENT_FAILURES


def failure_ttl(code: str, http_status: int | None, *, permanent_ttl: float, transient_ttl: float,
                retry_after: float | None = None) -> float:
    """Seconds a failure is remembered (0: not at all).

    A transient failure whose answer said ``Retry-After`` is remembered that long
    (never shorter than ``transient_ttl``, never longer than ``permanent_ttl``)."""
    if failure_is_permanent(code, http_status):
        return max(permanent_ttl, 0.0)
    if transient_ttl <= 0:
        return 0.0
    if retry_after is not None:
        return max(transient_ttl, min(retry_after, max(permanent_ttl, transient_ttl)))
    return transient_ttl


def url_entry_failed(entry: UrlEntry | None, *, now: float) -> bool:
    """A remembered failure still in force (answered without fetching)."""
    return entry is not None and entry.error is not None and now < entry.retry_at


def plan_fetch(entry: UrlEntry | None, *, refresh: bool, now: float, ttl: float) -> str:
    """What a fetch job for the URL does, given the URL's table entry.

    ``refresh`` always fetches (unconditionally: the caller doubts what we have);
    a remembered failure is answered until its ``retry_at``; a fresh size (a flagged
    one: until its ``retry_at``) is answered; an expired size with an ETag or
    Last-Modified is revalidated (a flagged one is fetched again); anything else is
    fetched."""
    if refresh or entry is None:
        return FETCH
    if entry.error is not None:
        return FAILED if url_entry_failed(entry, now=now) else FETCH
    if url_entry_fresh(entry, now=now, ttl=ttl):
        return CACHED
    if entry.flagged is None and (entry.etag or entry.last_modified):
        return REVALIDATE
    return FETCH


def remember_failure(
    previous: UrlEntry | None,
    url: str,
    error: ErrorInfo,
    *,
    http_status: int | None,
    now: float,
    permanent_ttl: float,
    transient_ttl: float,
    url_ttl: float,
    retry_after: float | None = None,
) -> UrlEntry | None:
    """The ``url_dimensions`` entry that records a failed fetch, or None to leave the
    table as it is: the failure's TTL is 0, or it is transient and the URL still has
    a fresh size (a blip during a ``refresh`` does not erase a good size; a 404
    does)."""
    ttl = failure_ttl(error.code, http_status, permanent_ttl=permanent_ttl, transient_ttl=transient_ttl,
                      retry_after=retry_after)
    if ttl <= 0:
        return None
    if not failure_is_permanent(error.code, http_status) and url_entry_fresh(previous, now=now, ttl=url_ttl):
        return None
    return UrlEntry(url=url, width=0, height=0, raw_width=0, raw_height=0, orientation=1, format=None,
                    fetched_at=now, bytes_read=0, error=error, retry_at=now + ttl)


def revalidated_entry(
    previous: UrlEntry, *, fetched_at: float, etag: str | None, last_modified: str | None
) -> UrlEntry:
    """``previous`` confirmed by a ``304 Not Modified`` at ``fetched_at``: same size,
    new age, validators as the 304 sent them (else the old ones), no body read."""
    return UrlEntry(
        url=previous.url, width=previous.width, height=previous.height, raw_width=previous.raw_width,
        raw_height=previous.raw_height, orientation=previous.orientation, format=previous.format,
        fetched_at=fetched_at, bytes_read=0, etag=etag or previous.etag,
        last_modified=last_modified or previous.last_modified,
    )


def flagged_entry(entry: UrlEntry, flag: str, *, ttl: float) -> UrlEntry:
    """``entry`` with an implausible size: answered flagged, and remembered ``ttl``
    seconds from its fetch (like a failure), so a hot URL is not fetched again on
    every request.  With ``ttl <= 0`` it is never fresh."""
    return UrlEntry(**{**entry.asdict(), "flagged": flag, "retry_at": entry.fetched_at + max(ttl, 0.0)})


def failed_update(url: str, waiter: Waiter, error: ErrorInfo, *, at: float, retry_at: float = 0.0) -> DimensionUpdate:
    """What a waiter learns of a failed (or remembered failed) fetch."""
    return DimensionUpdate(
        session_id=waiter.session_id, resource=waiter.resource, scene=waiter.scene, url=url,
        requested_at=waiter.requested_at, source="fetched", fetched_at=at, error=error, retry_at=retry_at,
    )


def update_from_url_entry(entry: UrlEntry, waiter: Waiter, *, source: str) -> DimensionUpdate:
    return DimensionUpdate(
        session_id=waiter.session_id,
        resource=waiter.resource,
        scene=waiter.scene,
        url=entry.url,
        requested_at=waiter.requested_at,
        source=source,
        fetched_at=entry.fetched_at,
        width=entry.width,
        height=entry.height,
        raw_width=entry.raw_width,
        raw_height=entry.raw_height,
        orientation=entry.orientation,
        format=entry.format,
        bytes_read=entry.bytes_read,
        flagged=entry.flagged,
    )


# --------------------------------------------------------------- scene statistics
def _size_label(width: int, height: int) -> str:
    return f"{width}x{height}"


def _parse_label(label: str) -> tuple[int, int] | None:
    try:
        w, h = (int(x) for x in label.split("x", 1))
    except ValueError:
        return None
    return (w, h) if w > 0 and h > 0 else None


def record_size(
    stats: SceneSizes | None, width: int, height: int, *, now: float, keep: int = SCENE_SIZES_KEPT
) -> SceneSizes:
    """``stats`` with one more observation of ``width x height`` (a new object).

    Bounded: at most ``keep`` sizes; when a new size arrives at a full row, the rarest
    one is replaced and the newcomer inherits its count + 1 (the "space-saving"
    heavy-hitters sketch: frequent sizes are never lost, counts are upper bounds)."""
    counts = dict(stats.counts) if stats is not None else {}
    label = _size_label(width, height)
    if label in counts:
        counts[label] += 1
    elif len(counts) < keep:
        counts[label] = 1
    else:
        rarest = min(counts, key=lambda k: (counts[k], k))
        counts[label] = counts.pop(rarest) + 1
    total = (stats.total if stats is not None else 0) + 1
    return SceneSizes(counts=counts, total=total, updated_at=now)


def choose_placeholder(
    rows: Iterable[SceneSizes | None],
    default: tuple[int, int],
    *,
    min_samples: int = PLACEHOLDER_MIN_SAMPLES,
) -> tuple[int, int]:
    """The most common real size over ``rows`` (a scene's rows from several partitions),
    or ``default`` until the scene has ``min_samples`` observations.  Ties go to the
    larger count's first label in sorted order, so the choice is stable."""
    merged: dict[str, int] = {}
    total = 0
    for row in rows:
        if row is None:
            continue
        total += row.total
        for label, count in row.counts.items():
            merged[label] = merged.get(label, 0) + count
    if total < min_samples or not merged:
        return default
    for label, _ in sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])):
        size = _parse_label(label)
        if size is not None:
            return size
    return default


# --------------------------------------------------------------------- results
def placeholder_result(
    request: DimensionRequest, size: tuple[int, int], *, error: ErrorInfo | None = None
) -> DimensionResult:
    width, height = size
    return DimensionResult(
        session_id=request.session_id, resource=request.resource, scene=request.scene, url=request.url,
        width=width, height=height, orientation=1, format=None, source="placeholder", fetched_at=None,
        bytes_read=0, raw_width=width, raw_height=height, error=error, flagged=None,
    )


def result_dict(result: DimensionResult) -> dict[str, Any]:
    """A result as the plain JSON object of the API and the topics."""
    body = result.asdict()
    error = body.get("error")
    if error is not None and not isinstance(error, dict):
        body["error"] = error.asdict()
    return body


def result_from_entry(session_id: str, resource: str, scene: str, entry: DimensionEntry,
                      *, source: str = "cache") -> DimensionResult:
    return DimensionResult(
        session_id=session_id, resource=resource, scene=scene, url=entry.url, width=entry.width,
        height=entry.height, orientation=entry.orientation, format=entry.format, source=source,
        fetched_at=entry.fetched_at, bytes_read=entry.bytes_read, raw_width=entry.raw_width,
        raw_height=entry.raw_height, error=None, flagged=None,
    )


def result_from_update(update: DimensionUpdate, *, placeholder: tuple[int, int]) -> DimensionResult:
    """What subscribers of ``dimension-results`` learn from an update (a failure
    keeps the placeholder size and says why)."""
    if update.error is not None:
        width, height = placeholder
        return DimensionResult(
            session_id=update.session_id, resource=update.resource, scene=update.scene, url=update.url,
            width=width, height=height, orientation=1, format=None, source="placeholder", fetched_at=None,
            bytes_read=update.bytes_read, raw_width=width, raw_height=height, error=update.error, flagged=None,
        )
    return DimensionResult(
        session_id=update.session_id, resource=update.resource, scene=update.scene, url=update.url,
        width=update.width, height=update.height, orientation=update.orientation, format=update.format,
        source=update.source, fetched_at=update.fetched_at, bytes_read=update.bytes_read,
        raw_width=update.raw_width or update.width, raw_height=update.raw_height or update.height,
        error=None, flagged=update.flagged,
    )


# ------------------------------------------------------------------- in-flight
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentSet(Generic[K]):
    """Keys claimed within the last ``ttl`` seconds (bounded, injectable clock).

    ``claim(key)`` is true for the first caller and false for every other caller
    until the claim expires or is released: a view enqueues a fetch only when it
    wins the claim."""

    def __init__(self, ttl: float, *, max_size: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.clock = clock
        self._until: dict[K, float] = {}

    def claim(self, key: K) -> bool:
        now = self.clock()
        until = self._until.get(key)
        if until is not None and until > now:
            return False
        self._until.pop(key, None)
        self._until[key] = now + self.ttl  # re-inserted: dict order = expiry order
        self._prune(now)
        return True

    def release(self, key: K) -> None:
        self._until.pop(key, None)

    def __contains__(self, key: object) -> bool:
        until = self._until.get(key)  # type: ignore[call-overload]
        return until is not None and until > self.clock()

    def __len__(self) -> int:
        return len(self._until)

    def _prune(self, now: float) -> None:
        # Entries are in insertion order and all share one ttl: expired ones are first.
        while self._until:
            first = next(iter(self._until))
            if self._until[first] > now and len(self._until) <= self.max_size:
                break
            del self._until[first]


class RememberedFailures:
    """URL → (error, until): the failures a key's owner has learnt from updates
    (``DimensionUpdate.retry_at``), so it answers requests for a broken URL at once
    with the placeholder and the error, without even a fetch job.

    A read-through memory of ``url_dimensions`` (the truth, on the URL's partition,
    which survives restarts): after a restart the first request for the URL sends a
    job, answered from the table without a request to the origin, and its update
    fills this again.  Every change of the URL's table entry, on whichever worker
    wrote it, reaches :meth:`apply_entry` (from the table's changelog): a size there
    (a ``refresh`` that worked) forgets the failure at once on every worker, not
    when its TTL runs out.  Bounded (oldest dropped first); wall clock, as ``until``
    is set by another worker."""

    def __init__(self, *, max_size: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.max_size = max_size
        self.clock = clock
        self._items: dict[str, tuple[ErrorInfo, float]] = {}
        #: URL → fetched_at of the size that cleared its failure: an older failure
        #: arriving late (its update lagging the changelog) is not remembered again.
        self._cleared: dict[str, float] = {}

    def remember(self, url: str, error: ErrorInfo, until: float, *, at: float | None = None) -> None:
        """Remember ``url``'s failure until ``until``; ``at``: when it failed (ignored
        if a size fetched later already cleared it)."""
        if until <= self.clock():
            return
        if at is not None and self._cleared.get(url, float("-inf")) >= at:
            return
        self._items.pop(url, None)
        self._items[url] = (error, until)
        while len(self._items) > self.max_size:
            del self._items[next(iter(self._items))]

    def get(self, url: str) -> ErrorInfo | None:
        """The remembered error of ``url``, or None (never known, expired, forgotten)."""
        item = self._items.get(url)
        if item is None:
            return None
        if item[1] <= self.clock():
            del self._items[url]
            return None
        return item[0]

    def forget(self, url: str) -> None:
        self._items.pop(url, None)

    def watches(self, url: str) -> bool:
        """Whether a change of ``url``'s table entry matters here (cheap: a dict lookup)."""
        return url in self._items

    def apply_entry(self, url: str, entry: UrlEntry | None) -> None:
        """``url``'s table entry changed (``None``: deleted): follow it.  A size or a
        flagged size forgets the failure; another failure replaces it (a renewal, a
        different error)."""
        if entry is not None and entry.error is not None:
            self._items.pop(url, None)
            self.remember(url, entry.error, entry.retry_at)
            return
        self._items.pop(url, None)
        if entry is not None:
            self._cleared.pop(url, None)
            self._cleared[url] = entry.fetched_at
            while len(self._cleared) > self.max_size:
                del self._cleared[next(iter(self._cleared))]

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Pending(Generic[V]):
    """One URL's fetch in flight: who waits for it and the events to ack after."""

    started: float
    refresh: bool
    waiters: dict[str, Waiter] = field(default_factory=dict)
    holds: list[V] = field(default_factory=list)


class PendingFetches(Generic[V]):
    """The fetch agent's in-flight map: one fetch per URL, later jobs join it.

    ``V`` is whatever the caller must release when the fetch ends (Faust events to
    ack).  An entry older than ``stale_after`` is treated as gone (a fetch has a
    deadline, so that only happens if its task died without cleaning up)."""

    def __init__(self, *, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self._items: dict[str, Pending[V]] = {}

    def join(self, url: str, waiters: Iterable[Waiter], hold: V, *, refresh: bool = False) -> Pending[V] | None:
        """Add a job's waiters and hold; returns the new entry when the caller must
        start the fetch (none in flight), None when the job joined a running one."""
        now = self.clock()
        pending = self._items.get(url)
        started = pending is None or now - pending.started > self.stale_after
        if started:
            pending = self._items[url] = Pending(started=now, refresh=refresh)
        assert pending is not None
        for waiter in waiters:
            key = waiter_key(waiter)
            known = pending.waiters.get(key)
            if known is None or waiter.requested_at > known.requested_at:
                pending.waiters[key] = waiter
        pending.holds.append(hold)
        return pending if started else None

    def finish(self, url: str, pending: Pending[V]) -> Pending[V]:
        """The fetch started with ``pending`` ended: forget it (unless a newer fetch
        already replaced it) and return it, with every waiter and hold it gathered."""
        if self._items.get(url) is pending:
            del self._items[url]
        return pending

    def __contains__(self, url: object) -> bool:
        return url in self._items

    def __len__(self) -> int:
        return len(self._items)
