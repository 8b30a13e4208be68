"""Per-host headers and caps (IMAGESTREAM_DIMENSION_HEADERS_FILE) and connection reuse,
against a real origin on 127.0.0.1 that records what it was sent."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image

from config.settings import SettingsError
from streams.dimensions.fetch import fetch_dimensions, make_session
from streams.dimensions.hosts import DEFAULT_HEADERS, HostPolicy, load_policy, parse_policy
from tests.dimensions.origin import LOCAL
from tests.support import serve_app


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "blue").save(out, "PNG")
    return out.getvalue()


# --------------------------------------------------------------------- the file
def test_patterns_most_specific_wins_and_headers_overlay_the_default(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(
        '[default]\nheaders = { "user-agent" = "Mozilla/5.0 (compatible; ours/2)" }\n'
        '[hosts."*.example.com"]\nheaders = { Referer = "https://www.example.com/" }\nconcurrency = 8\n'
        '[hosts."*.img.example.com"]\nheaders = { Referer = "https://img.example.com/" }\n'
        '[hosts."a.img.example.com"]\nheaders = { "X-Key" = "secret" }\nconcurrency = 2\n'
    )
    policy = load_policy(path)
    other = policy.headers_for("other.net")
    assert other["user-agent"] == "Mozilla/5.0 (compatible; ours/2)" and "User-Agent" not in other
    assert "Referer" not in other and policy.gate("other.net") is None
    assert policy.headers_for("cdn.example.com")["Referer"] == "https://www.example.com/"
    assert policy.headers_for("b.img.example.com")["Referer"] == "https://img.example.com/"
    exact = policy.headers_for("A.IMG.example.com.")
    assert exact["X-Key"] == "secret" and "Referer" not in exact
    assert policy.rule_for("example.com") is None  # *.domain: subdomains only
    gate = policy.gate("a.img.example.com")
    assert gate is not None and gate._value == 2  # noqa: SLF001
    assert policy.gate("x.example.com") is policy.gate("y.example.com")  # one origin, one cap
    assert policy.gate("b.img.example.com") is None  # its rule sets no cap
    assert "secret" not in repr(policy)


def test_no_file_means_a_sane_default_user_agent() -> None:
    policy = load_policy(None)
    assert policy.headers_for("any.host")["User-Agent"].startswith("Mozilla/5.0 (compatible; imagestream")
    assert policy.headers_for("any.host") == dict(DEFAULT_HEADERS)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[hosts.\"a.com\"]\nconcurrency = 0\n", "concurrency"),
        ("[hosts.\"a.com\"]\nconcurrency = true\n", "concurrency"),
        ("[hosts.\"a.com\"]\nheaders = { Range = \"bytes=0-\" }\n", "set by the fetcher"),
        ("[hosts.\"a.com\"]\nheaders = { \"Bad Name\" = \"x\" }\n", "tokens"),
        ("[hosts.\"a.com\"]\nheaders = { X = 3 }\n", "tokens"),
        ("[hosts.\"a.com\"]\nheaders = { X = \"a\\r\\nInjected: 1\" }\n", "line break"),
        ("[hosts.\"http://a.com/\"]\n", "host name"),
        ("[hosts.\"a.com\"]\nspeed = 3\n", "takes headers and concurrency"),
        ("[other]\n", "unknown tables"),
        ("not toml at all [", "not TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_entry(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_policy(path)
    assert needle in str(info.value)


def test_a_missing_file_is_refused() -> None:
    with pytest.raises(SettingsError, match="IMAGESTREAM_DIMENSION_HEADERS_FILE"):
        load_policy(Path("/nonexistent/hosts.toml"))


# ------------------------------------------------------------------- on the wire
class Recorder:
    """An origin that needs a Referer (hotlink protection, as some image hosts do),
    answers after ``delay`` seconds, and counts connections and concurrent requests."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.body = png(31, 17)
        self.headers: list[dict[str, str]] = []
        self.peers: set[tuple[str, int]] = set()
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add(tuple(peer[:2]))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if request.headers.get("Referer") != "https://app.example/":
            return web.Response(status=403, text="hotlinking refused")
        return web.Response(body=self.body, content_type="image/png")


async def test_headers_from_the_policy_reach_the_origin_and_reuse_one_connection() -> None:
    rec = Recorder()
    app = web.Application()
    app.router.add_get("/{name}", rec.handle)
    async with serve_app(app) as port, make_session(LOCAL) as session:
        url = f"http://127.0.0.1:{port}/a.png"
        from streams.errors import FetchError

        with pytest.raises(FetchError) as info:  # the default headers: refused
            await fetch_dimensions(session, url, settings=LOCAL)
        assert "403" in info.value.message
        policy = parse_policy({"hosts": {"127.0.0.1": {"headers": {"Referer": "https://app.example/"}}}})
        for i in range(20):
            outcome = await fetch_dimensions(session, f"http://127.0.0.1:{port}/{i}.png", settings=LOCAL,
                                             policy=policy)
            assert (outcome.width, outcome.height) == (31, 17)
    assert rec.headers[0]["User-Agent"] == DEFAULT_HEADERS["User-Agent"]
    assert all(h["Referer"] == "https://app.example/" for h in rec.headers[1:])
    assert all(h["Accept-Encoding"] == "identity" for h in rec.headers)
    # 21 sequential fetches (a 403 included) over one kept-alive connection.
    assert len(rec.peers) == 1, rec.peers


async def test_a_capped_host_never_sees_more_than_its_cap() -> None:
    """The cap is applied by whoever runs fetches concurrently (the fetch agent does
    it the same way: the host's gate, then the worker's)."""
    rec = Recorder(delay=0.05)
    app = web.Application()
    app.router.add_get("/{name}", rec.handle)
    policy: HostPolicy = parse_policy(
        {"hosts": {"127.0.0.1": {"headers": {"Referer": "https://app.example/"}, "concurrency": 3}}})
    async with serve_app(app) as port, make_session(LOCAL) as session:
        async def one(i: int) -> tuple[int, int]:
            gate = policy.gate("127.0.0.1")
            assert gate is not None
            async with gate:
                out = await fetch_dimensions(session, f"http://127.0.0.1:{port}/{i}.png", settings=LOCAL,
                                             policy=policy)
            return out.width, out.height

        sizes = await asyncio.gather(*(one(i) for i in range(24)))
    assert set(sizes) == {(31, 17)}
    assert rec.max_in_flight == 3
    assert len(rec.peers) <= 3  # connections reused, never more than the cap


async def test_one_host_gets_hundreds_of_concurrent_fetches_by_default() -> None:
    """The old limits (8 per host, 64 in all) serialised a burst on one origin."""
    rec = Recorder(delay=0.5)
    app = web.Application()
    app.router.add_get("/{name}", rec.handle)
    policy = parse_policy({"hosts": {"127.0.0.1": {"headers": {"Referer": "https://app.example/"}}}})
    async with serve_app(app) as port, make_session(LOCAL) as session:
        results = await asyncio.gather(*(
            fetch_dimensions(session, f"http://127.0.0.1:{port}/{i}.png", settings=LOCAL, policy=policy)
            for i in range(300)))
    assert len(results) == 300
    # connection set-up on a shared 2-core machine spreads the burst a little
    assert rec.max_in_flight > 128, rec.max_in_flight
