"""Latency of the dimension API and fetch throughput of one worker, measured in one run.

Prints:
* p50/p99 of ``GET /api/v1/dimensions`` answered from the cache and answered with
  the placeholder (target: < 5 ms p99 at the web view, i.e. the view's own
  ``Server-Timing``, for the sequential requests), sequential requests over one
  keep-alive connection, plus the same under 32 concurrent clients;
* header fetches per second of one worker against slow image servers (each
  response held ``SLOW_SECONDS``), i.e. how well fetches overlap.

    python bench/bench_dimension_latency.py

Needs a Kafka broker (``IMAGESTREAM_KAFKA_BOOTSTRAP``, default 127.0.0.1:9092 --
``scripts/kafka start``).  Starts its own worker (``tests.support.start_worker``,
fresh app id and data dir) unless ``IMAGESTREAM_BENCH_API_URL`` names a running
one; such a worker must allow-list 127.0.0.1 (``IMAGESTREAM_FETCH_ALLOWLIST``)
because the image servers run here on loopback.

Exits 1 when a target is missed (every figure is printed all the same).
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from bench.targets import Targets  # noqa: E402
from aiohttp import web  # noqa: E402
from PIL import Image  # noqa: E402

N_LATENCY = int(os.environ.get("BENCH_REQUESTS", "2000"))
N_FETCHES = int(os.environ.get("BENCH_FETCHES", "400"))
SLOW_SECONDS = float(os.environ.get("BENCH_SLOW_SECONDS", "0.2"))
SERVERS = 4  # aiohttp limits connections per (host, port): spread URLs over ports


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


class Images:
    """Image servers on loopback: /fast/* at once, /slow/* after SLOW_SECONDS,
    /held/* never (until shutdown).  Counts completed responses."""

    def __init__(self) -> None:
        self.body = png(800, 600)
        self.completed = 0
        self.last_done = 0.0
        self.bases: list[str] = []
        self.runners: list[web.AppRunner] = []
        self.stop = asyncio.Event()
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/slow/"):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(SLOW_SECONDS)
            finally:
                self.in_flight -= 1
        elif request.path.startswith("/held/"):
            await self.stop.wait()
        self.completed += 1
        self.last_done = time.perf_counter()
        return web.Response(body=self.body, content_type="image/png")

    async def start(self) -> None:
        for _ in range(SERVERS):
            app = web.Application()
            app.router.add_get("/{tail:.*}", self.handle)
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
            self.bases.append(f"http://127.0.0.1:{port}")
            self.runners.append(runner)

    async def close(self) -> None:
        self.stop.set()
        for runner in self.runners:
            await runner.cleanup()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def describe(name: str, samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return (f"{name:<42} n={len(ms):<5} p50={pct(ms, 0.50):6.2f} ms  p99={pct(ms, 0.99):6.2f} ms  "
            f"max={max(ms):7.2f} ms  mean={statistics.fmean(ms):6.2f} ms")


#: Server-side durations (the view's own ``Server-Timing``), per label.
SERVER: dict[str, list[float]] = {}


async def get(session: aiohttp.ClientSession, api: str, *, label: str | None = None,
              **params: str) -> dict[str, Any]:
    async with session.get(f"{api}/api/v1/dimensions", params=params) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {body}")
        if label is not None:
            timing = resp.headers.get("Server-Timing", "")
            if "dur=" in timing:
                SERVER.setdefault(label, []).append(float(timing.split("dur=", 1)[1]) / 1000)
        return body


async def timed(session: aiohttp.ClientSession, api: str, label: str, **params: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    body = await get(session, api, label=label, **params)
    return time.perf_counter() - started, body


#: p99 at the web view, in ms, for the labels it is stated for.
VIEW_P99_TARGET_MS = 5.0


def report(label: str, samples: list[float], targets: Targets | None = None) -> None:
    """Print the figures; with ``targets``, compare the in-view p99 with its target."""
    print(describe(f"{label} (client)", samples))
    if SERVER.get(label):
        print(describe(f"{label} (in the view)", SERVER[label]))
    if targets is not None:
        view_ms = [s * 1000 for s in SERVER.get(label, [])]
        if not view_ms:
            targets.unchecked(f"{label} p99 in the view", "no Server-Timing to compare")
        else:
            targets.below(f"{label} p99 in the view", pct(view_ms, 0.99), VIEW_P99_TARGET_MS, " ms")


async def wait_cached(session: aiohttp.ClientSession, api: str, timeout: float = 30, **params: str) -> None:
    deadline = time.monotonic() + timeout
    while (await get(session, api, **params))["source"] != "cache":
        if time.monotonic() > deadline:
            raise TimeoutError(f"not cached within {timeout}s: {params}")
        await asyncio.sleep(0.05)


async def run(api: str, targets: Targets) -> None:
    images = Images()
    await images.start()
    tag = uuid.uuid4().hex[:8]
    try:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            # --- cached answers ------------------------------------------------------
            key = {"session_id": f"bench-{tag}", "resource": "r", "scene": "1"}
            url = f"{images.bases[0]}/fast/cached.png"
            await get(session, api, **key, url=url)
            await wait_cached(session, api, **key, url=url)
            for _ in range(50):  # warm-up
                await get(session, api, **key, url=url)
            label = "cached, sequential"
            cached = [(await timed(session, api, label, **key, url=url))[0] for _ in range(N_LATENCY)]
            report(label, cached, targets)

            async def client(n: int, label: str, make: Any) -> list[float]:
                return [(await timed(session, api, label, **make(i)))[0] for i in range(n)]

            per = N_LATENCY // 32
            label = "cached, 32 clients"
            results = await asyncio.gather(*(client(per, label, lambda i: {**key, "url": url}) for _ in range(32)))
            report(label, [s for r in results for s in r])

            # --- placeholder answers (each enqueues a fetch job; fetches held) -------
            held = f"{images.bases[1]}/held/placeholder.png"
            samples: list[float] = []
            label = "placeholder, sequential"
            for i in range(N_LATENCY):
                elapsed, body = await timed(session, api, label, session_id=f"ph-{tag}-{i}", resource="r",
                                            scene="2", url=held)
                assert body["source"] == "placeholder", body
                samples.append(elapsed)
            report(label, samples, targets)
            label = "placeholder, 32 clients"
            results = await asyncio.gather(*(
                client(per, label, lambda i, c=c: {"session_id": f"phc-{tag}-{c}-{i}", "resource": "r",
                                                   "scene": "2", "url": held})
                for c in range(32)
            ))
            report(label, [s for r in results for s in r])

            # --- fetch throughput with slow servers ---------------------------------
            before = images.completed
            started = time.perf_counter()
            await asyncio.gather(*(
                get(session, api, session_id=f"f-{tag}-{i}", resource="r", scene="3",
                    url=f"{images.bases[i % SERVERS]}/slow/{tag}-{i}.png")
                for i in range(N_FETCHES)
            ))
            deadline = time.monotonic() + 120
            while images.completed - before < N_FETCHES:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {images.completed - before}/{N_FETCHES} fetches in 120 s")
                await asyncio.sleep(0.05)
            elapsed = images.last_done - started
            print(f"{'fetches, servers holding ' + format(SLOW_SECONDS, 'g') + ' s':<42} n={N_FETCHES:<5} "
                  f"{N_FETCHES / elapsed:7.1f} fetches/s  ({elapsed:.2f} s; "
                  f"serial would take {N_FETCHES * SLOW_SECONDS:.0f} s; "
                  f"{images.max_in_flight} at once at the servers)")
    finally:
        await images.close()


def main() -> int:
    api = os.environ.get("IMAGESTREAM_BENCH_API_URL")
    worker = None
    if not api:
        from tests.support import Emulator, start_worker

        bootstrap = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
        data_dir = Path(tempfile.mkdtemp(prefix="bench-dim-"))
        dummy = Emulator(base_url="http://127.0.0.1:9", api_url="http://127.0.0.1:9/api/v1", api_key="unused",
                         proc=None)  # type: ignore[arg-type]
        partitions = int(os.environ.get("BENCH_PARTITIONS", "4"))
        print(f"starting a worker ({partitions} partitions) against {bootstrap} ...", flush=True)
        worker = start_worker("bench-dimension-worker", kafka_bootstrap=bootstrap, emulator=dummy,
                              data_dir=data_dir, app_id=f"imagestream-bench-{uuid.uuid4().hex[:8]}",
                              partitions=partitions)
        api = worker.url
    targets = Targets()
    try:
        asyncio.run(run(api, targets))
    finally:
        if worker is not None:
            worker.proc.stop()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
