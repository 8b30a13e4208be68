"""Conditional header-only fetches (revalidation) against a real aiohttp server on
127.0.0.1 that honours If-None-Match / If-Modified-Since (no mocks, no sleeps)."""

from __future__ import annotations

import asyncio
import io
import os

import aiohttp
import pytest
from PIL import Image

from streams.dimensions.fetch import (
    DEFAULT_CHUNK_SIZE,
    FetchOutcome,
    HTTPStatusError,
    NotModified,
    fetch_dimensions,
    revalidate_dimensions,
)
from tests.dimensions.origin import LAST_MODIFIED, LOCAL, ConditionalServer, Resource
from tests.support import tiff_ifd_at_end



def big_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG", compress_level=0)
    return out.getvalue()


async def test_unchanged_etag_is_a_304_without_a_body(origin: ConditionalServer, session: aiohttp.ClientSession) -> None:
    origin.resources["a.png"] = Resource(big_png(900, 600))
    first = await fetch_dimensions(session, origin.url("a.png"), settings=LOCAL)
    assert (first.width, first.height, first.etag, first.last_modified) == (900, 600, '"v1"', LAST_MODIFIED)
    again = await revalidate_dimensions(session, origin.url("a.png"), settings=LOCAL,
                                        etag=first.etag, last_modified=first.last_modified)
    assert isinstance(again, NotModified)
    assert (again.etag, again.last_modified, again.bytes_read, again.status) == ('"v1"', LAST_MODIFIED, 0, 304)
    conditional = origin.seen("a.png")[-1]
    assert conditional.headers["If-None-Match"] == '"v1"'
    assert conditional.headers["If-Modified-Since"] == LAST_MODIFIED
    assert conditional.status == 304 and conditional.sent == 0
    assert "If-None-Match" not in origin.seen("a.png")[0].headers  # a plain fetch is unconditional


async def test_changed_content_is_read_header_only(origin: ConditionalServer, session: aiohttp.ClientSession) -> None:
    body = big_png(1200, 800)
    origin.resources["b.png"] = Resource(body, etag='"v2"')
    outcome = await revalidate_dimensions(session, origin.url("b.png"), settings=LOCAL, etag='"v1"')
    assert isinstance(outcome, FetchOutcome)
    assert (outcome.width, outcome.height, outcome.etag, outcome.status) == (1200, 800, '"v2"', 200)
    assert outcome.bytes_read <= DEFAULT_CHUNK_SIZE < len(body) // 50
    seen = origin.seen("b.png")[-1]
    await asyncio.wait_for(seen.done.wait(), 5)
    assert seen.sent < len(body) // 2, "the connection is closed, not drained"


async def test_last_modified_alone_revalidates(origin: ConditionalServer, session: aiohttp.ClientSession) -> None:
    origin.resources["c.png"] = Resource(big_png(40, 30), etag=None)
    outcome = await revalidate_dimensions(session, origin.url("c.png"), settings=LOCAL, last_modified=LAST_MODIFIED)
    assert isinstance(outcome, NotModified) and outcome.etag is None
    seen = origin.seen("c.png")[-1]
    assert "If-None-Match" not in seen.headers and seen.headers["If-Modified-Since"] == LAST_MODIFIED


async def test_weak_etags_match(origin: ConditionalServer, session: aiohttp.ClientSession) -> None:
    origin.resources["w.png"] = Resource(big_png(40, 30), etag='W/"weak"')
    first = await fetch_dimensions(session, origin.url("w.png"), settings=LOCAL)
    assert first.etag == 'W/"weak"'
    again = await revalidate_dimensions(session, origin.url("w.png"), settings=LOCAL, etag=first.etag)
    assert isinstance(again, NotModified)


async def test_a_server_ignoring_conditions_just_answers_the_size(
    origin: ConditionalServer, session: aiohttp.ClientSession
) -> None:
    origin.resources["d.png"] = Resource(big_png(64, 48), conditional=False)
    outcome = await revalidate_dimensions(session, origin.url("d.png"), settings=LOCAL, etag='"v1"')
    assert isinstance(outcome, FetchOutcome) and (outcome.width, outcome.height) == (64, 48)


async def test_conditions_follow_redirects(origin: ConditionalServer, session: aiohttp.ClientSession) -> None:
    origin.resources["e.png"] = Resource(big_png(50, 50))
    outcome = await revalidate_dimensions(session, f"{origin.base}/hop/e.png", settings=LOCAL, etag='"v1"')
    assert isinstance(outcome, NotModified)
    assert outcome.final_url == origin.url("e.png") and outcome.url == f"{origin.base}/hop/e.png"


async def test_range_jumps_of_a_changed_file_are_not_conditional(
    origin: ConditionalServer, session: aiohttp.ClientSession
) -> None:
    """A TIFF whose IFD lies at the end: the Range request carries If-Range, never
    If-None-Match (which would answer the Range with a 304)."""
    body = tiff_ifd_at_end(3000, 1000)
    origin.resources["f.tiff"] = Resource(body, etag='"v2"')
    outcome = await revalidate_dimensions(session, origin.url("f.tiff"), settings=LOCAL, etag='"v1"')
    assert isinstance(outcome, FetchOutcome)
    assert (outcome.width, outcome.height, outcome.status) == (3000, 1000, 206)
    assert outcome.range_requests >= 1 and outcome.bytes_read <= DEFAULT_CHUNK_SIZE + 4096
    ranged = [s for s in origin.seen("f.tiff") if "Range" in s.headers]
    assert ranged and all("If-None-Match" not in s.headers and s.headers["If-Range"] == '"v2"' for s in ranged)


async def test_an_unasked_304_is_an_http_error(origin: ConditionalServer, session: aiohttp.ClientSession) -> None:
    """Without conditions a 304 is no answer (a misbehaving proxy may send one)."""
    with pytest.raises(HTTPStatusError) as info:
        await fetch_dimensions(session, f"{origin.base}/always-304", settings=LOCAL)
    assert info.value.http_status == 304
