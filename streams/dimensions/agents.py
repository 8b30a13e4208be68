"""Agents of the dimension pipeline (DESIGN.md §7).

::

    dimension-requests ──answer_dimension_requests──▶ dimension-results (cache / placeholder / computed, at once)
                                                 └──▶ imagestream-dimension-fetches (FetchJob, keyed by URL)
    GET/POST /api/v1/dimensions (views) ─────────────▶ the same, answered in the HTTP response
    imagestream-dimension-fetches ──fetch_urls──▶ url_dimensions table (URL's partition)
                                             └──▶ imagestream-dimension-updates (one per waiter)
    imagestream-dimension-updates ──apply_dimension_updates──▶ dimensions + scene_sizes tables
                                                          └──▶ dimension-results (fetched / failed)

Answers never wait on a fetch.  Failed fetches are remembered (the negative
cache): ``url_dimensions`` keeps the failure for ``dimension_failure_ttl`` seconds
(permanent: 404, not an image, ...) or ``dimension_transient_failure_ttl``
(timeouts, 5xx), jobs for the URL meanwhile are answered from it without a request
to the origin, and the failure updates teach the keys' owners
(:data:`remembered_failures`) to answer requests for the URL at once with the
placeholder and the error, without a job.  ``refresh=true`` bypasses both.  An
expired size with an ETag / Last-Modified is revalidated with a conditional GET:
a 304 renews it without reading the body.

Fetches are deduplicated twice: each worker remembers for a few seconds which
(URL, key) it has already enqueued
(:data:`recent_enqueues`), and the fetch agent, which owns the URL's partition,
runs one fetch per URL however many jobs arrive meanwhile (later jobs join its
waiters).  Fetches run as background tasks under a per-worker cap; each job's
offset is acked only when its outcome has been delivered to Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import faust
import orjson

from streams.app import app, settings
from streams.deadletter import dead_letter
from streams.dimensions import service
from streams.dimensions.batching import answer_batch
from streams.dimensions.changes import follow_url_changes
from streams.dimensions.hosts import load_policy
from streams.dimensions.fetch import HTTPStatusError, NotModified, fetch_dimensions, redact_url, revalidate_dimensions
from streams.dimensions.models import (
    DimensionEntry,
    DimensionRequest,
    DimensionResult,
    DimensionUpdate,
    ErrorInfo,
    FetchJob,
    UrlEntry,
    Waiter,
)
from streams.dimensions.probe import ProbeResult, probe_bytes
from streams.dimensions.tables import dimensions, scene_sizes, url_dimensions
from streams.errors import FetchError, ImagestreamError, InputError, InvalidRequest
from streams.publish import partition_for
from streams.routing import event_context
from streams.runtime import runtime
from streams.stats import metrics
from streams.topics import (
    dimension_fetch_topic,
    dimension_requests_topic,
    dimension_results_topic,
    dimension_updates_topic,
)

__all__ = [
    "answer",
    "answer_many",
    "compute",
    "enqueue_fetch",
    "lookup",
    "placeholder_for",
    "recent_enqueues",
    "remembered_failures",
]

log = logging.getLogger(__name__)

#: Fetches one worker runs at once (over all its partitions and hosts).
FETCH_CONCURRENCY = settings.dimension_fetch_concurrency
#: Request headers and concurrency caps per host (IMAGESTREAM_DIMENSION_HEADERS_FILE);
#: a malformed file stops the worker at start, naming the entry.
host_policy = load_policy(settings.dimension_headers_file)
#: Fetch jobs held (not yet acked) by one worker before the fetch agent pauses.
MAX_HELD_JOBS = 10_000
#: A worker enqueues a fetch for the same (URL, key) at most once per this many
#: seconds, or until the fetch's outcome for that key arrives (whichever is first).
ENQUEUE_DEDUPE_SECONDS = settings.dimension_timeout + 5.0
#: Inline images larger than this are decoded and probed in a thread.
THREAD_THRESHOLD = 256 * 1024
#: How long a scene's smart placeholder is reused before the table is read again.
PLACEHOLDER_MEMO_SECONDS = 1.0
#: Broken URLs one worker remembers for the keys it owns (oldest forgotten first).
REMEMBERED_FAILURES_MAX = 100_000

#: (URL, key, refresh) enqueued by this worker recently: the first gate of the dedupe.
recent_enqueues: service.RecentSet[tuple[str, str, bool]] = service.RecentSet(ENQUEUE_DEDUPE_SECONDS)
#: URL → the fetch in flight on this worker: the second gate.
_pending: service.PendingFetches[faust.EventT] = service.PendingFetches(
    stale_after=settings.dimension_timeout * 3 + 5.0
)
#: URL → failure remembered until: requests for it are answered at once, no job.
#: Kept in step with url_dimensions on every worker by its changelog.
remembered_failures = service.RememberedFailures(max_size=REMEMBERED_FAILURES_MAX)
follow_url_changes(remembered_failures)
_placeholder_memo: dict[str, tuple[float, tuple[int, int]]] = {}

for _name, _help in {
    "dimension_requests_total": "Dimension requests answered, by source (cache|placeholder|computed) and via",
    "dimension_cache_hits_total": "Dimension requests answered from the dimensions table",
    "dimension_cache_misses_total": "Dimension requests that found no usable entry",
    "dimension_placeholders_total": "Placeholder answers",
    "dimension_computed_total": "Sizes computed in-line from base64 data",
    "dimension_fetch_jobs_total": "Fetch jobs enqueued (after the per-worker dedupe)",
    "dimension_batch_items_total": "Items of batch requests answered on this worker, by via",
    "dimension_batches_total": "Batch requests answered (items spread over their owners), by via",
    "dimension_fetches_total": "Header fetches started",
    "dimension_fetches_coalesced_total": "Fetch jobs that joined a fetch already in flight",
    "dimension_url_cache_hits_total": "Fetch jobs answered from url_dimensions without fetching",
    "dimension_fetch_failures_total": "Failed header fetches, by reason",
    "dimension_negative_cache_hits_total":
        "Requests answered at once with a remembered fetch failure (placeholder + error), by reason",
    "dimension_url_negative_hits_total":
        "Fetch jobs answered from a failure remembered in url_dimensions, without a request, by reason",
    "dimension_failures_remembered_total": "Fetch failures written to url_dimensions, by kind (permanent|transient)",
    "dimension_revalidations_total": "Conditional GETs of expired URL entries, by result (not_modified|modified|failed)",
    "dimension_bytes_read_total": "Body bytes read by header fetches",
    "dimension_anomalies_total": "Sizes flagged as anomalous (not cached)",
    "dimension_stale_updates_total": "Updates older than the entry they would replace (ignored)",
}.items():
    metrics.describe(_name, _help)


# --- helpers ------------------------------------------------------------------------
def key_of(req: DimensionRequest | DimensionUpdate | Waiter) -> str:
    return service.dimension_key(req.session_id, req.resource, req.scene)


def placeholder_for(scene: str) -> tuple[int, int]:
    """The smart placeholder of ``scene``: its most common real size (from the
    ``scene_sizes`` rows this worker holds), else the configured one."""
    now = time.monotonic()
    memo = _placeholder_memo.get(scene)
    if memo is not None and memo[0] > now:
        return memo[1]
    with event_context(None):
        rows = [scene_sizes.get(service.scene_sizes_key(scene, p)) for p in range(settings.topic_partitions)]
    size = service.choose_placeholder(rows, settings.placeholder)
    if len(_placeholder_memo) > 10_000:
        _placeholder_memo.clear()
    _placeholder_memo[scene] = (now + PLACEHOLDER_MEMO_SECONDS, size)
    return size


def lookup(key: str) -> DimensionEntry | None:
    """This worker's entry for ``key`` (call on the key's owner)."""
    with event_context(None):
        return dimensions.get(key)


async def _probe_inline(raw: bytes) -> ProbeResult:
    if len(raw) > THREAD_THRESHOLD:
        return await asyncio.to_thread(probe_bytes, raw)
    return probe_bytes(raw)


async def compute(req: DimensionRequest) -> DimensionResult:
    """Size of an inline (base64) image; recorded for later lookups unless anomalous.

    Raises InputError (400) for bad base64 or bytes that are not a known image."""
    assert req.data is not None
    if len(req.data) > THREAD_THRESHOLD:
        raw = await asyncio.to_thread(service.decode_base64, req.data, max_bytes=settings.max_image_bytes)
    else:
        raw = service.decode_base64(req.data, max_bytes=settings.max_image_bytes)
    probe = await _probe_inline(raw)
    now = time.time()
    flagged = service.anomaly(probe.width, probe.height)
    metrics.inc("dimension_computed_total")
    update = DimensionUpdate(
        session_id=req.session_id, resource=req.resource, scene=req.scene, url=req.url,
        requested_at=req.requested_at, source="computed", fetched_at=now, width=probe.width,
        height=probe.height, raw_width=probe.raw_width, raw_height=probe.raw_height,
        orientation=probe.orientation, format=probe.format, bytes_read=len(raw), flagged=flagged,
        notify=False,
    )
    if flagged is None:
        await dimension_updates_topic.send(key=key_of(req), value=update)
    else:
        metrics.inc("dimension_anomalies_total", source="computed")
    return service.result_from_update(update, placeholder=settings.placeholder)


#: (URL, refresh) → the waiters of one batch: one fetch job per URL, not per item.
Jobs = dict[tuple[str, bool], list[Waiter]]


async def enqueue_fetch(req: DimensionRequest, jobs: Jobs | None = None) -> bool:
    """One FetchJob for this (URL, key) unless this worker sent one in the last few
    seconds.  True if a job was sent (or, with ``jobs``, collected for
    :func:`send_jobs`)."""
    assert req.url is not None
    claim = (req.url, key_of(req), req.refresh)
    if not recent_enqueues.claim(claim):
        return False
    if jobs is not None:
        jobs.setdefault((req.url, req.refresh), []).append(
            Waiter(session_id=req.session_id, resource=req.resource, scene=req.scene, requested_at=req.requested_at))
        return True
    job = FetchJob(url=req.url, requested_at=req.requested_at, refresh=req.refresh,
                   waiters=[Waiter(session_id=req.session_id, resource=req.resource, scene=req.scene,
                                   requested_at=req.requested_at)])
    try:
        # Buffered, not awaited: the answer never waits on Kafka either.  If the
        # produce fails, the claim expires and the key's next request enqueues again.
        dimension_fetch_topic.send_soon(key=req.url, value=job)
    except Exception:
        recent_enqueues.release(claim)
        raise
    metrics.inc("dimension_fetch_jobs_total")
    return True


def send_jobs(jobs: Jobs, *, requested_at: float) -> None:
    """One FetchJob per URL of a batch, carrying all its waiters (buffered)."""
    for (url, refresh), waiters in jobs.items():
        job = FetchJob(url=url, requested_at=requested_at, refresh=refresh, waiters=waiters)
        try:
            dimension_fetch_topic.send_soon(key=url, value=job)
        except Exception:
            for waiter in waiters:
                recent_enqueues.release((url, service.waiter_key(waiter), refresh))
            raise
        metrics.inc("dimension_fetch_jobs_total")


async def answer_many(items: list[DimensionRequest], *, via: str) -> list[DimensionResult]:
    """The immediate answers to the items of a batch whose keys this worker owns (or
    that carry ``data``), in order; one fetch job per new URL.  An item whose image
    is bad is answered with the placeholder and the error, never failing the rest."""
    jobs: Jobs = {}
    out: list[DimensionResult] = []
    try:
        for req in items:
            try:
                result = await answer(req, via=via, jobs=jobs)
            except InputError as exc:
                result = _error_result(req, exc)
            assert result is not None  # every item has a url or data
            out.append(result)
    finally:
        send_jobs(jobs, requested_at=time.time())
    metrics.inc("dimension_batch_items_total", len(items), via=via)
    return out


async def answer(req: DimensionRequest, *, via: str, jobs: Jobs | None = None) -> DimensionResult | None:
    """The immediate answer to a request (on the worker owning its key): computed
    from ``data``, the cached entry, or the placeholder plus an enqueued fetch.
    ``None``: a lookup without url/data found nothing.  ``jobs``: collect the fetch
    job instead of sending it (a batch sends one per URL)."""
    if req.data is not None:
        result = await compute(req)
        metrics.inc("dimension_requests_total", source="computed", via=via)
        return result
    entry = lookup(key_of(req))
    usable = entry is not None and (req.url is None or entry.url == req.url)
    if usable and entry is not None:
        metrics.inc("dimension_cache_hits_total")
        metrics.inc("dimension_requests_total", source="cache", via=via)
        if req.refresh and req.url is not None:
            await enqueue_fetch(req, jobs)  # the cached size now, the new one when fetched
        return service.result_from_entry(req.session_id, req.resource, req.scene, entry)
    if req.url is None:
        return None
    failure = None if req.refresh else remembered_failures.get(req.url)
    if failure is not None:
        # A broken URL (the negative cache): no fetch job until the failure expires.
        metrics.inc("dimension_negative_cache_hits_total", reason=failure.code)
        metrics.inc("dimension_placeholders_total")
        metrics.inc("dimension_requests_total", source="placeholder", via=via)
        return service.placeholder_result(req, placeholder_for(req.scene), error=failure)
    metrics.inc("dimension_cache_misses_total")
    metrics.inc("dimension_placeholders_total")
    metrics.inc("dimension_requests_total", source="placeholder", via=via)
    await enqueue_fetch(req, jobs)
    return service.placeholder_result(req, placeholder_for(req.scene))


# --- requests (Kafka) ---------------------------------------------------------------
def _error_result(req: DimensionRequest, exc: ImagestreamError) -> DimensionResult:
    return service.placeholder_result(req, placeholder_for(req.scene),
                                      error=ErrorInfo(code=exc.code, message=exc.message))


@app.agent(dimension_requests_topic)
async def answer_dimension_requests(stream: faust.StreamT[bytes]) -> None:
    """Answer each DimensionRequest on ``dimension-results`` at once; bad events are
    dead-lettered and the partition moves on."""
    async for event in stream.events():
        raw = event.value
        topic = event.message.topic
        try:
            doc = _json(raw)
            if service.is_batch(doc):
                await _answer_batch_event(event, service.parse_batch(doc, max_items=settings.dimension_batch_max))
                continue
            req = service.parse_request(doc)
        except InvalidRequest as exc:
            await dead_letter(source_topic=topic, key=event.key, raw=raw, code=exc.code, reason=exc.message)
            continue
        key = key_of(req)
        try:
            owner = partition_for(key, settings.topic_partitions)
            if event.message.partition != owner:
                # Keyed differently (or by another partitioner, e.g. librdkafka's
                # CRC32): hand it to the partition that owns the key's table entry.
                await dimension_requests_topic.send(key=key, value=req, partition=owner)
                continue
            try:
                result = await answer(req, via="kafka")
            except InputError as exc:
                result = _error_result(req, exc)
            if result is not None:
                await dimension_results_topic.send(key=key, value=result)
        except Exception as exc:  # a bug must not kill the agent or block the partition
            log.exception("dimension request %s failed", key)
            await dead_letter(source_topic=topic, key=event.key, raw=raw, code="internal_error",
                              reason=f"{type(exc).__name__}: {exc}")


async def _answer_batch_event(event: faust.EventT, batch: service.BatchRequest) -> None:
    """One answer event on ``dimension-results`` for a whole batch, keyed as the
    request was (else ``session_id|scene``).  Items owned by other workers are asked
    of them over HTTP; any partition may carry a batch."""
    key = event.key if isinstance(event.key, str) and event.key else service.batch_key(batch.session_id,
                                                                                       batch.scene)
    try:
        items = await answer_batch(batch, via="kafka", local=answer_many)
    except Exception as exc:  # noqa: BLE001 - a bug must not kill the agent
        log.exception("dimension batch %s failed", key)
        await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value, code="internal_error",
                          reason=f"{type(exc).__name__}: {exc}")
        return
    body: dict[str, Any] = {"session_id": batch.session_id, "scene": batch.scene, "items": items}
    if batch.request_id is not None:
        body["request_id"] = batch.request_id
    await dimension_results_topic.send(key=key, value=orjson.dumps(body))


def _json(raw: Any) -> Any:
    import json

    if isinstance(raw, (bytes, bytearray)):
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest(f"event value is not JSON: {exc}", code="invalid_json") from None
    return raw


# --- fetches ------------------------------------------------------------------------
_fetch_gate: asyncio.Semaphore | None = None
_held_gate: asyncio.Semaphore | None = None
_tasks: set[asyncio.Task[None]] = set()


def _gates() -> tuple[asyncio.Semaphore, asyncio.Semaphore]:
    global _fetch_gate, _held_gate
    if _fetch_gate is None or _held_gate is None:
        _fetch_gate = asyncio.Semaphore(FETCH_CONCURRENCY)
        _held_gate = asyncio.Semaphore(MAX_HELD_JOBS)
    return _fetch_gate, _held_gate


def _parse_job(raw: bytes) -> FetchJob:
    obj = _json(raw)
    if not isinstance(obj, dict) or not isinstance(obj.get("url"), str):
        raise InvalidRequest("fetch job needs a url", code="invalid_fetch_job")
    try:
        job = FetchJob.from_data(obj)
        service.check_url(job.url)
        waiters = [w if isinstance(w, Waiter) else Waiter.from_data(w) for w in (job.waiters or [])]
    except InvalidRequest:
        raise
    except Exception as exc:  # noqa: BLE001 - any shape error is a bad event
        raise InvalidRequest(f"malformed fetch job: {exc}", code="invalid_fetch_job") from None
    return FetchJob(url=job.url, requested_at=float(job.requested_at or time.time()),
                    refresh=bool(job.refresh), waiters=waiters)


def _ack_all(events: list[faust.EventT], held: asyncio.Semaphore) -> None:
    for event in events:
        event.ack()
        held.release()


async def _deliver_then_ack(sends: list[Any], events: list[faust.EventT], held: asyncio.Semaphore) -> None:
    """Ack ``events`` once every send in ``sends`` (futures of topic.send) is on Kafka."""
    try:
        if sends:
            await asyncio.gather(*sends)
    except Exception:  # noqa: BLE001
        # Acked anyway: an unacked offset would hold back every later commit of the
        # partition, and the waiters' next request enqueues the fetch again.
        log.exception("delivering dimension updates failed")
    _ack_all(events, held)


def _still_assigned(event: faust.EventT) -> bool:
    try:
        return event.message.tp in app.consumer.assignment()
    except Exception:  # noqa: BLE001 - consumer not started (tests)
        return True


def _url_entry(outcome: Any, url: str, fetched_at: float) -> UrlEntry:
    """The table entry of a fetch, keyed by the URL as asked (not after redirects)."""
    return UrlEntry(url=url, width=outcome.width, height=outcome.height, raw_width=outcome.raw_width,
                    raw_height=outcome.raw_height, orientation=outcome.orientation, format=outcome.format,
                    fetched_at=fetched_at, bytes_read=outcome.bytes_read, etag=outcome.etag,
                    last_modified=outcome.last_modified)


async def _publish(updates: list[DimensionUpdate]) -> list[Any]:
    return [await dimension_updates_topic.send(key=key_of(u), value=u) for u in updates]


def _write_url_entry(url: str, pending: service.Pending[faust.EventT], entry: UrlEntry) -> None:
    """Into url_dimensions, in the context of a held job (the URL's partition)."""
    if pending.holds and _still_assigned(pending.holds[0]):
        with event_context(pending.holds[0]):
            url_dimensions[url] = entry


async def _run_fetch(url: str, pending: service.Pending[faust.EventT], previous: UrlEntry | None = None) -> None:
    """One header fetch; its outcome goes to url_dimensions and to every waiter.

    ``previous``: the URL's entry, when it is to be revalidated (a conditional GET;
    a 304 renews it).  Otherwise (and for ``refresh``) an unconditional GET."""
    fetch_gate, held = _gates()
    entry: UrlEntry | None = None
    error: ErrorInfo | None = None
    http_status: int | None = None
    retry_after: float | None = None
    retry_at = 0.0
    outcome: Any = None
    # A capped host's slot first, then a worker slot: fetches queued for a fragile
    # origin never hold worker slots that other hosts could use.
    host_gate = host_policy.gate(urlsplit(url).hostname or "") or contextlib.nullcontext()
    try:
        async with host_gate, fetch_gate:
            fetched_at = time.time()  # the fetch's start: a later start always wins
            metrics.inc("dimension_fetches_total")
            try:
                if previous is not None:
                    outcome = await revalidate_dimensions(runtime().guarded_http, url, settings=settings,
                                                          etag=previous.etag, last_modified=previous.last_modified,
                                                          policy=host_policy)
                else:
                    outcome = await fetch_dimensions(runtime().guarded_http, url, settings=settings,
                                                     policy=host_policy)
            except FetchError as exc:
                error = ErrorInfo(code=exc.reason, message=exc.message)
                http_status = exc.http_status if isinstance(exc, HTTPStatusError) else None
                retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug in one fetch fails that fetch only
                log.exception("dimension fetch of %s crashed", redact_url(url))
                error = ErrorInfo(code="internal_error", message=f"{type(exc).__name__}")
        if previous is not None:
            result = "failed" if outcome is None else "not_modified" if isinstance(outcome, NotModified) else "modified"
            metrics.inc("dimension_revalidations_total", result=result)
        if isinstance(outcome, NotModified):
            assert previous is not None
            entry = service.revalidated_entry(previous, fetched_at=fetched_at, etag=outcome.etag,
                                              last_modified=outcome.last_modified)
            _write_url_entry(url, pending, entry)
        elif outcome is not None:
            metrics.inc("dimension_bytes_read_total", outcome.bytes_read)
            entry = _url_entry(outcome, url, fetched_at)
            flagged = service.anomaly(entry.width, entry.height)
            if flagged is not None:
                metrics.inc("dimension_anomalies_total", source="fetched")
                log.warning("anomalous size %dx%d at %s: not cached per session", entry.width, entry.height,
                            redact_url(url))
                entry = service.flagged_entry(entry, flagged, ttl=settings.dimension_failure_ttl)
                if settings.dimension_failure_ttl > 0:
                    _write_url_entry(url, pending, entry)
            else:
                _write_url_entry(url, pending, entry)
        else:
            assert error is not None
            metrics.inc("dimension_fetch_failures_total", reason=error.code)
            log.warning("dimension fetch failed (%s): %s", error.code, error.message)
            if pending.holds and _still_assigned(pending.holds[0]):
                with event_context(pending.holds[0]):  # the URL's partition
                    failed = service.remember_failure(
                        url_dimensions.get(url), url, error, http_status=http_status, now=time.time(),
                        permanent_ttl=settings.dimension_failure_ttl,
                        transient_ttl=settings.dimension_transient_failure_ttl, url_ttl=settings.dimension_url_ttl,
                        retry_after=retry_after,
                    )
                    if failed is not None:
                        url_dimensions[url] = failed
                        retry_at = failed.retry_at
                        kind = "permanent" if service.failure_is_permanent(error.code, http_status) else "transient"
                        metrics.inc("dimension_failures_remembered_total", kind=kind)
    except asyncio.CancelledError:
        _pending.finish(url, pending)
        raise
    except Exception:  # noqa: BLE001
        log.exception("dimension fetch bookkeeping for %s failed", redact_url(url))
        error = error or ErrorInfo(code="internal_error", message="internal error")
    done = _pending.finish(url, pending)  # no await since the table write: later jobs see it
    updates: list[DimensionUpdate] = []
    for waiter in done.waiters.values():
        if entry is not None:
            update = service.update_from_url_entry(entry, waiter, source="fetched")
        else:
            assert error is not None
            update = service.failed_update(url, waiter, error, at=time.time(), retry_at=retry_at)
        updates.append(update)
    try:
        sends = await _publish(updates)
    except Exception:  # noqa: BLE001 - see _deliver_then_ack
        log.exception("publishing dimension updates for %s failed", redact_url(url))
        sends = []
    await _deliver_then_ack(sends, done.holds, held)


def _spawn(coro: Any) -> None:
    task = asyncio.create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _handle_job(event: faust.EventT, job: FetchJob, held: asyncio.Semaphore) -> None:
    if job.url in _pending:
        _pending.join(job.url, job.waiters, event, refresh=job.refresh)
        metrics.inc("dimension_fetches_coalesced_total")
        return
    entry = url_dimensions.get(job.url)  # in the event's context: the URL's partition
    now = time.time()
    plan = service.plan_fetch(entry, refresh=job.refresh, now=now, ttl=settings.dimension_url_ttl)
    if plan == service.CACHED or plan == service.FAILED:
        assert entry is not None
        if plan == service.CACHED:
            metrics.inc("dimension_url_cache_hits_total")
            updates = [service.update_from_url_entry(entry, w, source="cache") for w in job.waiters]
        else:
            assert entry.error is not None
            metrics.inc("dimension_url_negative_hits_total", reason=entry.error.code)
            updates = [service.failed_update(job.url, w, entry.error, at=now, retry_at=entry.retry_at)
                       for w in job.waiters]
        sends = await _publish(updates)
        _spawn(_deliver_then_ack(sends, [event], held))
        return
    pending = _pending.join(job.url, job.waiters, event, refresh=job.refresh)
    assert pending is not None
    _spawn(_run_fetch(job.url, pending, entry if plan == service.REVALIDATE else None))


@app.agent(dimension_fetch_topic)
async def fetch_urls(stream: faust.StreamT[bytes]) -> None:
    """One background header fetch per URL; each job acked when its outcome is on Kafka."""
    async for event in stream.noack().events():
        try:
            job = _parse_job(event.value)
        except InvalidRequest as exc:
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value, code=exc.code,
                              reason=exc.message)
            event.ack()
            continue
        _, held = _gates()
        await held.acquire()  # released when the job's event is acked (or given up)
        try:
            await _handle_job(event, job, held)
        except Exception as exc:  # noqa: BLE001 - never kill the agent
            log.exception("fetch job for %s failed", redact_url(job.url))
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value,
                              code="internal_error", reason=f"{type(exc).__name__}: {exc}")
            event.ack()
            held.release()


# --- updates ------------------------------------------------------------------------
def _parse_update(raw: bytes) -> DimensionUpdate:
    try:
        update = DimensionUpdate.loads(raw)
        if not (isinstance(update.session_id, str) and isinstance(update.resource, str)
                and isinstance(update.scene, str)):
            raise TypeError("session_id, resource and scene must be strings")
        return update
    except Exception as exc:  # noqa: BLE001
        raise InvalidRequest(f"malformed dimension update: {exc}", code="invalid_update") from None


@app.agent(dimension_updates_topic)
async def apply_dimension_updates(stream: faust.StreamT[bytes]) -> None:
    """Write accepted updates to ``dimensions`` (latest wins), count the scene's sizes,
    and publish what requesters learn on ``dimension-results``."""
    async for event in stream.events():
        try:
            update = _parse_update(event.value)
        except InvalidRequest as exc:
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value, code=exc.code,
                              reason=exc.message)
            continue
        key = key_of(update)
        if update.url is not None:
            # The outcome is here: this key's next request may enqueue again (a
            # failure is retried at once).  Views and request agents answering this
            # key run on this worker, as they route by the same key.
            recent_enqueues.release((update.url, key, False))
            recent_enqueues.release((update.url, key, True))
            if update.error is not None and update.retry_at > 0:
                remembered_failures.remember(update.url, update.error, update.retry_at, at=update.fetched_at)
            elif update.error is None and update.flagged is None:
                remembered_failures.forget(update.url)  # it works now (e.g. after a refresh)
        try:
            notify = update.notify
            if update.error is None and update.flagged is None:
                current = dimensions.get(key)
                if service.accept_update(current, update):
                    dimensions[key] = service.entry_from_update(update)
                    if current is None or (current.url, current.width, current.height) != (
                        update.url, update.width, update.height
                    ):
                        stats_key = service.scene_sizes_key(update.scene, event.message.partition)
                        scene_sizes[stats_key] = service.record_size(
                            scene_sizes.get(stats_key), update.width, update.height, now=time.time()
                        )
                else:
                    metrics.inc("dimension_stale_updates_total")
                    notify = False
            if notify:
                result = service.result_from_update(update, placeholder=placeholder_for(update.scene))
                await dimension_results_topic.send(key=key, value=result)
        except Exception as exc:  # noqa: BLE001 - never kill the agent
            log.exception("dimension update for %s failed", key)
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value,
                              code="internal_error", reason=f"{type(exc).__name__}: {exc}")
