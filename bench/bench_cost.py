#!/usr/bin/env python3
"""Cost benchmark: upstream calls and money per 100 images, per model, with and without
the cache, on a duplicate-heavy replay.

Needs a Kafka broker (or set IMAGESTREAM_KAFKA_BOOTSTRAP).  Starts its own emulator and
one worker, then replays, for each model, ``--images`` images drawn (seeded) from only
``--distinct`` different pictures, as tasks of ``--per-task``, in a changing order with
some pictures re-encoded (same pixels, other bytes: the seed's own cache bug).  Printed
per model: calls and spend with the cache (measured: the emulator's call count and the
worker's cost figures) against the same replay without it (every image one call), per
100 images.  Prices are the catalogue's (config/models.toml: marked unconfirmed).

Targets (exit 1 when missed): calls with the cache == distinct pictures (one call per
distinct edit, whatever the order or encoding), and the worker's spend == calls × n ×
price (its cost figures match the catalogue).

    python bench/bench_cost.py [--images 200] [--distinct 40] [--n 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config.catalogue import load_catalogue  # noqa: E402
from tests.support import (  # noqa: E402 - after the path tweak
    edit_form,
    emulator_reset,
    emulator_stats,
    get_json,
    start_emulator,
    start_worker,
    submit,
    wait_task,
)

MODELS = ("qwen-image-edit", "qwen-image-edit-plus", "qwen-image-edit-max", "qwen-image-2.0")


def picture(seed: int, *, reencode: bool = False) -> bytes:
    img = Image.new("RGB", (96, 72), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    ImageDraw.Draw(img).rectangle((5 + seed % 40, 8, 60, 50 + seed % 20), fill=(250, 200 - seed % 150, 30))
    buf = io.BytesIO()
    if reencode:  # another PNG encoding: the same pixels in other bytes
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


async def replay(url: str, emulator: Any, model: str, args: argparse.Namespace, salt: int) -> dict[str, float]:
    rng = random.Random(args.seed)
    draws = [rng.randrange(args.distinct) for _ in range(args.images)]
    await emulator_reset(emulator)
    _, before = await get_json(f"{url}/api/v1/stats")
    params: dict[str, Any] = {"model": model, "prompt": "enhance the picture"}
    if load_catalogue().model(model).n_max >= args.n and args.n > 1:
        params["n"] = args.n
    spent = 0.0
    for start in range(0, len(draws), args.per_task):
        chunk = draws[start:start + args.per_task]
        files = [(f"{i}.png", picture(salt + d, reencode=rng.random() < 0.3)) for i, d in enumerate(chunk)]
        status, body = await submit(url, edit_form(files, edit_type="custom", params=params))
        assert status == 202, body
        done = await wait_task(url, body["task_id"], timeout=300)
        assert done["status"] == "completed", done
        spent += (done.get("cost") or {}).get("spent", 0.0)
    stats = await emulator_stats(emulator)
    _, after = await get_json(f"{url}/api/v1/stats")
    by_model = after["cost"]["by_model"].get(model, {"spent": 0.0})
    was = before["cost"]["by_model"].get(model, {"spent": 0.0})
    return {"calls": stats["total_requests"], "distinct": len(set(draws)), "n": params.get("n", 1),
            "spent": spent, "spent_stats": by_model["spent"] - was["spent"]}


async def run(args: argparse.Namespace, url: str, emulator: Any) -> int:
    catalogue = load_catalogue()
    region = "cn-beijing"
    currency = catalogue.region(region).currency
    salt = int(time.time()) % 100_000
    per = 100 / args.images
    print(f"# {args.images} images from {args.distinct} pictures, tasks of {args.per_task}, n={args.n} where the "
          f"model takes it; prices {region} ({currency}, UNCONFIRMED: config/models.toml)")
    print(f"{'model':<22} {'calls/100 no cache':>18} {'calls/100 cache':>16} {currency + '/100 no cache':>17} "
          f"{currency + '/100 cache':>15} {'saved':>6}")
    failed = False
    for k, model in enumerate(MODELS):
        m = await replay(url, emulator, model, args, salt + 1000 * k)
        price = catalogue.model(model).price_in(region) * m["n"]
        without_calls, with_calls = args.images, m["calls"]
        without_cost, with_cost = without_calls * price, m["spent"]
        print(f"{model:<22} {without_calls * per:>18.1f} {with_calls * per:>16.1f} {without_cost * per:>17.2f} "
              f"{with_cost * per:>15.2f} {1 - with_cost / without_cost:>6.0%}")
        if with_calls != m["distinct"]:
            print(f"  MISSED: {with_calls} calls for {m['distinct']} distinct pictures")
            failed = True
        if abs(with_cost - with_calls * price) > 1e-6 or abs(m["spent_stats"] - with_cost) > 1e-6:
            print(f"  MISSED: spend {with_cost} (stats {m['spent_stats']}) != {with_calls} calls x {price}")
            failed = True
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--distinct", type=int, default=40)
    parser.add_argument("--per-task", type=int, default=20)
    parser.add_argument("--n", type=int, default=2, help="outputs per call on models that take n")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    bootstrap = os.environ.get("IMAGESTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    # Unlimited: no cluster-wide account-budget scheduler yet (qwen-image-edit-max allows
    # 2 requests a minute), and this bench counts calls and money, not time.
    emulator = start_emulator("--latency", "fixed:0.05", "--unlimited", "--output-size", "input",
                              "--log-level", "WARNING", name="bench-cost-emulator")
    worker = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            worker = start_worker("bench-cost-worker", kafka_bootstrap=bootstrap, emulator=emulator,
                                  data_dir=Path(tmp), app_id=f"bench-cost-{uuid.uuid4().hex[:8]}")
            return asyncio.run(run(args, worker.url, emulator))
    finally:
        if worker is not None:
            worker.proc.stop()
        emulator.proc.stop()


if __name__ == "__main__":
    sys.exit(main())
