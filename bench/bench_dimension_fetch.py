"""Fetch throughput of one worker against ONE origin host: the curve and the targets.

A real worker process (``imagestream worker``, real Kafka broker) is asked for the
sizes of N new URLs, all on one origin host on 127.0.0.1 that answers each request
after a fixed latency (the usual case: an app's screenshots all in one bucket or
CDN host).  The requests go in as ``POST /api/v1/dimensions/batch`` calls of 256
items (placeholders at once, one background fetch per URL); the worker's whole
fetch path runs: fetch jobs on Kafka, the fetch agent, header-only GETs, the URL
table, the updates, the per-session table.

For each (fetch concurrency, per-host connections) worker and origin latency it
prints:
* fetches/s: N / time until the origin has answered all N;
* resolved/s: N / time until every item is answered ``source: cache`` (end to end);
* the most requests the origin had in flight, the TCP connections it saw;
* CPU per fetch: the worker's own CPU time, and this process's (origin + client);
and, at the default settings during the 1 s burst, the latency of cached answers in
the view (``Server-Timing``) and at the client.

Then the same against the fetch service alone, in a process of its own (no Kafka,
no tables): ``fetch_dimensions`` on the worker's session (``make_session``), host
policy and ``dimension_fetch_concurrency`` gate, N URLs at once: what the HTTP
fetch and the parser cost, and the ceiling the rest of the pipeline is measured
against.

Baseline, measured in the same run: the old fixed limits (32 fetches per worker,
8 per host).  Targets (exit 1 when missed), at the defaults: >= 300 fetches/s at
1 s latency, >= 1,000 fetches/s at 50 ms, cached answers < 5 ms p99 in the view.

    python bench/bench_dimension_fetch.py          # broker at IMAGESTREAM_KAFKA_BOOTSTRAP

Bounded: at most BENCH_MAX_URLS (3000) URLs per point, each point at most 120 s.
Everything (broker, worker, origin, this client) shares the machine's cores.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from PIL import Image  # noqa: E402

MAX_URLS = int(os.environ.get("BENCH_MAX_URLS", "3000"))
#: Seconds of ideal fetching each point asks for (N = ideal rate x this, bounded).
POINT_SECONDS = float(os.environ.get("BENCH_POINT_SECONDS", "5"))
LATENCIES = [float(x) for x in os.environ.get("BENCH_LATENCIES", "0.05,0.2,1.0").split(",")]
BATCH = 256
#: (label, fetch concurrency, per host); the last is the defaults (None: not set).
WORKERS: list[tuple[str, int | None, int | None]] = [
    ("old fixed limits 32/8", 32, 8),
    ("128/128", 128, 128),
    ("defaults", None, None),
]
if os.environ.get("BENCH_WORKERS"):  # e.g. "defaults" for a quick look
    WORKERS = [w for w in WORKERS if w[0].split()[0] in os.environ["BENCH_WORKERS"].split(",")]
TARGET_SLOW = 300.0  # fetches/s at 1 s
TARGET_FAST = 1000.0  # fetches/s at 50 ms
TARGET_CACHED_P99_MS = 5.0


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


class Origin:
    """One host (127.0.0.1:port) answering ``GET /img/*`` after ``latency`` seconds.

    A minimal HTTP/1.1 server on asyncio's protocol layer (keep-alive, fixed
    body): an object store or CDN costs its clients nothing but the wait, so the
    origin should cost the machine as little as it can while the worker is measured
    (aiohttp's own server spends ~0.5 ms of CPU per request)."""

    def __init__(self) -> None:
        self.body = png(1242, 2688)
        self.head = (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: "
                     + str(len(self.body)).encode() + b"\r\nConnection: keep-alive\r\n\r\n")
        self.latency = 0.0
        self.done: set[bytes] = set()
        self.last_done = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.peers: set[tuple[str, int]] = set()
        self.base = ""
        self.server: asyncio.base_events.Server | None = None

    def reset(self, latency: float) -> None:
        self.latency, self.done, self.max_in_flight, self.peers = latency, set(), 0, set()

    def _answer(self, transport: asyncio.Transport, path: bytes) -> None:
        self.in_flight -= 1
        self.done.add(path)
        self.last_done = time.perf_counter()
        if not transport.is_closing():
            transport.write(self.head + self.body)

    def protocol(self) -> asyncio.Protocol:
        origin = self

        class Http(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport  # type: ignore[assignment]
                self.buffer = b""
                peer = transport.get_extra_info("peername")
                if peer:
                    origin.peers.add(tuple(peer[:2]))

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while b"\r\n\r\n" in self.buffer:  # GETs have no body
                    request, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                    path = request.split(b" ", 2)[1]
                    origin.in_flight += 1
                    origin.max_in_flight = max(origin.max_in_flight, origin.in_flight)
                    asyncio.get_running_loop().call_later(origin.latency, origin._answer, self.transport, path)

        return Http()

    async def start(self) -> None:
        self.server = await asyncio.get_running_loop().create_server(self.protocol, "127.0.0.1", 0, backlog=4096)
        self.base = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Point:
    label: str
    latency: float
    urls: int
    fetch_rate: float
    resolved_rate: float
    max_in_flight: int
    connections: int
    worker_cpu_ms: float
    bench_cpu_ms: float


async def post_batch(session: aiohttp.ClientSession, api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with session.post(f"{api}/api/v1/dimensions/batch", json=body) as resp:
        doc = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"batch: HTTP {resp.status}: {doc}")
        return list(doc["items"])


async def measure(api: str, pid: int, origin: Origin, label: str, latency: float, ideal: float,
                  probe: Any = None) -> Point:
    n = max(100, min(MAX_URLS, int(ideal * POINT_SECONDS)))
    tag = uuid.uuid4().hex[:8]
    origin.reset(latency)
    urls = [f"{origin.base}/img/{tag}-{i}.png" for i in range(n)]
    batches = [{"session_id": f"bench-{tag}-{b}", "scene": "chat",
                "items": [{"resource": f"r{i}", "url": url} for i, url in enumerate(urls[b:b + BATCH])]}
               for b in range(0, n, BATCH)]
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:
        side = None
        if probe is not None:  # its key cached before the burst, then asked all along
            ready = asyncio.Event()
            side = asyncio.ensure_future(probe(ready))
            await asyncio.wait_for(ready.wait(), 60)
        worker_cpu, bench_cpu = cpu_seconds(pid), own_cpu()
        started = time.perf_counter()
        first = await asyncio.gather(*(post_batch(session, api, b) for b in batches))
        assert all(item["source"] == "placeholder" for part in first for item in part)
        deadline = time.monotonic() + 120
        while len(origin.done) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label} @ {latency:g}s: origin answered {len(origin.done)}/{n} in 120 s")
            await asyncio.sleep(0.02)
        fetched = origin.last_done - started
        pending = list(batches)
        while pending:  # polled gently: the polls are load on the worker too
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label} @ {latency:g}s: not every item cached within 120 s")
            answers = await asyncio.gather(*(post_batch(session, api, b) for b in pending[:1]))
            if all(i["source"] == "cache" for i in answers[0]):
                pending = pending[1:]
            else:
                await asyncio.sleep(0.25)
        resolved = time.perf_counter() - started
        if side is not None:
            side.cancel()
        worker_cpu, bench_cpu = cpu_seconds(pid) - worker_cpu, own_cpu() - bench_cpu
    return Point(label, latency, n, n / fetched, n / resolved, origin.max_in_flight, len(origin.peers),
                 worker_cpu / n * 1000, bench_cpu / n * 1000)


async def cached_latencies(api: str, origin: Origin, view: list[float], client: list[float],
                           ready: asyncio.Event) -> None:
    """Sequential GETs of one cached key, for as long as it runs (cancelled)."""
    key = {"session_id": f"cached-{uuid.uuid4().hex[:6]}", "resource": "r", "scene": "chat",
           "url": f"{origin.base}/img/cached-{uuid.uuid4().hex[:6]}.png"}
    async with aiohttp.ClientSession() as session:
        async def get() -> dict[str, Any]:
            started = time.perf_counter()
            async with session.get(f"{api}/api/v1/dimensions", params=key) as resp:
                body = await resp.json()
                timing = resp.headers.get("Server-Timing", "")
            if body["source"] == "cache":
                client.append((time.perf_counter() - started) * 1000)
                view.append(float(timing.split("dur=", 1)[1]))
            return body

        while (await get())["source"] != "cache":
            await asyncio.sleep(0.05)
        view.clear(), client.clear()
        ready.set()
        while True:
            await get()


async def fetch_service(base: str, n: int, concurrency: int, per_host: int) -> dict[str, float]:
    """In this process: n fetches of one host through the worker's fetch service."""
    from config.settings import Settings
    from streams.dimensions.fetch import fetch_dimensions, make_session
    from streams.dimensions.hosts import HostPolicy

    settings = Settings(fetch_allowlist=(__import__("ipaddress").ip_network("127.0.0.1/32"),),
                        dimension_fetch_concurrency=concurrency, dimension_per_host=per_host)
    policy = HostPolicy()
    gate = asyncio.Semaphore(concurrency)
    tag = uuid.uuid4().hex[:8]
    async with make_session(settings) as session:
        async def one(i: int) -> None:
            async with gate:
                await fetch_dimensions(session, f"{base}/img/svc-{tag}-{i}.png", settings=settings, policy=policy)

        cpu, started = own_cpu(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return {"elapsed": time.perf_counter() - started, "cpu": own_cpu() - cpu}


async def measure_service(origin: Origin, latency: float, concurrency: int, per_host: int) -> Point:
    n = max(100, min(MAX_URLS, int(min(concurrency, per_host) / latency * POINT_SECONDS)))
    origin.reset(latency)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--fetch-service", origin.base, str(n), str(concurrency), str(per_host),
        stdout=asyncio.subprocess.PIPE, cwd=REPO)
    out, _ = await asyncio.wait_for(proc.communicate(), 150)
    doc = json.loads(out.decode().strip().splitlines()[-1])
    rate = n / doc["elapsed"]
    return Point(f"fetch service ({concurrency}/{per_host})", latency, n, rate, rate, origin.max_in_flight,
                 len(origin.peers), doc["cpu"] / n * 1000, 0.0)


def start(label: str, concurrency: int | None, per_host: int | None) -> Any:
    from tests.support import Emulator, start_worker

    env: dict[str, str] = {}
    if concurrency is not None:
        env["IMAGESTREAM_DIMENSION_FETCH_CONCURRENCY"] = str(concurrency)
    if per_host is not None:
        env["IMAGESTREAM_DIMENSION_PER_HOST"] = str(per_host)
    bootstrap = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    dummy = Emulator(base_url="http://127.0.0.1:9", api_url="http://127.0.0.1:9/api/v1", api_key="unused",
                     proc=None)  # type: ignore[arg-type]
    print(f"starting a worker ({label}) against {bootstrap} ...", flush=True)
    return start_worker(f"bench-fetch-{label.split()[0].replace('/', '-')}", kafka_bootstrap=bootstrap, emulator=dummy,
                        data_dir=Path(tempfile.mkdtemp(prefix="bench-fetch-")),
                        app_id=f"imagestream-benchfetch-{uuid.uuid4().hex[:8]}", partitions=4, extra_env=env)


async def run() -> int:
    from config.settings import Settings

    defaults = Settings()
    origin = Origin()
    await origin.start()
    points: list[Point] = []
    view: list[float] = []
    client: list[float] = []
    try:
        for label, concurrency, per_host in WORKERS:
            c = concurrency or defaults.dimension_fetch_concurrency
            h = per_host or defaults.dimension_per_host
            worker = await asyncio.to_thread(start, label, concurrency, per_host)
            try:
                for latency in LATENCIES:
                    probe = None
                    if concurrency is None and latency == max(LATENCIES):
                        probe = lambda ready: cached_latencies(worker.url, origin, view, client, ready)  # noqa: E731
                    point = await measure(worker.url, worker.proc.popen.pid, origin, f"{label} ({c}/{h})",
                                          latency, min(c, h) / latency, probe)
                    points.append(point)
                    print(f"  {point.label:<34} latency {latency * 1000:6.0f} ms  n={point.urls:<5} "
                          f"{point.fetch_rate:7.1f} fetches/s  {point.resolved_rate:7.1f} resolved/s  "
                          f"max in flight {point.max_in_flight:<4} new connections {point.connections:<5} "
                          f"CPU/fetch worker {point.worker_cpu_ms:.2f} ms, origin+client {point.bench_cpu_ms:.2f} ms",
                          flush=True)
            finally:
                await asyncio.to_thread(worker.proc.stop)
        c, h = defaults.dimension_fetch_concurrency, defaults.dimension_per_host
        for latency in LATENCIES:
            point = await measure_service(origin, latency, c, h)
            points.append(point)
            print(f"  {point.label:<34} latency {latency * 1000:6.0f} ms  n={point.urls:<5} "
                  f"{point.fetch_rate:7.1f} fetches/s  max in flight {point.max_in_flight:<4} new connections "
                  f"{point.connections:<5} CPU/fetch (fetch + parse) {point.worker_cpu_ms:.2f} ms", flush=True)
    finally:
        await origin.close()

    print("\ncurve: fetches/s (resolved/s) by worker limits x origin latency — one origin host")
    print(f"{'limits':<34}" + "".join(f"{f'{lat * 1000:g} ms':>22}" for lat in LATENCIES))
    for label in dict.fromkeys(p.label for p in points):
        row = {p.latency: p for p in points if p.label == label}
        print(f"{label:<34}" + "".join(f"{f'{row[lat].fetch_rate:.0f} ({row[lat].resolved_rate:.0f})':>22}"
                                       for lat in LATENCIES if lat in row))
    service = {p.latency: p for p in points if p.label.startswith("fetch service")}
    default = {p.latency: p for p in points if p.label.startswith("defaults")}
    for lat in LATENCIES:
        if lat in default and lat in service:
            print(f"whole worker vs fetch service alone at {lat * 1000:g} ms: "
                  f"{default[lat].fetch_rate / service[lat].fetch_rate:.2f}x "
                  f"(CPU per fetch {default[lat].worker_cpu_ms:.2f} vs {service[lat].worker_cpu_ms:.2f} ms)")
    old = {p.latency: p for p in points if p.label.startswith("old")}
    for lat in LATENCIES:
        if lat in default and lat in old:
            print(f"defaults vs old limits at {lat * 1000:g} ms: {default[lat].fetch_rate / old[lat].fetch_rate:.1f}x")
    p99_view, p99_client = pct(view, 0.99), pct(client, 0.99)
    print(f"cached answers during the {max(LATENCIES):g} s burst: n={len(view)} view p50 {pct(view, 0.5):.2f} ms "
          f"p99 {p99_view:.2f} ms; client p50 {pct(client, 0.5):.2f} ms p99 {p99_client:.2f} ms")
    print("(broker, worker, origin and this client share the machine's cores)")

    missed = []
    slow, fast = default.get(1.0), default.get(0.05)
    if slow is None or slow.fetch_rate < TARGET_SLOW:
        missed.append(f">= {TARGET_SLOW:g} fetches/s at 1 s")
    if fast is None or fast.fetch_rate < TARGET_FAST:
        missed.append(f">= {TARGET_FAST:g} fetches/s at 50 ms")
    if not view or p99_view >= TARGET_CACHED_P99_MS:
        missed.append(f"cached p99 < {TARGET_CACHED_P99_MS:g} ms in the view")
    print("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--fetch-service":
        base, n, c, h = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(asyncio.run(fetch_service(base, n, c, h))))
        sys.exit(0)
    sys.exit(asyncio.run(run()))
