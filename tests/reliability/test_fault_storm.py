"""Issue 7.4: an upstream fault storm.

The emulator answers 30 % 429 (the three DashScope messages), 10 % 500, drops 5 % of
connections and draws a heavy-tailed (lognormal) latency.  A worker on 2 partitions
(6 calls may be in flight) with ``IMAGESTREAM_UPSTREAM_RPS=4`` runs 10 tasks × 5
images.  Then:

* every task ends (completed / partial / failed), none stays processing, and every
  image is completed or failed with an error code;
* retries are bounded: upstream requests ≤ images × 5 (max attempts);
* the requests-per-second cap holds: sampled from the emulator's request counter,
  no window of the run saw more than burst + cap × window requests, and the average
  is under the cap.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.reliability.conftest import Fleet, form, make_png, unique_app_id, worker_stats
from tests.support import TERMINAL, emulator_config, emulator_stats, submit, wait_task

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = 10
IMAGES = 5
MAX_ATTEMPTS = 5
RPS = 4.0
BURST = 4  # the worker's limiter: burst = max(1, int(rps))


async def test_fault_storm_every_task_ends_retries_bounded_rate_capped(fleet: Fleet) -> None:
    emulator = fleet.emulator(name="rel-storm-emulator")
    await emulator_config(emulator, latency="lognormal:0.25,0.8", rate_429=0.3, rate_500=0.1, rate_drop=0.05,
                     seed=20260707)
    worker = await fleet.worker("rel-storm-worker", emulator=emulator, app_id=unique_app_id("storm"),
                                partitions=2, extra_env={"IMAGESTREAM_UPSTREAM_RPS": str(RPS)})
    salt = uuid.uuid4().int % 1_000_000

    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), (await emulator_stats(emulator))["total_requests"]))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    try:
        accepted = await asyncio.gather(*(
            submit(worker.url, form([(f"s{t}-{i}.png", make_png(salt + t * IMAGES + i)) for i in range(IMAGES)]))
            for t in range(TASKS)))
        assert all(status == 202 for status, _ in accepted), accepted
        docs = await asyncio.gather(*(wait_task(worker.url, doc["task_id"], timeout=240) for _, doc in accepted))
    finally:
        stop.set()
        await sampler
    elapsed = time.monotonic() - started
    final = await emulator_stats(emulator)
    wstats = await worker_stats(worker)

    results = [r for d in docs for r in d["results"]]
    failed = [r for r in results if r["status"] == "failed"]
    requests = final["total_requests"]
    first_t = next(t for t, n in samples if n > 0)
    last_t = next(t for t, n in samples if n == requests)
    busy = max(last_t - first_t, 1e-6)
    worst = _worst_window(samples)
    print(f"\nfault storm: {TASKS}x{IMAGES} images in {elapsed:.1f}s; upstream requests {requests} "
          f"(by status {final['by_status']}, by code {final['by_code']}); worker retries "
          f"{wstats['upstream']['retries']}, failed images {len(failed)} "
          f"{sorted({r['error']['code'] for r in failed})}; average rate {requests / busy:.2f}/s over {busy:.1f}s; "
          f"worst window {worst}")

    assert all(d["status"] in TERMINAL for d in docs), [d["status"] for d in docs]
    assert len(results) == TASKS * IMAGES
    for d in docs:
        assert sorted(r["index"] for r in d["results"]) == list(range(IMAGES))
        assert d["completed_images"] + d["failed_images"] == IMAGES
    for r in results:
        assert r["status"] in ("completed", "failed"), r
        if r["status"] == "failed":
            assert r["error"] and r["error"]["code"], r
        else:
            assert r["result_blob"], r
    # The storm really happened, and retries made most images succeed.
    assert final["by_status"].get("429", 0) > 0 and final["by_status"].get("500", 0) > 0
    assert final["by_status"].get("dropped", 0) > 0
    assert len(failed) < TASKS * IMAGES // 2
    # Retries bounded.
    assert requests <= TASKS * IMAGES * MAX_ATTEMPTS
    # Every request the emulator saw was an attempt the worker made and counted (no
    # hidden SDK resend on a dropped connection, see the test below).
    assert wstats["upstream"]["calls"] == requests
    # The requests-per-second cap.
    assert requests / busy <= RPS * 1.05, (requests, busy)
    window, count, allowed = worst
    assert count <= allowed, worst


def _worst_window(samples: list[tuple[float, int]]) -> tuple[float, int, float]:
    """(window seconds, requests in it, requests allowed) of the window closest to
    breaking ``count ≤ burst + rps × window`` (with 0.25 s of sampling slack)."""
    worst: tuple[float, int, float] = (0.0, 0, float(BURST))
    margin = float("inf")
    for i, (t0, n0) in enumerate(samples):
        for t1, n1 in samples[i + 1:]:
            window = t1 - t0
            allowed = BURST + RPS * (window + 0.25)
            if allowed - (n1 - n0) < margin:
                margin = allowed - (n1 - n0)
                worst = (round(window, 2), n1 - n0, round(allowed, 2))
    return worst




async def test_dropped_connection_is_not_resent_behind_the_limiter(fleet: Fleet) -> None:
    emulator = fleet.emulator(name="rel-drop-emulator")
    await emulator_config(emulator, latency="none", rate_drop=1.0)
    worker = await fleet.worker("rel-drop-worker", emulator=emulator, app_id=unique_app_id("drop"),
                                extra_env={"IMAGESTREAM_UPSTREAM_BACKOFF_BASE": "0.05"})
    status, accepted = await submit(worker.url, form([("d.png", make_png(uuid.uuid4().int % 50000))]))
    assert status == 202, accepted
    doc = await wait_task(worker.url, accepted["task_id"], timeout=120)
    final = await emulator_stats(emulator)
    calls = (await worker_stats(worker))["upstream"]["calls"]
    print(f"\nalways-dropped image: {doc['results'][0].get('error')}; emulator requests {final['total_requests']}, "
          f"worker attempts {calls}")
    assert doc["status"] == "failed" and doc["results"][0]["error"]["code"], doc
    assert calls == MAX_ATTEMPTS
    assert final["total_requests"] == calls  # one upstream request per attempt
