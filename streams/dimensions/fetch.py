"""Header-only image fetch: the size of an image behind a URL, reading as little as it can.

::

    session = make_session(settings)          # once, in a service's on_start
    outcome = await fetch_dimensions(session, url, settings=settings)
    outcome.width, outcome.height, outcome.bytes_read
    await session.close()                     # in on_stop

One streaming GET; chunks go to :class:`~streams.dimensions.probe.HeaderParser`
and the connection is closed (not drained) the moment the size is known.  When
the parser needs bytes far ahead (a TIFF IFD at the end of the file, the EXIF chunk
of a WebP after its bitstream), a ``Range`` request jumps there; a server that
ignores Range (no ``206`` with a matching ``Content-Range``) is simply read on.

Revalidation: :func:`revalidate_dimensions` sends the same GET with
``If-None-Match`` / ``If-Modified-Since`` from an earlier fetch; a ``304 Not
Modified`` is :class:`NotModified` (no body read), any other answer is read
header-only exactly as above.

Limits, all from :class:`config.settings.Settings`: one deadline for everything
(DNS, connect, redirects, a server trickling bytes: ``dimension_timeout``), a byte
cap (``dimension_max_bytes``), a redirect cap (``dimension_max_redirects``), and
the address guard of :mod:`streams.dimensions.netguard` on every hop.

Every failure is a :class:`~streams.errors.FetchError` whose ``reason`` is one of
timeout, http_status (:class:`HTTPStatusError`, with ``http_status``), too_large,
unsupported_format (not an image, or a corrupt header), refused_address,
connection, truncated, too_many_redirects, invalid_url.  URLs in messages and logs
go through :func:`~streams.dimensions.netguard.redact_url`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import asdict, dataclass, field, fields

import aiohttp
from yarl import URL

from config.settings import Settings
from streams.dimensions.hosts import HostPolicy
from streams.dimensions.netguard import GuardedConnector, redact_url, validate_url
from streams.dimensions.probe import HeaderParser, ProbeResult, is_truncated
from streams.errors import FetchError, InvalidImage, UnsupportedFormat
from streams.httputil import parse_retry_after

__all__ = [
    "FetchOutcome",
    "HTTPStatusError",
    "NotModified",
    "USER_AGENT",
    "fetch_dimensions",
    "make_session",
    "redact_url",
    "revalidate_dimensions",
]

log = logging.getLogger(__name__)

USER_AGENT = "imagestream/0.1"
#: A response whose unread rest is at most this long is read to its end, so its
#: connection goes back to the pool (kept alive) instead of being closed; a longer
#: rest is cut off (closing costs a new handshake later, reading on costs bandwidth).
DRAIN_LIMIT = 64 * 1024
#: The policy used when a caller passes none (default headers, no caps).
_DEFAULT_POLICY = HostPolicy()
#: Bytes asked of the response stream at a time (the most read past the header).
DEFAULT_CHUNK_SIZE = 16 * 1024
#: Skips longer than this use a Range request instead of reading through.
DEFAULT_RANGE_THRESHOLD = 64 * 1024
#: Bytes asked for by one Range request.
RANGE_SPAN = 4096
#: Range requests one fetch may make.
MAX_RANGE_REQUESTS = 8
#: When the size is known and only the orientation is missing, how many bytes we
#: read through (without Range) to reach it before settling for orientation 1.
DEFAULT_ORIENTATION_BUDGET = 256 * 1024

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class HTTPStatusError(FetchError):
    """The server answered with a status that is neither 2xx nor a redirect."""

    def __init__(self, http_status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__("http_status", message)
        self.http_status = http_status
        #: Seconds the server asked us to wait (its ``Retry-After``), if it said.
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchOutcome:
    """A successful fetch: the probe result plus how it was obtained."""

    format: str
    width: int
    height: int
    raw_width: int
    raw_height: int
    orientation: int
    mime: str
    #: As asked / after redirects.  Not in repr: signed URLs carry secrets.
    url: str = field(repr=False)
    final_url: str = field(repr=False)
    #: Body bytes read over every response of this fetch (whole chunks).
    bytes_read: int
    #: End offset of the last byte the parser needed: the header prefix proper.
    header_bytes: int
    #: Seconds, DNS to answer.
    elapsed: float
    etag: str | None
    last_modified: str | None
    #: HTTP status of the response the header came from (200, or 206 after a Range jump).
    status: int
    range_requests: int = 0
    #: False when the size was known but the orientation data lay beyond what we
    #: were willing to read (no Range support): orientation is then 1.
    orientation_known: bool = True

    @property
    def probe(self) -> ProbeResult:
        return ProbeResult(**{f.name: getattr(self, f.name) for f in fields(ProbeResult)})


@dataclass(frozen=True, slots=True, kw_only=True)
class NotModified:
    """A conditional fetch answered ``304 Not Modified``: the size known before holds."""

    url: str = field(repr=False)
    final_url: str = field(repr=False)
    #: Seconds, DNS to answer.
    elapsed: float
    #: Validators sent with the 304 (None when it sent none: keep the old ones).
    etag: str | None
    last_modified: str | None
    status: int = 304
    bytes_read: int = 0


def make_session(settings: Settings, *, limit: int | None = None,
                 limit_per_host: int | None = None) -> aiohttp.ClientSession:
    """The shared ClientSession for dimension fetches (call inside the running loop).

    Guarded resolver/connector with ``dimension_fetch_concurrency`` connections in
    all and ``dimension_per_host`` per host (kept alive and reused: see
    :data:`DRAIN_LIMIT`), no cookie jar, ``Accept-Encoding: identity`` (byte offsets
    must be the file's, for Range).  User-Agent and the other per-host headers come
    from the :class:`~streams.dimensions.hosts.HostPolicy` given to each fetch.  The
    per-fetch deadline is applied by :func:`fetch_dimensions` itself.
    """
    connector = GuardedConnector(
        allowlist=settings.fetch_allowlist,
        limit=limit or settings.dimension_fetch_concurrency,
        limit_per_host=limit_per_host or settings.dimension_per_host,
        ttl_dns_cache=30,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.dimension_timeout),
        trust_env=False,
    )


async def fetch_dimensions(
    session: aiohttp.ClientSession | None,
    url: str,
    *,
    settings: Settings,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    range_threshold: int = DEFAULT_RANGE_THRESHOLD,
    orientation_budget: int = DEFAULT_ORIENTATION_BUDGET,
    policy: HostPolicy | None = None,
) -> FetchOutcome:
    """Fetch just enough of ``url`` to know the image's size.

    ``session`` must come from :func:`make_session` (it carries the address guard);
    None makes (and closes) a session for this one call.  ``policy``: the request
    headers per host (default :data:`~streams.dimensions.hosts.DEFAULT_HEADERS`);
    its concurrency caps are the caller's to apply (:meth:`HostPolicy.gate`).
    """
    outcome = await _fetch(session, url, settings=settings, chunk_size=chunk_size, range_threshold=range_threshold,
                           orientation_budget=orientation_budget, conditions={}, policy=policy)
    assert isinstance(outcome, FetchOutcome)  # no conditions: never a 304
    return outcome


async def revalidate_dimensions(
    session: aiohttp.ClientSession | None,
    url: str,
    *,
    settings: Settings,
    etag: str | None = None,
    last_modified: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    range_threshold: int = DEFAULT_RANGE_THRESHOLD,
    orientation_budget: int = DEFAULT_ORIENTATION_BUDGET,
    policy: HostPolicy | None = None,
) -> FetchOutcome | NotModified:
    """A conditional :func:`fetch_dimensions`: ``If-None-Match: etag`` and/or
    ``If-Modified-Since: last_modified`` on the GET (and on each redirect hop).

    :class:`NotModified` on a 304, else the new size read header-only as usual
    (a server that ignores the conditions just answers 200)."""
    conditions: dict[str, str] = {}
    if etag:
        conditions["If-None-Match"] = etag
    if last_modified:
        conditions["If-Modified-Since"] = last_modified
    return await _fetch(session, url, settings=settings, chunk_size=chunk_size, range_threshold=range_threshold,
                        orientation_budget=orientation_budget, conditions=conditions, policy=policy)


async def _fetch(
    session: aiohttp.ClientSession | None,
    url: str,
    *,
    settings: Settings,
    chunk_size: int,
    range_threshold: int,
    orientation_budget: int,
    conditions: dict[str, str],
    policy: HostPolicy | None = None,
) -> FetchOutcome | NotModified:
    own = session is None
    if session is None:
        session = make_session(settings)
    elif not isinstance(session.connector, GuardedConnector):
        raise TypeError("fetch_dimensions needs a session from make_session() (guarded connector)")
    elif session.connector.guard.allowlist != tuple(settings.fetch_allowlist):
        raise ValueError("the session was made with another fetch_allowlist than these settings")
    fetch = _Fetch(session, settings, chunk_size, range_threshold, orientation_budget, conditions,
                   policy or _DEFAULT_POLICY)
    try:
        async with asyncio.timeout(settings.dimension_timeout):
            return await fetch.run(url)
    except TimeoutError:
        raise FetchError(
            "timeout", f"no size within {settings.dimension_timeout:g}s from {redact_url(url)}"
        ) from None
    finally:
        await fetch.close()
        if own:
            await session.close()


class _Fetch:
    """One fetch: redirects, the streaming read, Range jumps."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        chunk_size: int,
        range_threshold: int,
        orientation_budget: int,
        conditions: dict[str, str] | None = None,
        policy: HostPolicy = _DEFAULT_POLICY,
    ) -> None:
        self.session = session
        self.policy = policy
        #: If-None-Match / If-Modified-Since of a revalidation (empty: a plain fetch).
        self.conditions = dict(conditions or {})
        self.settings = settings
        self.chunk_size = chunk_size
        self.range_threshold = range_threshold
        self.orientation_budget = orientation_budget
        self.started = time.monotonic()
        self.responses: list[aiohttp.ClientResponse] = []
        self.bytes_read = 0
        self.range_requests = 0

    async def close(self) -> None:
        for response in self.responses:
            response.close()  # closes the connection: a long unread body is never drained

    async def _done_with(self, response: aiohttp.ClientResponse) -> None:
        """Give ``response``'s connection back to the pool when little of its body is
        left (read it), else close it.  Within the fetch's deadline."""
        try:
            left = (response.content_length - response.content.total_bytes
                    if response.content_length is not None else None)
            if left is not None and 0 <= left <= DRAIN_LIMIT:
                while await response.content.read(DEFAULT_CHUNK_SIZE):
                    pass
            if response.content.at_eof():
                response.release()  # keep-alive: the next fetch of this host skips the handshake
                return
        except (aiohttp.ClientError, OSError):
            pass
        response.close()

    async def _get(self, url: URL, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        sent = self.policy.headers_for(url.raw_host or "")
        if headers:
            sent.update(headers)
        try:
            response = await self.session.get(url, allow_redirects=False, headers=sent)
        except FetchError:
            raise  # refused by the guarded resolver
        except aiohttp.InvalidURL as exc:
            raise FetchError("invalid_url", f"invalid URL {redact_url(url)}: {exc.__class__.__name__}") from None
        except aiohttp.ClientConnectorDNSError:
            raise FetchError("connection", f"cannot resolve {url.raw_host}") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError("connection", f"{exc.__class__.__name__} for {redact_url(url)}") from None
        self.responses.append(response)
        return response

    async def _open(self, url: str) -> tuple[URL, aiohttp.ClientResponse]:
        """GET, following redirects by hand; each target checked before it is used."""
        target = validate_url(url, self.settings.fetch_allowlist)
        hops = 0
        while True:
            response = await self._get(target, self.conditions or None)
            if response.status not in _REDIRECTS:
                break
            location = response.headers.get("Location")
            await self._done_with(response)
            if not location:
                raise HTTPStatusError(response.status, f"HTTP {response.status} without Location from {redact_url(target)}")
            hops += 1
            if hops > self.settings.dimension_max_redirects:
                raise FetchError(
                    "too_many_redirects",
                    f"more than {self.settings.dimension_max_redirects} redirects from {redact_url(url)}",
                )
            try:
                following = target.join(URL(location))
            except ValueError:
                raise FetchError("invalid_url", f"bad redirect Location from {redact_url(target)}") from None
            target = validate_url(following, self.settings.fetch_allowlist)
            log.debug("redirect %d to %s", hops, redact_url(target))
        if response.status == 304 and self.conditions:
            return target, response  # not modified: the caller reads no body
        if not 200 <= response.status < 300:
            await self._done_with(response)
            raise HTTPStatusError(response.status, f"HTTP {response.status} from {redact_url(target)}",
                                  retry_after=parse_retry_after(response.headers.get("Retry-After"), now=time.time()))
        return target, response

    async def _range(self, url: URL, start: int, validator: str | None) -> aiohttp.ClientResponse | None:
        """A 206 response starting at ``start``, or None when the server will not."""
        if self.range_requests >= MAX_RANGE_REQUESTS:
            return None
        self.range_requests += 1
        headers = {"Range": f"bytes={start}-{start + RANGE_SPAN - 1}"}
        if validator:
            headers["If-Range"] = validator  # a changed file answers 200: not mixed up
        try:
            response = await self._get(url, headers)
        except FetchError as exc:
            if exc.reason == "refused_address":
                raise
            return None
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if response.status == 206 and match and int(match.group(1)) == start:
            return response
        response.close()
        log.debug("no usable Range answer (HTTP %d) from %s", response.status, redact_url(url))
        return None

    async def run(self, url: str) -> FetchOutcome | NotModified:
        target, response = await self._open(url)
        first = response
        if response.status == 304:
            await self._done_with(response)
            return NotModified(url=url, final_url=str(target), elapsed=time.monotonic() - self.started,
                               etag=response.headers.get("ETag"),
                               last_modified=response.headers.get("Last-Modified"))
        parser = HeaderParser()
        max_bytes = self.settings.dimension_max_bytes
        etag = first.headers.get("ETag")
        validator = etag if etag and not etag.startswith("W/") else first.headers.get("Last-Modified")
        ranges_ok = (
            first.headers.get("Accept-Ranges", "").strip().lower() != "none"
            and not first.headers.get("Content-Encoding")
        )
        in_range = False
        orientation_known = True
        result: ProbeResult | None = None
        try:
            while result is None:
                try:
                    chunk = await response.content.read(self.chunk_size)
                except aiohttp.ClientPayloadError:
                    chunk = b""  # the body ended early: as good as EOF
                except (aiohttp.ClientError, OSError) as exc:
                    raise FetchError("connection", f"{exc.__class__.__name__} reading {redact_url(target)}") from None
                if not chunk:
                    if in_range and ranges_ok:  # that Range answer is used up: ask for the next bytes
                        following = await self._range(target, parser.next_needed, validator)
                        if following is not None:
                            response.close()
                            response = following
                            parser.seek(parser.next_needed)
                            continue
                    result = parser.finish()  # at the real end: nothing was left unread
                    break
                self.bytes_read += len(chunk)
                result = parser.feed(chunk)
                if result is not None:
                    break
                skip = parser.next_needed - parser.position
                if skip > self.range_threshold and ranges_ok:
                    jumped = await self._range(target, parser.next_needed, validator)
                    if jumped is not None:
                        response.close()
                        response, in_range = jumped, True
                        parser.seek(parser.next_needed)
                        continue
                    ranges_ok = False
                if parser.provisional is not None and (
                    skip > self.orientation_budget or self.bytes_read + skip > max_bytes
                ):
                    result, orientation_known = parser.provisional, False
                    break
                if self.bytes_read > max_bytes:
                    raise FetchError(
                        "too_large", f"no size in the first {max_bytes} bytes of {redact_url(target)}"
                    )
        except UnsupportedFormat as exc:
            raise FetchError("unsupported_format", f"{exc.message} ({redact_url(target)})") from None
        except InvalidImage as exc:
            if is_truncated(exc):
                raise FetchError("truncated", f"{exc.message} ({redact_url(target)})") from None
            raise FetchError("unsupported_format", f"corrupt header: {exc.message} ({redact_url(target)})") from None
        if not orientation_known:
            log.debug("size of %s known, orientation not read", redact_url(target))
        await self._done_with(response)
        return FetchOutcome(
            **asdict(result),
            url=url,
            final_url=str(target),
            bytes_read=self.bytes_read,
            header_bytes=parser.bytes_used,
            elapsed=time.monotonic() - self.started,
            etag=etag,
            last_modified=first.headers.get("Last-Modified"),
            status=response.status,
            range_requests=self.range_requests,
            orientation_known=orientation_known,
        )
