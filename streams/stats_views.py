"""``GET /api/v1/stats`` (JSON) and ``GET /metrics`` (Prometheus text) of one worker.

Counters are per worker since its start; Prometheus sums across workers.  Consumer
lag and last-commit age per partition are exposed so an agent that died while the
worker stayed up (Faust #175) shows as growing lag, not as silence.
"""

from __future__ import annotations

import time
from typing import Any

import faust
from aiohttp import web

from streams.app import app
from streams.stats import Labels, metrics

__all__ = ["stats_document"]

_last_commit: dict[tuple[str, int], tuple[int, float]] = {}


def _consumer_positions() -> list[tuple[Labels, float]]:
    """Lag (end offset − committed offset) per assigned topic partition."""
    monitor = app.monitor
    ends = monitor.tp_end_offsets or {}
    committed = monitor.tp_committed_offsets or {}
    out: list[tuple[Labels, float]] = []
    for tp, end in sorted(ends.items()):
        done = committed.get(tp)
        lag = end - (done if done is not None else 0)
        out.append(((("partition", str(tp.partition)), ("topic", tp.topic)), float(max(lag, 0))))
    return out


def _commit_ages() -> list[tuple[Labels, float]]:
    """Seconds since each partition's committed offset last moved."""
    now = time.time()
    out: list[tuple[Labels, float]] = []
    for tp, offset in sorted((app.monitor.tp_committed_offsets or {}).items()):
        key = (tp.topic, tp.partition)
        previous = _last_commit.get(key)
        if previous is None or previous[0] != offset:
            _last_commit[key] = (offset, now)
        out.append(((("partition", str(tp.partition)), ("topic", tp.topic)), round(now - _last_commit[key][1], 3)))
    return out


metrics.gauge("consumer_lag", _consumer_positions)
metrics.gauge("last_commit_age_seconds", _commit_ages)
metrics.describe("consumer_lag", "end offset minus committed offset per assigned partition")
metrics.describe("upstream_in_flight", "upstream calls in flight per partition")
metrics.describe("upstream_blocked", "1 per model this worker will not call after an account-state error")


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _blocked() -> list[dict[str, Any]]:
    from streams.image_edit import agents  # the executor lives with the edit agent

    return [{"model": b.model, "code": b.code, "message": b.message, "since": b.since}
            for b in agents.blocks.all()]


def _cost() -> dict[str, Any]:
    """Spent upstream and saved by the cache, per model (catalogue prices, region's currency)."""
    from config.catalogue import load_catalogue
    from streams.app import settings

    currency = load_catalogue().region(settings.region).currency
    by_model: dict[str, dict[str, float]] = {}
    for kind in ("spent", "saved"):
        for model, value in metrics.by_label(f"cost_{kind}_total", "model").items():
            by_model.setdefault(model, {"spent": 0.0, "saved": 0.0})[kind] = round(value, 6)
    return {
        "currency": currency,
        "region": settings.region,
        "spent": round(metrics.get("cost_spent_total"), 6),
        "saved": round(metrics.get("cost_saved_total"), 6),
        "by_model": dict(sorted(by_model.items())),
    }


def stats_document() -> dict[str, Any]:
    """The JSON stats document (what ``/api/v1/stats`` answers)."""
    m = metrics
    hits = m.get("cache_hits_total", kind="hit")
    coalesced = m.get("cache_hits_total", kind="coalesced")
    misses = m.get("cache_misses_total")
    lookups = hits + coalesced + misses
    completed = m.get("images_completed_total")
    failed = m.get("images_failed_total")
    finished_tasks = m.by_label("tasks_finished_total", "status")
    n_finished = sum(finished_tasks.values())
    return {
        "tasks": {
            "submitted": m.get("tasks_submitted_total"),
            "planned": m.get("tasks_planned_total"),
            "finished": finished_tasks,
            "completion_rate": _rate(finished_tasks.get("completed", 0.0), n_finished),
            "failure_rate": _rate(finished_tasks.get("failed", 0.0), n_finished),
        },
        "images": {
            "planned": m.get("images_planned_total"),
            "completed": completed,
            "failed": failed,
            "failed_by_code": m.by_label("images_failed_total", "code"),
            "from_cache": hits + coalesced,
            "completion_rate": _rate(completed, completed + failed),
            "failure_rate": _rate(failed, completed + failed),
        },
        "cache": {
            "hits": hits,
            "coalesced": coalesced,
            "misses": misses,
            "hit_rate": _rate(hits + coalesced, lookups),
            "upstream_calls_saved": hits + coalesced,
        },
        "upstream": {
            "calls": m.get("upstream_calls_total"),
            "retries": m.get("upstream_retries_total"),
            "errors_by_code": m.by_label("upstream_errors_total", "code"),
            "rate_limited_429": m.get("upstream_429_total"),
            "in_flight": {dict(labels)["partition"]: value for labels, value in m.read_gauge("upstream_in_flight")},
            # Models not called after an account-state error (one probe every ≤ 30 s).
            "blocked": _blocked(),
            "blocked_refusals": m.get("upstream_blocked_refusals_total"),
            "probes": m.get("upstream_probes_total"),
        },
        "cost": _cost(),
        "dimensions": {
            "requests": m.get("dimension_requests_total"),
            "cache_hits": m.get("dimension_cache_hits_total"),
            "cache_misses": m.get("dimension_cache_misses_total"),
            "placeholders": m.get("dimension_placeholders_total"),
            "computed": m.get("dimension_computed_total"),
            "fetches": m.get("dimension_fetches_total"),
            "fetch_failures_by_reason": m.by_label("dimension_fetch_failures_total", "reason"),
            # Requests answered from a remembered failure (no fetch), by its code.
            "remembered_failures_by_reason": m.by_label("dimension_negative_cache_hits_total", "reason"),
            "revalidations_by_result": m.by_label("dimension_revalidations_total", "result"),
            "bytes_read": m.get("dimension_bytes_read_total"),
        },
        "dead_letters": m.by_label("dead_letters_total", "code"),
        "consumer_lag": {
            f"{dict(labels)['topic']}[{dict(labels)['partition']}]": value for labels, value in _consumer_positions()
        },
    }


@app.page("/api/v1/stats")
async def stats_view(self: faust.web.View, request: web.Request) -> web.Response:
    """This worker's counters as JSON."""
    return self.json(stats_document())


@app.page("/metrics")
async def metrics_view(self: faust.web.View, request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    return web.Response(text=metrics.prometheus(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
