#!/usr/bin/env python3
"""Scaling benchmark: makespan over partitions and workers, and the requests/second cap.

Needs a Kafka broker (``scripts/kafka start``; or set IMAGESTREAM_KAFKA_BOOTSTRAP).
Starts one DashScope emulator (seeded lognormal latency, reseeded before every run)
and, per configuration, fresh workers on a fresh app id / topic prefix (so each
configuration has its own partition count and an empty cache), all workers of a
configuration sharing one blob folder (``IMAGESTREAM_BLOB_URL=file://…``).

1. Makespan of N distinct images (default 60: one task of 50 + one of 10, all cache
   misses) for 1, 2, 4, 8 partitions on one worker and 2, 4, 8 partitions on two
   workers.  Per run: measured makespan (first submit → last task terminal, polled on
   ``GET /api/v1/image-edit/task/{id}``), the emulator's max in flight (asserted
   ≤ window × partitions), Σlatency of the calls, the ideal Σlatency / (window ×
   partitions), a zero-overhead simulation with the real job → partition spread (each
   partition a sliding window; calls take the emulator's latencies in draw order) and
   the ratios measured / ideal and measured / simulation.
2. Rate cap: one worker on 8 partitions against an emulated account limit
   (``account_rps``, 429 above it), once with ``IMAGESTREAM_UPSTREAM_RPS`` set and once
   without: successful calls per second over the busy period, the emulator's 429s and
   the images that failed.

    python bench/bench_scaling.py [--images 60] [--median 1.0] [--sigma 0.5] [--seed 7]
                                  [--one 1,2,4,8] [--two 2,4,8] [--rps 2] [--account-rps 2.5]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka.partitioner import murmur2
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import Emulator, Worker, start_emulator, start_worker  # noqa: E402 - after the path tweak

TERMINAL = {"completed", "partial", "failed"}
MAX_IMAGES_PER_TASK = 50


# --- inputs --------------------------------------------------------------------------------
def make_png(seed: int) -> bytes:
    """A small PNG with pixels of its own (distinct pixels: distinct cache keys)."""
    img = Image.new("RGB", (160, 120), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    draw = ImageDraw.Draw(img)
    draw.ellipse((10 + seed % 50, 12, 110, 80 + seed % 30), fill=(250, 200 - seed % 150, 30))
    for i, byte in enumerate(seed.to_bytes(8, "big")):  # the seed itself, in pixels
        img.putpixel((i, 0), (byte, 255 - byte, byte ^ 0x5A))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def task_sizes(images: int) -> list[int]:
    """60 → [50, 10]: tasks of at most 50 images."""
    sizes = []
    while images > 0:
        sizes.append(min(MAX_IMAGES_PER_TASK, images))
        images -= sizes[-1]
    return sizes


def partition_for(cache_key: str, partitions: int) -> int:
    """The partition of ``image-edit-jobs`` a job lands on (as ``streams.publish.partition_for``)."""
    return (murmur2(json.dumps(cache_key).encode()) & 0x7FFFFFFF) % partitions


# --- models ----------------------------------------------------------------------------------
def sliding_window_makespan(latencies: list[float], width: int) -> float:
    """Makespan of one perfect sliding window: each call starts the moment a slot frees."""
    slots = [0.0] * width
    for latency in latencies:
        heapq.heappush(slots, heapq.heappop(slots) + latency)
    return max(slots)


def simulate_partitions(jobs_per_partition: list[int], latencies: list[float], width: int) -> float:
    """Zero-overhead makespan: every partition a sliding window of ``width`` over its own
    jobs, all starting at 0; each call takes the next latency in draw order (the
    emulator draws a call's latency when the call arrives)."""
    draws = iter(latencies)
    mean = statistics.fmean(latencies) if latencies else 0.0
    events: list[tuple[float, int]] = []  # (finish time, partition)
    left = list(jobs_per_partition)
    for part in range(len(left)):
        for _ in range(min(width, left[part])):
            left[part] -= 1
            heapq.heappush(events, (next(draws, mean), part))
    end = 0.0
    while events:
        now, part = heapq.heappop(events)
        end = now
        if left[part]:
            left[part] -= 1
            heapq.heappush(events, (now + next(draws, mean), part))
    return end


# --- HTTP --------------------------------------------------------------------------------
async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, None


async def post_json(session: aiohttp.ClientSession, url: str, body: Any = None) -> Any:
    async with session.post(url, json=body) as resp:
        doc = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"POST {url}: {resp.status} {doc}")
        return doc


async def submit(session: aiohttp.ClientSession, api: str, files: list[tuple[str, bytes]]) -> str:
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("images", data, filename=name, content_type="image/png")
    form.add_field("edit_type", "enhance")
    form.add_field("edit_params", json.dumps({"prompt": "提升画质，增强细节"}))
    async with session.post(f"{api}/api/v1/image-edit/submit", data=form) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 202:
            raise RuntimeError(f"submit: {resp.status} {body}")
        return str(body["task_id"])


async def wait_done(session: aiohttp.ClientSession, api: str, task_id: str, timeout: float) -> tuple[float, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, doc = await get_json(session, f"{api}/api/v1/image-edit/task/{task_id}")
        if status == 200 and doc["status"] in TERMINAL:
            return time.monotonic(), doc
        await asyncio.sleep(0.02)
    raise TimeoutError(f"task {task_id} not finished after {timeout}s")


class Sampler:
    """Polls the emulator's counters: successful calls over time, for the busy period."""

    def __init__(self, session: aiohttp.ClientSession, emulator: Emulator, interval: float = 0.1) -> None:
        self.session, self.emulator, self.interval = session, emulator, interval
        self.samples: list[tuple[float, int, int]] = []  # (t, requests, 200s)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            _, doc = await get_json(self.session, f"{self.emulator.base_url}/_emulator/stats")
            self.samples.append((time.monotonic(), doc["total_requests"], doc["by_status"].get("200", 0)))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    def busy_rate(self) -> tuple[float, float, float]:
        """(busy seconds, successful calls/s over them, peak calls/s in any 5 s window)."""
        first = next((t for t, req, _ in self.samples if req > 0), None)
        final = self.samples[-1][2] if self.samples else 0
        last = next((t for t, _, ok in self.samples if ok >= final), None)
        if first is None or last is None or last <= first:
            return 0.0, 0.0, 0.0
        busy = last - first
        peak = 0.0
        for i, (t0, _, ok0) in enumerate(self.samples):
            for t1, _, ok1 in self.samples[i:]:
                if t1 - t0 >= 5.0:
                    peak = max(peak, (ok1 - ok0) / (t1 - t0))
                    break
        return busy, final / busy, peak


# --- one configuration -----------------------------------------------------------------------
@dataclass
class Case:
    label: str
    workers: int
    partitions: int
    rps: float | None = None  # IMAGESTREAM_UPSTREAM_RPS
    account_rps: float | None = None  # the emulator's account limit


@dataclass
class Outcome:
    case: Case
    makespan: float
    submit_s: float
    stats: dict[str, Any]
    latencies: list[float]
    results: list[dict[str, Any]]
    per_worker_calls: list[float]
    busy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spread: list[int] = field(default_factory=list)


async def wait_settled(session: aiohttp.ClientSession, workers: list[Worker], timeout: float = 120) -> None:
    """Every worker ready, none rebalancing, for 1 s in a row."""
    deadline = time.monotonic() + timeout
    good_since: float | None = None
    while time.monotonic() < deadline:
        docs = [await get_json(session, f"{w.url}/healthz") for w in workers]
        ok = all(s == 200 and d and not d.get("rebalancing") and d.get("assigned_partitions", 0) > 0 for s, d in docs)
        now = time.monotonic()
        if ok:
            good_since = good_since or now
            if now - good_since >= 1.0:
                return
        else:
            good_since = None
        await asyncio.sleep(0.2)
    raise TimeoutError(f"workers did not settle: {docs}")


async def run_case(case: Case, args: argparse.Namespace, emulator: Emulator, bootstrap: str,
                   images: list[tuple[str, bytes]]) -> Outcome:
    app_id = f"bench-scale-{uuid.uuid4().hex[:8]}"
    workers: list[Worker] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        env = {
            "IMAGESTREAM_BLOB_URL": f"file://{Path(tmp) / 'shared-blobs'}",
            "IMAGESTREAM_UPSTREAM_CONCURRENCY": str(args.window),
        }
        if case.rps:
            env["IMAGESTREAM_UPSTREAM_RPS"] = str(case.rps)
        try:
            for n in range(case.workers):
                data_dir = Path(tmp) / f"worker-{n}"
                data_dir.mkdir()
                workers.append(await asyncio.to_thread(
                    start_worker, f"bench-scaling-{n}", kafka_bootstrap=bootstrap, emulator=emulator,
                    data_dir=data_dir, app_id=app_id, partitions=case.partitions, extra_env=env))
            timeout = aiohttp.ClientTimeout(total=60)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                await wait_settled(session, workers)
                await post_json(session, f"{emulator.base_url}/_emulator/config",
                                {"seed": args.seed, "account_rps": case.account_rps})
                await post_json(session, f"{emulator.base_url}/_emulator/reset")
                chunks, at = [], 0
                for size in task_sizes(len(images)):
                    chunks.append(images[at:at + size])
                    at += size
                sampler = Sampler(session, emulator)
                sampler.start()
                t0 = time.monotonic()
                # Tasks alternate between the workers' HTTP APIs (either plans or forwards).
                apis = [workers[i % len(workers)].url for i in range(len(chunks))]
                ids = await asyncio.gather(*(submit(session, api, files) for api, files in zip(apis, chunks)))
                submit_s = time.monotonic() - t0
                done = await asyncio.gather(*(wait_done(session, api, tid, args.timeout)
                                              for api, tid in zip(apis, ids)))
                makespan = max(t for t, _ in done) - t0
                await asyncio.sleep(0.3)  # one more sample after the last call
                await sampler.stop()
                _, stats = await get_json(session, f"{emulator.base_url}/_emulator/stats")
                _, lat = await get_json(session, f"{emulator.base_url}/_emulator/latencies")
                calls = []
                for w in workers:
                    _, ws = await get_json(session, f"{w.url}/api/v1/stats")
                    calls.append(float((ws or {}).get("upstream", {}).get("calls") or 0))
        finally:
            for w in workers:
                await asyncio.to_thread(w.proc.stop, 20)
    results = [r for _, doc in done for r in doc["results"]]
    spread = Counter(partition_for(r["cache_key"], case.partitions) for r in results if r.get("cache_key"))
    return Outcome(case=case, makespan=makespan, submit_s=submit_s, stats=stats, latencies=list(lat["latencies_s"]),
                   results=results, per_worker_calls=calls, busy=sampler.busy_rate(),
                   spread=[spread.get(p, 0) for p in range(case.partitions)])


# --- report --------------------------------------------------------------------------------
def scaling_table(outcomes: list[Outcome], window: int) -> tuple[list[str], bool]:
    head = (f"{'workers':>7} {'parts':>5} {'measured':>8} {'ideal':>6} {'sim':>6} {'meas/ideal':>10} "
            f"{'meas/sim':>8} {'Σlat':>6} {'calls':>5} {'miss':>4} {'max_infl':>8} {'≤cap':>5}  "
            f"jobs per partition / calls per worker")
    lines, ok = [head, "-" * len(head)], True
    for o in outcomes:
        p = o.case.partitions
        total = sum(o.latencies)
        ideal = total / (window * p)
        sim = simulate_partitions(o.spread, o.latencies, window)
        cap = window * p
        within = o.stats["max_in_flight"] <= cap
        ok &= within
        misses = sum(1 for r in o.results if r.get("cache_status") == "MISS")
        spread = "/".join(str(n) for n in o.spread)
        per_worker = " | " + "/".join(f"{c:g}" for c in o.per_worker_calls) if o.case.workers > 1 else ""
        lines.append(f"{o.case.workers:>7} {p:>5} {o.makespan:>7.2f}s {ideal:>5.2f}s {sim:>5.2f}s "
                     f"{o.makespan / ideal:>10.2f} {o.makespan / sim:>8.2f} {total:>5.1f}s "
                     f"{o.stats['total_requests']:>5} {misses:>4} {o.stats['max_in_flight']:>4}/{cap:<3} "
                     f"{'yes' if within else 'NO':>5}  {spread}{per_worker}")
    return lines, ok


def rate_table(outcomes: list[Outcome], window: int) -> tuple[list[str], bool]:
    head = (f"{'worker cap':>10} {'account':>7} {'parts':>5} {'makespan':>8} {'busy':>6} {'req/s':>5} {'ok/s':>5} "
            f"{'peak5s/s':>8} {'calls':>5} {'200':>4} {'429':>4} {'done':>4} {'failed':>6} {'max_infl':>8}")
    lines, ok = [head, "-" * len(head)], True
    for o in outcomes:
        busy, rate, peak = o.busy
        by_status = o.stats.get("by_status", {})
        done = sum(1 for r in o.results if r.get("status") == "completed")
        failed = len(o.results) - done
        cap = f"{o.case.rps:g} rps" if o.case.rps else "none"
        lines.append(f"{cap:>10} {o.case.account_rps or 0:>7g} {o.case.partitions:>5} {o.makespan:>7.2f}s "
                     f"{busy:>5.1f}s {o.stats['total_requests'] / busy if busy else 0:>5.2f} {rate:>5.2f} "
                     f"{peak:>8.2f} {o.stats['total_requests']:>5} "
                     f"{by_status.get('200', 0):>4} {by_status.get('429', 0):>4} {done:>4} {failed:>6} "
                     f"{o.stats['max_in_flight']:>4}/{window * o.case.partitions:<3}")
        if o.case.rps:
            ok &= o.stats["max_in_flight"] <= window * o.case.partitions
    return lines, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60, help="distinct images per run (tasks of ≤ 50)")
    parser.add_argument("--median", type=float, default=1.0, help="lognormal latency median (s)")
    parser.add_argument("--sigma", type=float, default=0.5, help="lognormal latency sigma")
    parser.add_argument("--seed", type=int, default=7, help="emulator seed, reset before every run")
    parser.add_argument("--window", type=int, default=3, help="IMAGESTREAM_UPSTREAM_CONCURRENCY")
    parser.add_argument("--one", default="1,2,4,8", help="partition counts on one worker ('' = none)")
    parser.add_argument("--two", default="2,4,8", help="partition counts on two workers ('' = none)")
    parser.add_argument("--rps", type=float, default=2.0, help="IMAGESTREAM_UPSTREAM_RPS of the rate run")
    parser.add_argument("--account-rps", type=float, default=2.5, help="emulated account limit of the rate runs")
    parser.add_argument("--rate-partitions", type=int, default=8)
    parser.add_argument("--rate-images", type=int, default=None, help="images of the rate runs (default --images)")
    parser.add_argument("--no-rate", action="store_true", help="skip the rate-cap runs")
    parser.add_argument("--no-uncapped", action="store_true", help="skip the rate run without the worker's cap")
    parser.add_argument("--salt", type=int, default=int(time.time()) % 1_000_000, help="varies the images")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per task")
    args = parser.parse_args()

    bootstrap = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    cases = [Case(f"1w/{p}p", 1, p) for p in ints(args.one)] + [Case(f"2w/{p}p", 2, p) for p in ints(args.two)]
    rate_cases = [] if args.no_rate else [Case("rps", 1, args.rate_partitions, rps=args.rps,
                                               account_rps=args.account_rps)]
    if not args.no_rate and not args.no_uncapped:
        rate_cases.append(Case("no-rps", 1, args.rate_partitions, rps=None, account_rps=args.account_rps))
    # The same distinct images in every run (fresh app id each time: no cache hits), so
    # one and two workers on the same partition count get the same job spread.
    images = [(f"s{i:03d}.png", make_png(args.salt * 1000 + i)) for i in range(args.images)]
    rate_images = [(f"r{i:03d}.png", make_png(args.salt * 1000 + 500 + i))
                   for i in range(args.rate_images or args.images)]

    command = "python bench/bench_scaling.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"# {command}".rstrip())
    print(f"# {args.images} images as tasks of {task_sizes(args.images)}, emulator latency lognormal median "
          f"{args.median}s sigma {args.sigma} seed {args.seed}, window {args.window} per partition, "
          f"broker {bootstrap}, {os.cpu_count()} CPUs", flush=True)
    # Unlimited: no cluster-wide account-budget scheduler yet, and this bench measures
    # throughput, not the account limits.
    emulator = start_emulator("--latency", f"lognormal:{args.median},{args.sigma}", "--seed", str(args.seed),
                              "--unlimited", "--output-size", "input",
                              "--log-level", "WARNING", name="bench-scaling-emulator")
    started = time.monotonic()
    outcomes: list[Outcome] = []
    rate_outcomes: list[Outcome] = []
    try:
        for case in cases:
            o = asyncio.run(run_case(case, args, emulator, bootstrap, images))
            print(f"  {case.label}: makespan {o.makespan:.2f}s (submit {o.submit_s:.2f}s), "
                  f"{o.stats['total_requests']} calls, max in flight {o.stats['max_in_flight']}  "
                  f"[{time.monotonic() - started:.0f}s]", flush=True)
            outcomes.append(o)
        for case in rate_cases:
            o = asyncio.run(run_case(case, args, emulator, bootstrap, rate_images))
            print(f"  {case.label}: makespan {o.makespan:.2f}s, {o.stats['total_requests']} calls, "
                  f"429s {o.stats['by_status'].get('429', 0)}  [{time.monotonic() - started:.0f}s]", flush=True)
            rate_outcomes.append(o)
    finally:
        emulator.proc.stop()

    ok = True
    print()
    if outcomes:
        print(f"== makespan of {args.images} distinct images (all cache misses); ideal = Σlatency / "
              f"({args.window} × partitions); sim = zero-overhead windows with the real job spread")
        lines, ok_scale = scaling_table(outcomes, args.window)
        print("\n".join(lines))
        ok &= ok_scale
    if rate_outcomes:
        print()
        print(f"== rate cap: {len(rate_images)} images, 1 worker, {args.rate_partitions} partitions, emulator "
              f"account limit {args.account_rps:g} rps (429 above); req/s (all calls) and ok/s (200s) over "
              f"the busy period (first call → last success), peak5s/s = most 200s in any 5 s, ideal {len(rate_images) / args.rps:.1f}s at the cap")
        lines, ok_rate = rate_table(rate_outcomes, args.window)
        print("\n".join(lines))
        ok &= ok_rate
    print()
    print(f"max in flight ≤ {args.window} × partitions in every run: {'yes' if ok else 'NO'}; "
          f"total {time.monotonic() - started:.0f}s")
    salt = "" if any(a.startswith("--salt") for a in sys.argv[1:]) else f" --salt {args.salt}"
    print(f"reproduce: {command}{salt}".replace("  ", " "))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
