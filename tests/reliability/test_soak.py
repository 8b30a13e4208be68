"""Issue 7.7: a reduced soak (``bench/bench_soak.py`` runs 2,000 tasks).

300 small tasks, 70 % of them exact duplicates of earlier ones, through one worker:
every task completes, upstream calls equal the distinct (image, edit) pairs exactly,
the worker's cache hit rate is the expected one, and its RSS stays bounded.
"""

from __future__ import annotations

import pytest

from bench.bench_soak import run_soak
from tests.reliability.conftest import Fleet, unique_app_id

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_soak_300_mixed_tasks(fleet: Fleet) -> None:
    emulator = fleet.emulator("--latency", "fixed:0.05", name="rel-soak-emulator")
    worker = await fleet.worker("rel-soak-worker", emulator=emulator, app_id=unique_app_id("soak"), partitions=4)
    report = await run_soak(bootstrap=fleet.kafka_bootstrap, emulator=emulator, worker=worker, n_tasks=300, dup=0.7,
                            seed=11, timeout=240)
    print("\nsoak:\n  " + "\n  ".join(report.lines()))
    assert report.statuses == {"completed": 300}, report.statuses
    assert report.failed_images == 0
    assert report.upstream_calls == report.distinct_pairs
    assert report.worker_upstream_calls == report.distinct_pairs
    assert report.misses == report.distinct_pairs
    assert report.cache_hits + report.coalesced == report.images - report.distinct_pairs
    assert report.worker_hit_rate == pytest.approx(report.expected_hit_rate, abs=1e-3)
    assert not report.dead_letters, report.dead_letters
    assert report.rss_end_mib - report.rss_warm_mib < 150, report.lines()
