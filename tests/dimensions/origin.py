"""A real HTTP origin on 127.0.0.1 for the dimension tests: honours If-None-Match /
If-Modified-Since and Range (with If-Range), can answer a fixed error status, and
logs every request (headers, status, body bytes sent) so tests count what reached it."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from aiohttp import web

from config.settings import Settings

#: Fetch settings that let the fetchers reach the local test servers.
LOCAL = Settings(fetch_allowlist=(ipaddress.ip_network("127.0.0.1/32"),), dimension_timeout=5.0)
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
PIECE = 64 * 1024


@dataclass
class Seen:
    """One request as the origin saw it."""

    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Resource:
    body: bytes
    etag: str | None = '"v1"'
    last_modified: str | None = LAST_MODIFIED
    conditional: bool = True  # False: the server ignores If-None-Match / If-Modified-Since
    status: int = 200  # anything else: that status, no body, no validators
    retry_after: str | None = None  # sent with an error status


class ConditionalServer:
    """``/r/{name}``: 304 when a condition holds, else the body (Range honoured with If-Range)."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.log: list[Seen] = []
        self.base = ""
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"{self.base}/r/{name}"

    def seen(self, name: str) -> list[Seen]:
        return [s for s in self.log if s.path == f"/r/{name}"]

    def count(self, name: str) -> int:
        """Requests for ``/r/{name}`` that reached the origin."""
        return len(self.seen(name))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/r/{name}", self.resource)
        app.router.add_get("/hop/{name}", self.hop)
        app.router.add_get("/always-304", self.always_304)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def always_304(self, request: web.Request) -> web.Response:
        return web.Response(status=304)

    async def hop(self, request: web.Request) -> web.Response:
        self.log.append(Seen(request.path, dict(request.headers), status=302))
        raise web.HTTPFound(f"/r/{request.match_info['name']}")

    def _not_modified(self, res: Resource, request: web.Request) -> bool:
        if not res.conditional:
            return False
        inm = request.headers.get("If-None-Match")
        if inm is not None:  # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
            return res.etag is not None and res.etag.removeprefix("W/") in {
                tag.strip().removeprefix("W/") for tag in inm.split(",")}
        ims = request.headers.get("If-Modified-Since")
        return ims is not None and res.last_modified is not None and ims == res.last_modified

    async def resource(self, request: web.Request) -> web.StreamResponse:
        res = self.resources[request.match_info["name"]]
        seen = Seen(request.path, dict(request.headers))
        self.log.append(seen)
        if res.status != 200:
            seen.status = res.status
            seen.done.set()
            headers = {"Retry-After": res.retry_after} if res.retry_after else None
            return web.Response(status=res.status, text="nope", headers=headers)
        validators = {k: v for k, v in (("ETag", res.etag), ("Last-Modified", res.last_modified)) if v}
        if self._not_modified(res, request):
            seen.status = 304
            seen.done.set()
            return web.Response(status=304, headers=validators)
        data, status = res.body, 200
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **validators}
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        if match and (if_range is None or if_range in (res.etag, res.last_modified)):
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start:end + 1], 206
        seen.status = status
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        try:
            await response.prepare(request)
            for i in range(0, len(data), PIECE):
                await response.write(data[i:i + PIECE])
                seen.sent += len(data[i:i + PIECE])
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            seen.done.set()
        return response
