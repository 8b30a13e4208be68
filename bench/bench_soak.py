#!/usr/bin/env python3
"""Soak: thousands of small mixed tasks (most of them duplicates) through one worker.

Needs a Kafka broker (``make bench`` starts one; or set IMAGESTREAM_KAFKA_BOOTSTRAP).
Starts its own DashScope emulator and one worker, then publishes ``--tasks``
TaskRequest events to ``image-edit-requests`` (1–3 small images each, inline base64):
a share ``--dup`` of the tasks repeat an earlier task's images and edit exactly (so
they must be answered from the cache, or coalesced with a call in flight), the rest
bring fresh images.  It waits for every task's terminal TaskStatus on Kafka and prints:

* tasks and images per second, submit of the first to the last terminal status;
* cache hit rate seen by the worker against the expected one
  (1 − distinct (image, edit) pairs / images);
* upstream calls (emulator) against the distinct (image, edit) pairs: must be equal;
* the worker's RSS at start, after a warm-up, and at the end (from /proc);
* failed tasks (must be none).

    python bench/bench_soak.py [--tasks 2000] [--dup 0.7] [--partitions 4] [--latency fixed:0.05]

``run_soak()`` is also what ``tests/reliability/test_soak.py`` runs, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import (  # noqa: E402 - after the path tweak
    Emulator,
    TopicReader,
    Worker,
    jkey,
    start_emulator,
    start_worker,
)

TERMINAL = {"completed", "partial", "failed"}
EDITS = [("enhance", None), ("grayscale", None), ("custom", "soak: warm tones, soft light")]


def tiny_png(seed: int) -> bytes:
    img = Image.new("RGB", (48, 32), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    draw = ImageDraw.Draw(img)
    draw.rectangle((seed % 17, 2, 20 + seed % 23, 25), fill=(255 - seed % 256, (seed >> 8) % 256, 99))
    draw.point(((seed >> 4) % 48, (seed >> 10) % 32), fill=((seed >> 3) % 256, 7, (seed >> 12) % 256))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Plan:
    """The tasks to publish and what the run must show."""

    tasks: list[dict[str, Any]]
    images: int
    distinct_pairs: int

    @property
    def expected_hit_rate(self) -> float:
        return 1 - self.distinct_pairs / self.images


def make_plan(n_tasks: int, dup: float, *, seed: int) -> Plan:
    rng = random.Random(seed)
    base = rng.randrange(1 << 30)
    tasks: list[dict[str, Any]] = []
    originals: list[tuple[str, dict[str, Any], list[dict[str, str]]]] = []
    pairs: set[tuple[int, str, str | None]] = set()
    images = 0
    next_image = 0
    for _ in range(n_tasks):
        if originals and rng.random() < dup:
            edit_type, params, refs = rng.choice(originals)
        else:
            edit_type, prompt = rng.choice(EDITS)
            params = {"prompt": prompt} if prompt else {}
            refs = []
            for _ in range(rng.randint(1, 3)):
                seed_i = base + next_image
                next_image += 1
                refs.append({"filename": f"{seed_i}.png", "data": base64.b64encode(tiny_png(seed_i)).decode()})
                pairs.add((seed_i, edit_type, params.get("prompt")))
            originals.append((edit_type, params, refs))
        task_id = f"soak-{uuid.uuid4().hex}"
        tasks.append({"task_id": task_id, "edit_type": edit_type, "edit_params": params, "images": refs,
                      "submitted_at": 0})
        images += len(refs)
    return Plan(tasks=tasks, images=images, distinct_pairs=len(pairs))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


async def _json(url: str) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(url) as resp:
            resp.raise_for_status()
            return await resp.json()


@dataclass
class SoakReport:
    tasks: int
    images: int
    distinct_pairs: int
    expected_hit_rate: float
    seconds: float
    upstream_calls: int
    worker_upstream_calls: float
    worker_hit_rate: float | None
    cache_hits: float
    coalesced: float
    misses: float
    statuses: dict[str, int]
    failed_images: int
    rss_start_mib: float
    rss_warm_mib: float
    rss_end_mib: float
    dead_letters: dict[str, float] = field(default_factory=dict)

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def lines(self) -> list[str]:
        return [
            f"tasks {self.tasks}, images {self.images}, distinct (image, edit) pairs {self.distinct_pairs}",
            f"throughput: {self.tasks_per_s:.1f} tasks/s, {self.images_per_s:.1f} images/s ({self.seconds:.1f} s)",
            f"cache hit rate: {self.worker_hit_rate} (expected {self.expected_hit_rate:.4f}); hits {self.cache_hits:g},"
            f" coalesced {self.coalesced:g}, misses {self.misses:g}",
            f"upstream calls: emulator {self.upstream_calls}, worker {self.worker_upstream_calls:g}, "
            f"distinct pairs {self.distinct_pairs}",
            f"task statuses: {self.statuses}; failed images {self.failed_images}; dead letters {self.dead_letters}",
            f"worker RSS: start {self.rss_start_mib} MiB, after warm-up {self.rss_warm_mib} MiB, "
            f"end {self.rss_end_mib} MiB",
        ]


async def run_soak(*, bootstrap: str, emulator: Emulator, worker: Worker, n_tasks: int, dup: float,
                   seed: int = 7, timeout: float = 600) -> SoakReport:
    """Publish the plan's tasks, wait for every terminal status, report."""
    plan = make_plan(n_tasks, dup, seed=seed)
    pid = worker.proc.popen.pid
    rss_start = rss_mib(pid)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{emulator.base_url}/_emulator/reset") as resp:
            resp.raise_for_status()
    ids = {t["task_id"] for t in plan.tasks}
    finals: dict[str, dict[str, Any]] = {}
    rss_warm = rss_start

    def terminal(value: dict[str, Any]) -> bool:
        tid = value.get("task_id")
        if tid in ids and value.get("status") in TERMINAL and tid not in finals:
            finals[tid] = value
            return True
        return False

    async with TopicReader(bootstrap, worker.topic("image-edit-task-status")) as statuses:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        started = time.monotonic()
        try:
            futures = [await producer.send(worker.topic("image-edit-requests"), json.dumps(t).encode(),
                                           key=jkey(t["task_id"])) for t in plan.tasks]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()
        deadline = started + timeout
        warm_at = n_tasks // 10
        while len(finals) < n_tasks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(finals)}/{n_tasks} tasks ended within {timeout}s")
            await statuses.collect(terminal, count=min(len(finals) + 50, n_tasks) - len(finals), timeout=left)
            if rss_warm == rss_start and len(finals) >= warm_at:
                rss_warm = rss_mib(pid)
        seconds = time.monotonic() - started

    emu = await _json(f"{emulator.base_url}/_emulator/stats")
    stats = await _json(f"{worker.url}/api/v1/stats")
    by_status: dict[str, int] = {}
    failed_images = 0
    for doc in finals.values():
        by_status[doc["status"]] = by_status.get(doc["status"], 0) + 1
        failed_images += int(doc.get("failed_images", 0))
    return SoakReport(
        tasks=n_tasks, images=plan.images, distinct_pairs=plan.distinct_pairs,
        expected_hit_rate=round(plan.expected_hit_rate, 4), seconds=seconds,
        upstream_calls=emu["total_requests"], worker_upstream_calls=stats["upstream"]["calls"],
        worker_hit_rate=stats["cache"]["hit_rate"], cache_hits=stats["cache"]["hits"],
        coalesced=stats["cache"]["coalesced"], misses=stats["cache"]["misses"], statuses=by_status,
        failed_images=failed_images, rss_start_mib=rss_start, rss_warm_mib=rss_warm, rss_end_mib=rss_mib(pid),
        dead_letters=stats.get("dead_letters", {}),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--dup", type=float, default=0.7)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--latency", default="fixed:0.05")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    bootstrap = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    # Unlimited: no cluster-wide account-budget scheduler yet, and this bench is not about limits.
    emulator = start_emulator("--latency", args.latency, "--unlimited", "--output-size", "input",
                              name="bench-soak-emulator")
    worker: Worker | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="imagestream-soak-") as tmp:
            worker = start_worker("bench-soak-worker", kafka_bootstrap=bootstrap, emulator=emulator,
                                  data_dir=Path(tmp), app_id=f"bench-soak-{uuid.uuid4().hex[:8]}",
                                  partitions=args.partitions)
            report = asyncio.run(run_soak(bootstrap=bootstrap, emulator=emulator, worker=worker,
                                          n_tasks=args.tasks, dup=args.dup, seed=args.seed))
            worker.proc.stop()
    finally:
        if worker is not None:
            worker.proc.stop()
        emulator.proc.stop()
    print("\n".join(report.lines()))
    ok = (report.upstream_calls == report.distinct_pairs and report.failed_images == 0
          and set(report.statuses) == {"completed"})
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
