#!/usr/bin/env python3
"""Image-edit benchmark: sliding window vs batches of 3, and the cached path.

Needs a Kafka broker (``make bench`` starts one; or set IMAGESTREAM_KAFKA_BOOTSTRAP).
Starts its own DashScope emulator (seeded lognormal latency) and one worker on one
partition, then measures in one run:

1. makespan of 30-image tasks (``--rounds`` of them, one after another, each on fresh
   images and fresh latency draws; ratios are of the sums, per task lines too) against
   - the old system's fixed batches of 3 on the *same* latencies (Σ over consecutive
     triples of the slowest call, in the order the calls drew their latency), and
   - the ideal Σlatency / 3 (three calls always busy, no overhead), and
   - a zero-overhead sliding window of 3 on the same latencies: what a scheduler that
     does not know the latencies in advance cannot expect to beat: the gap to it is our overhead
     and the rest (to the ideal) is the tail of the last calls;
2. submit→completed latency of 1-image tasks that hit the cache (p50 / p99),
   measured from the HTTP submit to the TaskStatus snapshot on Kafka;
3. cached throughput: images/s of 300 tasks × 50 cached images published to Kafka, from
   the first request sent to the last task's terminal status seen.

    python bench/bench_image_edit.py [--images 30] [--rounds 5] [--median 2.0] [--sigma 0.5]

Targets, compared in the run (exit 1 when one is missed; every figure is printed all
the same): makespan ≤ 0.75 × batches of 3 and ≤ 1.03 × a zero-overhead sliding window
on the same latencies (Σlatency/3 is printed too; no window reaches it); cached 1-image task
p50 ≤ 50 ms and p99 ≤ 200 ms; cached throughput ≥ 2,000 images/s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.targets import Targets  # noqa: E402 - after the path tweak
from tests.support import (  # noqa: E402
    TopicReader,
    start_emulator,
    start_worker,
)

TERMINAL = {"completed", "partial", "failed"}
#: Upstream calls in flight per partition (IMAGESTREAM_UPSTREAM_CONCURRENCY, the worker's default).
WINDOW = 3


def make_png(seed: int) -> bytes:
    img = Image.new("RGB", (512, 384), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    ImageDraw.Draw(img).ellipse((20 + seed % 90, 30, 300, 250 + seed % 100), fill=(250, 200 - seed % 150, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def submit(session: aiohttp.ClientSession, api: str, files: list[tuple[str, bytes]], prompt: str) -> str:
    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("images", data, filename=name)
    form.add_field("edit_type", "enhance")
    form.add_field("edit_params", json.dumps({"prompt": prompt}))
    async with session.post(f"{api}/api/v1/image-edit/submit", data=form) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"submit: {resp.status} {body}")
        return str(body["task_id"])


async def wait_done(session: aiohttp.ClientSession, api: str, task_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(f"{api}/api/v1/image-edit/task/{task_id}") as resp:
            if resp.status == 200:
                doc = await resp.json()
                if doc["status"] in TERMINAL:
                    return dict(doc)
        await asyncio.sleep(0.01)
    raise TimeoutError(task_id)


def sliding_window_makespan(latencies: list[float], width: int) -> float:
    """Makespan of a perfect sliding window: each call starts the moment a slot frees."""
    import heapq

    slots = [0.0] * width
    for latency in latencies:
        heapq.heappush(slots, heapq.heappop(slots) + latency)
    return max(slots)


@dataclass
class Makespan:
    """One task's makespan beside what the same latencies give other schedules."""

    measured: float
    submit: float  # HTTP submit of the images, until the 202
    baseline: float  # fixed batches of 3: Σ of each consecutive triple's slowest call
    ideal: float  # Σlatency / 3
    window: float  # a zero-overhead sliding window of 3 on the same latencies, same order
    first_call: float  # 202 → first upstream call started
    tail: float  # last upstream call answered → completed seen by the client
    handoff_mean: float  # a slot freed → the next call started in it
    handoff_max: float
    max_in_flight: int

    @property
    def vs_baseline(self) -> float:
        return self.measured / self.baseline

    @property
    def vs_ideal(self) -> float:
        return self.measured / self.ideal

    @property
    def vs_ideal_from_202(self) -> float:
        return (self.measured - self.submit) / self.ideal

    def line(self) -> str:
        return (f"measured {self.measured:6.2f}s | batches of 3 {self.baseline:6.2f}s → {self.vs_baseline:.3f} | "
                f"ideal {self.ideal:6.2f}s → {self.vs_ideal:.3f} | zero-overhead window {self.window:6.2f}s "
                f"→ {self.measured / self.window:.3f}")

    @classmethod
    def total(cls, rounds: list[Makespan]) -> Makespan:
        """Sums over the tasks (ratios of sums, so every task weighs by its length)."""
        n = len(rounds)
        return cls(
            **{f: sum(getattr(r, f) for r in rounds)
               for f in ("measured", "submit", "baseline", "ideal", "window", "first_call", "tail")},
            handoff_mean=sum(r.handoff_mean for r in rounds) / n,
            handoff_max=max(r.handoff_max for r in rounds),
            max_in_flight=max(r.max_in_flight for r in rounds),
        )


async def measure_makespan(session: aiohttp.ClientSession, api: str, emulator_base: str,
                           files: list[tuple[str, bytes]]) -> Makespan:
    """Submit one task of fresh images and time it against the latencies the emulator drew."""
    await session.post(f"{emulator_base}/_emulator/reset")
    t0 = time.monotonic()
    wall0 = time.time()
    task_id = await submit(session, api, files, "提升画质，增强细节")
    accepted_after = time.monotonic() - t0
    doc = await wait_done(session, api, task_id)
    measured = time.monotonic() - t0
    async with session.get(f"{emulator_base}/_emulator/latencies") as resp:
        drawn = await resp.json()
    async with session.get(f"{emulator_base}/_emulator/stats") as resp:
        stats = await resp.json()
    assert doc["completed_images"] == len(files), doc
    assert stats["total_requests"] == len(files), stats
    latencies = drawn["latencies_s"]
    starts = sorted(c[0] for c in drawn["calls"])
    ends = sorted(c[1] for c in drawn["calls"])
    handoffs = [starts[i] - ends[i - WINDOW] for i in range(WINDOW, len(starts))] or [0.0]
    return Makespan(
        measured=measured,
        submit=accepted_after,
        baseline=sum(max(latencies[i:i + WINDOW]) for i in range(0, len(latencies), WINDOW)),
        ideal=sum(latencies) / WINDOW,
        window=sliding_window_makespan(latencies, WINDOW),
        first_call=starts[0] - wall0 - accepted_after,
        tail=wall0 + measured - ends[-1],
        handoff_mean=sum(handoffs) / len(handoffs),
        handoff_max=max(handoffs),
        max_in_flight=int(stats["max_in_flight"]),
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run(args: argparse.Namespace, bootstrap: str, api: str, emulator_base: str, topic: Any,
              targets: Targets) -> None:
    async with aiohttp.ClientSession() as session:
        # 1. makespan -------------------------------------------------------------------
        # Warm the worker up (first-request costs: lazy clients, plugin imports, topic
        # metadata) with one image that is not part of the measured set.
        await wait_done(session, api, await submit(session, api, [("warm.png", make_png(args.salt - 1))], "warm up"))
        print(f"== makespan of {args.images} images per task, {args.rounds} tasks one after another, "
              f"lognormal latency median {args.median}s sigma {args.sigma} (seed {args.seed})")
        rounds: list[Makespan] = []
        for r in range(args.rounds):
            files = [(f"b{i}.png", make_png(args.salt + r * args.images + i)) for i in range(args.images)]
            rounds.append(await measure_makespan(session, api, emulator_base, files))
            print(f"   task {r + 1}: {rounds[-1].line()}")
        total = Makespan.total(rounds)
        print(f"   all {args.rounds}: {total.line()}")
        print(f"   → vs batches of 3: {total.vs_baseline:.3f} (target ≤ 0.75); vs ideal Σlatency/3: "
              f"{total.vs_ideal:.3f}, {total.vs_ideal_from_202:.3f} from the 202s")
        print(f"   → a zero-overhead sliding window on the same latencies: {total.window / total.baseline:.3f} "
              f"of batches of 3, {total.window / total.ideal:.3f} of ideal (the tail of the last calls); "
              f"ours is {total.measured / total.window:.3f} of it (target ≤ 1.03)")
        print(f"   overhead per task (mean): HTTP submit of the images {total.submit / args.rounds:.3f}s, "
              f"202 → first call {total.first_call / args.rounds:.3f}s, last call → completed seen "
              f"{total.tail / args.rounds:.3f}s; slot handoff mean {1000 * total.handoff_mean:.1f} ms "
              f"(max {1000 * total.handoff_max:.1f} ms); max in flight {total.max_in_flight}")
        targets.at_most("makespan vs batches of 3", total.vs_baseline, 0.75)
        # Σlatency/3 is a bound no window reaches (the last calls' tail: a zero-overhead
        # window is 1.04-1.06x of it on these draws), so the overhead target is set
        # against that window on the same latencies.
        targets.at_most("makespan vs a zero-overhead window", total.measured / total.window, 1.03)

        # 2. cached 1-image tasks: submit → completed ------------------------------------
        cached_files = files[: args.images]  # the last task's images: all cached now
        samples: list[float] = []
        async with TopicReader(bootstrap, topic("image-edit-task-status")) as statuses:
            for i in range(args.latency_samples):
                one = [cached_files[i % len(cached_files)]]
                t0 = time.monotonic()
                tid = await submit(session, api, one, "提升画质，增强细节")
                await statuses.collect(lambda v, tid=tid: v.get("task_id") == tid and v.get("status") in TERMINAL,
                                       timeout=30)
                samples.append((time.monotonic() - t0) * 1000)
        print(f"== cached 1-image task, HTTP submit → TaskStatus completed on Kafka ({len(samples)} tasks)")
        print(f"   p50 {percentile(samples, 50):6.1f} ms   p99 {percentile(samples, 99):6.1f} ms   "
              f"(targets ≤ 50 / ≤ 200 ms)")
        targets.at_most("cached 1-image task p50", percentile(samples, 50), 50, " ms")
        targets.at_most("cached 1-image task p99", percentile(samples, 99), 200, " ms")

        # 3. cached throughput ------------------------------------------------------------
        # Inputs are the original images, already in the blob store under their sha256.
        inputs = [sha256(data).hexdigest() for _, data in cached_files]
        n_tasks, per_task = args.tasks, min(50, args.per_task)
        ids = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(n_tasks)]
        events = [json.dumps({"task_id": tid, "edit_type": "enhance", "edit_params": {"prompt": "提升画质，增强细节"},
                              "images": [{"filename": f"{k}.png", "blob": inputs[k % len(inputs)]}
                                         for k in range(per_task)]}).encode() for tid in ids]
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()  # connected before the clock starts: the worker's rate is measured
        try:
            async with TopicReader(bootstrap, topic("image-edit-task-status")) as statuses:
                t0 = time.monotonic()
                for tid, event in zip(ids, events, strict=True):
                    await producer.send(topic("image-edit-requests"), event, key=json.dumps(tid).encode())
                await producer.flush()
                published = time.monotonic() - t0
                wanted = set(ids)
                finished: list[float] = []

                def terminal(v: dict[str, Any]) -> bool:
                    if v.get("task_id") in wanted and v.get("status") in TERMINAL:
                        finished.append(time.monotonic() - t0)
                        return True
                    return False

                await statuses.collect(terminal, count=n_tasks, timeout=300)
                elapsed = time.monotonic() - t0
                if args.trace:  # stalls show as gaps between tasks finishing
                    print("   finished at (s):", [round(x, 2) for x in finished[:: max(1, len(finished) // 20)]])
        finally:
            await producer.stop()
        total = n_tasks * per_task
        print(f"== cached throughput: {n_tasks} tasks × {per_task} images via Kafka")
        print(f"   {total} images in {elapsed:.2f}s → {total / elapsed:,.0f} images/s per worker (target ≥ 2,000); "
              f"all requests were on Kafka after {published:.2f}s")
        targets.at_least("cached throughput", total / elapsed, 2000, " images/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="30-image tasks timed one after another")
    parser.add_argument("--median", type=float, default=2.0)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--trace", action="store_true", help="print when the cached tasks finished (every 5th %%)")
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--salt", type=int, default=int(time.time()) % 100000)
    args = parser.parse_args()
    bootstrap = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    # Unlimited: no cluster-wide account-budget scheduler yet, and this bench measures
    # throughput, not the account limits.
    emulator = start_emulator("--latency", f"lognormal:{args.median},{args.sigma}", "--seed", str(args.seed),
                              "--unlimited", "--output-size", "input",
                              name="bench-emulator")
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    worker = None
    targets = Targets()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            worker = start_worker("bench-worker", kafka_bootstrap=bootstrap, emulator=emulator,
                                  data_dir=Path(tmp), app_id=app_id, partitions=1)
            asyncio.run(run(args, bootstrap, worker.url, emulator.base_url, worker.topic, targets))
    finally:
        if worker is not None:
            worker.proc.stop()
        emulator.proc.stop()
    return targets.exit_code()


if __name__ == "__main__":
    sys.exit(main())
