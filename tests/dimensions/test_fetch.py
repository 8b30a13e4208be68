"""The header-only fetcher against real aiohttp servers on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from config.settings import Settings
from streams.dimensions.fetch import DEFAULT_CHUNK_SIZE, HTTPStatusError, fetch_dimensions, make_session
from streams.dimensions.netguard import GuardedConnector, redact_url
from streams.errors import FetchError
from tests.dimensions.origin import LOCAL
from tests.support import tiff_ifd_at_end

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "probe-image-size"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
WRITE_PIECE = 64 * 1024


# -------------------------------------------------------------------------- server
@dataclass
class Served:
    """What the server saw of one request."""

    path: str
    range: str | None
    sent: int = 0
    size: int = 0
    aborted: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ImageServer:
    """Files, redirects, errors and misbehaving bodies on 127.0.0.1:<ephemeral>."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[Served] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def seen(self, path: str) -> list[Served]:
        return [s for s in self.log if s.path == path]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/f/{name}", self.file)
        app.router.add_get("/redirect/{n}", self.redirect)
        app.router.add_get("/to", self.redirect_to)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/endless-app", self.endless_app)
        app.router.add_get("/zeros-after-app", self.zeros_after_app)
        app.router.add_get("/random-jpeg", self.random_jpeg)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A small send buffer, inherited by accepted sockets: the server notices
        # quickly when the client stops reading and closes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _stream(self, request: web.Request, served: Served, pieces: AsyncIterator[bytes] | list[bytes],
                      response: web.StreamResponse) -> web.StreamResponse:
        try:
            await response.prepare(request)
            if isinstance(pieces, list):
                for piece in pieces:
                    await response.write(piece)
                    served.sent += len(piece)
            else:
                async for piece in pieces:
                    await response.write(piece)
                    served.sent += len(piece)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            served.aborted = True
        finally:
            served.done.set()
        return response

    async def file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        data = self.files[name]
        ranges = request.query.get("ranges", "honour")
        served = Served(request.path, request.headers.get("Range"), size=len(data))
        self.log.append(served)
        headers = {"Content-Type": "application/octet-stream", "ETag": '"v1"', "Accept-Ranges": "bytes"}
        if ranges == "none":
            headers["Accept-Ranges"] = "none"
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", served.range or "")
        if match and ranges == "honour" and request.headers.get("If-Range", '"v1"') == '"v1"':
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        pieces = [data[i : i + WRITE_PIECE] for i in range(0, len(data), WRITE_PIECE)]
        return await self._stream(request, served, pieces, response)

    async def redirect(self, request: web.Request) -> web.Response:
        self.log.append(Served(request.path, None))
        n = int(request.match_info["n"])
        target = request.query.get("to", "/f/iojs_logo.png")
        location = f"/redirect/{n - 1}?to={target}" if n > 1 else target
        raise web.HTTPFound(location)

    async def redirect_to(self, request: web.Request) -> web.Response:
        self.log.append(Served(request.path, None))
        raise web.HTTPFound(request.query["location"])

    async def status(self, request: web.Request) -> web.Response:
        self.log.append(Served(request.path, None))
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def slow(self, request: web.Request) -> web.StreamResponse:
        """Headers at once, then one byte a second of a JPEG that never ends."""
        served = Served(request.path, None)
        self.log.append(served)

        async def trickle() -> AsyncIterator[bytes]:
            yield b"\xff"
            while True:
                await asyncio.sleep(1.0)  # the misbehaviour under test, not a synchronisation
                yield b"\xd8"

        return await self._stream(request, served, trickle(), web.StreamResponse(headers={"Content-Type": "image/jpeg"}))

    async def endless_app(self, request: web.Request) -> web.StreamResponse:
        """A JPEG of APP2 segments that never reaches a frame header."""
        served = Served(request.path, None)
        self.log.append(served)
        segment = b"\xff\xe2\xff\xff" + bytes(65533)

        async def body() -> AsyncIterator[bytes]:
            yield b"\xff\xd8"
            while True:
                yield segment

        return await self._stream(request, served, body(), web.StreamResponse())

    async def zeros_after_app(self, request: web.Request) -> web.StreamResponse:
        """An APP1 segment that claims 64 KiB, then zeros for ever."""
        served = Served(request.path, None)
        self.log.append(served)

        async def body() -> AsyncIterator[bytes]:
            yield b"\xff\xd8\xff\xe1\xff\xff"
            while True:
                yield bytes(WRITE_PIECE)

        return await self._stream(request, served, body(), web.StreamResponse())

    async def random_jpeg(self, request: web.Request) -> web.StreamResponse:
        served = Served(request.path, None)
        self.log.append(served)

        async def body() -> AsyncIterator[bytes]:
            yield b"\xff\xd8"
            while True:
                yield os.urandom(WRITE_PIECE)

        return await self._stream(request, served, body(), web.StreamResponse())


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[ImageServer]:
    srv = ImageServer()
    for path in FIXTURES.iterdir():
        srv.files[path.name] = path.read_bytes()
    srv.files.update(big_images())
    await srv.start()
    yield srv
    await srv.stop()


# ---------------------------------------------------------------------- big images
def noise(size: tuple[int, int]) -> Image.Image:
    return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def big_images() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[274] = 6
    photo = noise((1400, 1400))
    return {
        "big.png": encoded(photo, "PNG", compress_level=0),
        "big.jpg": encoded(photo, "JPEG", quality=95),
        "big-progressive.jpg": encoded(photo, "JPEG", quality=95, progressive=True),
        "big.webp": encoded(photo.resize((1000, 700)), "WEBP", quality=100, method=0),
        "big-exif.webp": encoded(photo.resize((1000, 700)), "WEBP", quality=100, method=0, exif=exif),
        "big-ifd-at-end.tiff": tiff_ifd_at_end(3000, 1000),
    }


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
async def test_every_fixture_over_http(server: ImageServer, session: aiohttp.ClientSession, name: str) -> None:
    expected = MANIFEST["images"][name]
    outcome = await fetch_dimensions(session, server.url(f"/f/{name}?sig=secret"), settings=LOCAL)
    assert outcome.format == expected["type"]
    assert (outcome.raw_width, outcome.raw_height) == (round(expected["width"]), round(expected["height"]))
    assert outcome.orientation == expected.get("orientation", 1)
    assert outcome.status in (200, 206) and outcome.etag == '"v1"'
    assert 0 < outcome.bytes_read <= len(server.files[name])
    assert outcome.final_url.endswith(f"/f/{name}?sig=secret")


@pytest.mark.parametrize("name", MANIFEST["not_images"])
async def test_non_images_over_http(server: ImageServer, session: aiohttp.ClientSession, name: str) -> None:
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url(f"/f/{name}"), settings=LOCAL)
    assert info.value.reason == "unsupported_format"


@pytest.mark.parametrize(
    ("name", "size"),
    [("big.png", (1400, 1400)), ("big.jpg", (1400, 1400)), ("big-progressive.jpg", (1400, 1400)),
     ("big.webp", (1000, 700))],
)
async def test_big_files_stop_after_the_header(
    server: ImageServer, session: aiohttp.ClientSession, name: str, size: tuple[int, int]
) -> None:
    outcome = await fetch_dimensions(session, server.url(f"/f/{name}"), settings=LOCAL)
    assert (outcome.width, outcome.height) == size
    assert outcome.bytes_read <= DEFAULT_CHUNK_SIZE  # the header lies in the first chunk
    served = server.seen(f"/f/{name}")[-1]
    await asyncio.wait_for(served.done.wait(), 5)
    assert served.aborted, "the client must close the connection, not drain the body"
    assert served.sent < served.size / 2, f"server pushed {served.sent} of {served.size} bytes"


async def test_tiff_ifd_at_end_uses_a_range_request(server: ImageServer, session: aiohttp.ClientSession) -> None:
    name = "big-ifd-at-end.tiff"
    outcome = await fetch_dimensions(session, server.url(f"/f/{name}"), settings=LOCAL)
    assert (outcome.width, outcome.height) == (3000, 1000)
    assert outcome.range_requests >= 1 and outcome.status == 206
    assert outcome.bytes_read <= DEFAULT_CHUNK_SIZE + 4096
    ranged = [s for s in server.seen(f"/f/{name}") if s.range]
    assert ranged and ranged[-1].range.startswith(f"bytes={8 + 3000 * 1000}-")


@pytest.mark.parametrize("mode", ["ignore", "none"])
async def test_tiff_ifd_at_end_without_range_support_streams_on(
    server: ImageServer, session: aiohttp.ClientSession, mode: str
) -> None:
    name = "big-ifd-at-end.tiff"
    outcome = await fetch_dimensions(session, server.url(f"/f/{name}?ranges={mode}"), settings=LOCAL)
    assert (outcome.width, outcome.height) == (3000, 1000)
    assert outcome.bytes_read == len(server.files[name])
    assert outcome.status == 200


async def test_webp_exif_orientation_by_range(server: ImageServer, session: aiohttp.ClientSession) -> None:
    name = "big-exif.webp"
    outcome = await fetch_dimensions(session, server.url(f"/f/{name}"), settings=LOCAL)
    assert (outcome.width, outcome.height, outcome.orientation) == (700, 1000, 6)
    assert outcome.orientation_known
    assert outcome.bytes_read <= DEFAULT_CHUNK_SIZE + 2 * 4096 < len(server.files[name]) / 10


async def test_webp_exif_orientation_without_range_is_bounded(server: ImageServer, session: aiohttp.ClientSession) -> None:
    name = "big-exif.webp"
    assert len(server.files[name]) > 300 * 1024
    outcome = await fetch_dimensions(session, server.url(f"/f/{name}?ranges=none"), settings=LOCAL)
    assert (outcome.raw_width, outcome.raw_height) == (1000, 700)
    assert not outcome.orientation_known and outcome.orientation == 1
    assert outcome.bytes_read <= DEFAULT_CHUNK_SIZE
    # With a budget that covers the file, it reads on and finds it.
    outcome = await fetch_dimensions(
        session, server.url(f"/f/{name}?ranges=none"), settings=LOCAL, orientation_budget=10 * 1024 * 1024
    )
    assert (outcome.width, outcome.height, outcome.orientation) == (700, 1000, 6)


async def test_http_error_status(server: ImageServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(HTTPStatusError) as info:
        await fetch_dimensions(session, server.url("/status/404?token=hunter2"), settings=LOCAL)
    assert info.value.reason == "http_status" and info.value.http_status == 404
    assert "hunter2" not in str(info.value)


async def test_slow_loris_times_out_within_the_deadline(server: ImageServer, session: aiohttp.ClientSession) -> None:
    settings = LOCAL.replace(dimension_timeout=1.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url("/slow"), settings=settings)
    took = loop.time() - started
    assert info.value.reason == "timeout"
    # Not before the deadline; after it, by no more than a loaded machine's slack.
    assert 1.4 <= took < 1.5 + 3.0, f"timed out after {took:.2f}s for a 1.5 s deadline"


async def test_endless_app_segments_hit_the_byte_cap(server: ImageServer, session: aiohttp.ClientSession) -> None:
    settings = LOCAL.replace(dimension_max_bytes=512 * 1024)
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url("/endless-app"), settings=settings)
    assert info.value.reason == "too_large"


@pytest.mark.parametrize("path", ["/zeros-after-app", "/random-jpeg"])
async def test_garbage_after_jpeg_start_is_refused(server: ImageServer, session: aiohttp.ClientSession, path: str) -> None:
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url(path), settings=LOCAL)
    assert info.value.reason in ("unsupported_format", "too_large")


async def test_truncated_header(server: ImageServer, session: aiohttp.ClientSession) -> None:
    server.files["cut.png"] = server.files["iojs_logo.png"][:20]
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url("/f/cut.png"), settings=LOCAL)
    assert info.value.reason == "truncated"


async def test_three_redirects_are_followed(server: ImageServer, session: aiohttp.ClientSession) -> None:
    outcome = await fetch_dimensions(session, server.url("/redirect/3"), settings=LOCAL)
    assert (outcome.width, outcome.height) == (367, 187)
    assert outcome.final_url == server.url("/f/iojs_logo.png")
    assert outcome.url == server.url("/redirect/3")


async def test_six_redirects_are_too_many(server: ImageServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url("/redirect/6"), settings=LOCAL)
    assert info.value.reason == "too_many_redirects"


def tracing_session(settings: Settings, connects: list[str]) -> aiohttp.ClientSession:
    """A guarded session that records every connection it opens."""
    trace = aiohttp.TraceConfig()

    async def on_connect(session: object, context: object, params: aiohttp.TraceRequestStartParams) -> None:
        connects.append(str(params.url))

    trace.on_request_start.append(on_connect)
    return aiohttp.ClientSession(connector=GuardedConnector(allowlist=settings.fetch_allowlist), trace_configs=[trace])


@pytest.mark.parametrize(
    "location",
    ["http://10.0.0.1/x.png", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
     "http://0xa9.254.169.254/", "http://100.100.100.200/latest/meta-data/"],
)
async def test_redirect_to_refused_address_is_never_requested(server: ImageServer, location: str) -> None:
    requests: list[str] = []
    async with tracing_session(LOCAL, requests) as traced:
        with pytest.raises(FetchError) as info:
            await fetch_dimensions(traced, server.url(f"/to?location={location}"), settings=LOCAL)
    assert info.value.reason == "refused_address"
    assert len(requests) == 1 and requests[0].startswith(server.url("/to"))


async def test_redirect_to_forbidden_scheme(server: ImageServer, session: aiohttp.ClientSession) -> None:
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, server.url("/to?location=file:///etc/passwd"), settings=LOCAL)
    assert info.value.reason == "invalid_url"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]", "0177.0.0.1", "0x7f.1", "127.1"]
)
async def test_loopback_refused_without_allowlist(server: ImageServer, host: str) -> None:
    closed = Settings(dimension_timeout=5.0)
    before = len(server.log)
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(None, f"http://{host}:{server.port}/f/iojs_logo.png", settings=closed)
    assert info.value.reason == "refused_address"
    assert len(server.log) == before  # nothing reached the server


async def test_allowlisted_host_name(server: ImageServer) -> None:
    by_name = Settings(fetch_allowlist=("localhost",), dimension_timeout=5.0)
    outcome = await fetch_dimensions(None, server.url("/f/iojs_logo.gif", host="localhost"), settings=by_name)
    assert (outcome.width, outcome.height, outcome.format) == (367, 187, "gif")


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/a.png", "file:///etc/passwd", "http:///a.png", "http://", "//127.0.0.1/a.png",
     "http://user:pw@127.0.0.1/a.png", "http://127.0.0.1\\@10.0.0.1/", "javascript:alert(1)", "http://a b/"],
)
async def test_invalid_urls(url: str) -> None:
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(None, url, settings=LOCAL)
    assert info.value.reason == "invalid_url"


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(FetchError) as info:
        await fetch_dimensions(session, f"http://127.0.0.1:{port}/a.png", settings=LOCAL)
    assert info.value.reason == "connection"


async def test_session_must_be_guarded(server: ImageServer) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(TypeError):
            await fetch_dimensions(plain, server.url("/f/iojs_logo.png"), settings=LOCAL)
    async with make_session(Settings()) as other:
        with pytest.raises(ValueError):
            await fetch_dimensions(other, server.url("/f/iojs_logo.png"), settings=LOCAL)


async def test_session_defaults(server: ImageServer) -> None:
    async with make_session(LOCAL) as s:
        assert isinstance(s.cookie_jar, aiohttp.DummyCookieJar)
        assert s.headers["Accept-Encoding"] == "identity"
        assert isinstance(s.connector, GuardedConnector) and s.connector.limit > 0


def test_redact_url() -> None:
    url = "https://user:pw@cdn.example.com:8443/a/b.jpg?X-Amz-Signature=abc123&exp=99#frag"
    assert redact_url(url) == "https://cdn.example.com:8443/a/b.jpg?X-Amz-Signature=***&exp=***"
    assert redact_url("http://example.com/x.png") == "http://example.com/x.png"
