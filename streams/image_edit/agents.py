"""Agents of the image-edit pipeline (DESIGN.md §6).

    image-edit-requests ──plan_tasks──▶ imagestream-task-updates (plan)
                                   └──▶ image-edit-jobs (one per image, keyed by cache key)
    image-edit-jobs ──edit_images──▶ imagestream-task-updates (result)
    imagestream-task-updates ──aggregate_tasks──▶ task_status table
                                              ├─▶ image-edit-results (ImageResult, once per image)
                                              └─▶ image-edit-task-status (TaskStatus snapshots)

A task's plan is written before any of its jobs exist, and both go to the same
partition of ``imagestream-task-updates`` (keyed by task_id), so the aggregator
always sees the plan first.  Agents are thin; the work is in plain functions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import faust

from streams.app import app, settings
from streams.blobs import BlobStoreNotShared
from streams.deadletter import dead_letter
from streams.errors import ImagestreamError, InputError, InvalidImage, InvalidRequest
from streams.image_edit import state
from streams.image_edit.block_board import follow_blocks
from streams.image_edit.blocks import BlockEvent, ModelBlocks
from streams.image_edit.executor import EditExecutor
from streams.image_edit.images import ImageInfo, inspect_image_in_thread, recent_images
from streams.image_edit.keys import cache_keys_for, image_sha256
from streams.image_edit.models import (
    CacheEntry,
    ErrorInfo,
    ImageJob,
    ImageJobBatch,
    ImageRef,
    ImageResult,
    JobRef,
    TaskRequest,
    TaskStatus,
    TaskUpdate,
    read_job_batch,
    results_update,
)
from streams.image_edit.presets import load_presets
from streams.image_edit.tables import current_status, edit_cache, last_statuses, task_status
from streams.image_edit.validation import validate_edit_request, validate_groups, validate_task_request
from streams.publish import on_delivery, partition_for, publish
from streams.routing import event_context
from streams.runtime import runtime
from streams.stats import metrics
from streams.topics import (
    image_edit_jobs_topic,
    image_edit_requests_topic,
    image_edit_results_topic,
    image_edit_task_status_topic,
    task_updates_topic,
    upstream_blocks_topic,
)
from config.catalogue import load_catalogue
from streams.upstream import DashScopeEditor, region_base_url

log = logging.getLogger(__name__)

#: Jobs of one worker waiting for or in an upstream call; past it the agent pauses.
MAX_PENDING_JOBS = 2000
#: Images of one task resolved and inspected at once.
PLAN_PARALLELISM = 4
#: Aggregator batches: at most this many events, or what arrived within BATCH_WITHIN seconds.
AGGREGATE_BATCH = 1000
BATCH_WITHIN = 0.005


# --- plan ---------------------------------------------------------------------------
async def fetch_image_bytes(ref: ImageRef) -> bytes:
    """The bytes of one input image, wherever it is; InputError if it can't be had."""
    rt = runtime()
    if ref.blob:
        try:
            return await rt.blobs.get(ref.blob)
        except FileNotFoundError:
            raise InvalidRequest(f"blob {ref.blob} is not in the blob store", code="blob_not_found") from None
        except BlobStoreNotShared as exc:  # missing because the workers' stores differ
            raise InvalidRequest(exc.message, code=exc.code) from None
    if ref.data:
        return base64.b64decode(ref.data, validate=True)
    assert ref.url is not None
    try:
        async with rt.guarded_http.get(ref.url, timeout=aiohttp.ClientTimeout(total=30)) as resp:
            if resp.status != 200:
                raise InvalidImage(f"image URL answered HTTP {resp.status}", code="image_fetch_failed")
            data = await resp.content.read(settings.max_image_bytes + 1)
    except ImagestreamError:
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise InvalidImage(f"image URL could not be fetched: {type(exc).__name__}", code="image_fetch_failed") from None
    if len(data) > settings.max_image_bytes:
        from streams.errors import ImageTooLarge

        raise ImageTooLarge(f"image URL body over {settings.max_image_bytes} bytes")
    return data


async def prepare_image(ref: ImageRef) -> tuple[str, ImageInfo]:
    """Resolve, validate and store one input image; returns (blob sha, info)."""
    data = await fetch_image_bytes(ref)
    sha = image_sha256(data)
    info = recent_images.get(sha)
    if info is None:
        info = await inspect_image_in_thread(data, max_bytes=settings.max_image_bytes,
                                             max_pixels=settings.max_image_pixels)
        recent_images.put(info)
    if not ref.blob:
        await runtime().blobs.put(data, sha)
    return sha, info


async def plan_task(task: TaskRequest) -> list[asyncio.Future[Any]]:
    """Fan a validated task out into jobs; failed images get their result at once.

    Returns the delivery futures of everything it published.  The plan is handed to
    the producer before any job, on the partition its results will use, so the
    aggregator always reads it first without waiting for its delivery here.
    """
    edit_type, prompt, params, model = validate_edit_request(
        task.edit_type, task.edit_params, len(task.images), settings, load_presets()
    )
    groups = validate_groups(task.groups, len(task.images), load_catalogue().model(model).max_images)
    gate = asyncio.Semaphore(PLAN_PARALLELISM)

    async def prepare(ref: ImageRef) -> tuple[str, ImageInfo] | InputError:
        async with gate:
            try:
                return await prepare_image(ref)
            except InputError as exc:
                return exc
            except (ValueError, TypeError) as exc:  # bad base64 and the like
                return InvalidImage(f"image could not be read: {exc}")

    # Images this worker has seen (uploaded through its API, or planned before) need
    # no I/O at all; only the others are fetched and inspected, a few at a time.
    prepared: list[tuple[str, ImageInfo] | InputError | None] = [
        (ref.blob, info) if ref.blob and (info := recent_images.get(ref.blob)) is not None else None
        for ref in task.images
    ]
    missing = [i for i, item in enumerate(prepared) if item is None]
    for i, item in zip(missing, await asyncio.gather(*(prepare(task.images[i]) for i in missing)), strict=True):
        prepared[i] = item
    key_for = cache_keys_for(model=model, edit_type=edit_type, prompt=prompt, params=params)
    now = time.time()
    units = groups or [[i] for i in range(len(task.images))]
    plan = TaskUpdate(task_id=task.task_id, kind="plan", total_images=len(units),
                      created_at=task.submitted_at or now)
    sends = [await publish(task_updates_topic, task.task_id, plan)]
    failed: list[ImageResult] = []
    by_partition: dict[int, list[ImageJob]] = {}
    for index, group in enumerate(units):
        # One call (and one result) per group; the output follows the last input.
        last = task.images[group[-1]]
        items = [prepared[i] for i in group]
        error = next((item for item in items if isinstance(item, InputError)), None)
        if error is not None:
            failed.append(ImageResult(task_id=task.task_id, index=index, filename=last.filename, status="failed",
                                      inputs=group, error=ErrorInfo(code=error.code, message=error.message)))
            metrics.inc("images_failed_total", code=error.code)
            continue
        shas = [item[0] for item in items]  # type: ignore[index]
        identities = [item[1].identity for item in items]  # type: ignore[index]
        # Every input's pixel identity, in order ([1,0] and [0,1] differ); a lone image
        # keys as it always did.
        key = key_for(identities[0] if len(group) == 1 else json.dumps(identities))
        job = ImageJob(task_id=task.task_id, index=index, filename=last.filename, edit_type=edit_type,
                       prompt=prompt, params=params, cache_key=key, image_sha256=shas[-1], blob=shas[-1],
                       model=model, blobs=shas if len(group) > 1 else [], inputs=group,
                       submitted_at=task.submitted_at or now)
        by_partition.setdefault(partition_for(key, settings.topic_partitions), []).append(job)
    for partition, jobs in sorted(by_partition.items()):
        sends.append(await publish(image_edit_jobs_topic, jobs[0].cache_key, ImageJobBatch(jobs=jobs),
                                   partition=partition))
    if failed:
        sends.append(await publish(task_updates_topic, task.task_id,
                                   TaskUpdate(task_id=task.task_id, kind="results", results=failed)))
    metrics.inc("tasks_planned_total")
    metrics.inc("images_planned_total", len(task.images))
    return sends


async def refuse_task(task_id: str, error: ImagestreamError) -> None:
    """A task that can't run at all: failed status (so its submitter learns why)."""
    update = TaskUpdate(task_id=task_id, kind="plan", total_images=0, created_at=time.time(),
                        error=ErrorInfo(code=error.code, message=error.message))
    await (await publish(task_updates_topic, task_id, update))


@app.on_before_shutdown.connect  # type: ignore[misc]
async def _close_editor(app: object, **kwargs: object) -> None:
    if _executor is not None:
        await _executor.editor.aclose()


def _ack_when_delivered(event: faust.EventT, futures: list[asyncio.Future[Any]]) -> None:
    """Ack the request once all it produced is durable (a crash before replays it)."""
    if not futures:
        event.ack()
        return
    on_delivery(asyncio.gather(*futures), event.ack)


@app.agent(image_edit_requests_topic)
async def plan_tasks(stream: faust.StreamT[bytes]) -> None:
    """Validate each TaskRequest and fan it out; a bad one is dead-lettered.

    The agent never waits on Kafka round trips: each request's offset is acked
    when what it produced has been delivered."""
    async for event in stream.noack().events():
        raw = event.value
        try:
            task = validate_task_request(raw)
        except InvalidRequest as exc:
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=raw, code=exc.code,
                              reason=exc.message)
            event.ack()
            continue
        try:
            _ack_when_delivered(event, await plan_task(task))
            continue
        except InputError as exc:
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=raw, code=exc.code,
                              reason=exc.message)
            await refuse_task(task.task_id, exc)
        except Exception as exc:  # a bug must not kill the agent or block the partition
            log.exception("planning task %s failed", task.task_id)
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=raw, code="internal_error",
                              reason=f"{type(exc).__name__}: {exc}")
            await refuse_task(task.task_id, ImagestreamError("internal error while planning the task"))
        event.ack()


# --- edit ---------------------------------------------------------------------------
_executor: EditExecutor | None = None


def executor() -> EditExecutor:
    global _executor
    if _executor is None:
        rt = runtime()
        # DASHSCOPE_HTTP_BASE_URL (emulator, proxy) wins; else the region's endpoint.
        base_url = settings.dashscope_base_url or region_base_url(
            settings.region, catalogue_url=load_catalogue().region(settings.region).base_url,
            workspace_id=settings.dashscope_workspace_id)
        editor = DashScopeEditor(model=settings.model, api_key=settings.dashscope_api_key,
                                 base_url=base_url, timeout=settings.upstream_timeout)
        _executor = EditExecutor(settings=settings, blobs=rt.blobs, editor=editor, http=rt.http, blocks=blocks)
        _executor.on_block_change = _tell_workers
        metrics.gauge("upstream_in_flight", lambda: [
            ((("partition", str(p)),), float(w.in_flight)) for p, w in sorted(_executor.windows.items())
        ] if _executor else [])
    return _executor


#: The models this worker must not call now (set here or learnt from the others).
blocks = ModelBlocks(probe_interval=settings.upstream_probe_interval)
metrics.gauge("upstream_blocked", lambda: [((("code", b.code), ("model", b.model)), 1.0) for b in blocks.all()])
_telling: set[asyncio.Task[Any]] = set()


def _tell_workers(event: BlockEvent) -> None:
    """Publish a block set or lifted here; every worker (this one too) reads it back."""
    task = asyncio.ensure_future(publish(upstream_blocks_topic, event.model, event.dumps()))
    _telling.add(task)
    task.add_done_callback(_telling.discard)


@app.task
async def follow_upstream_blocks() -> None:
    """Learn the blocks other workers found, without paying a request for them."""
    await follow_blocks(settings.kafka_bootstrap, upstream_blocks_topic.get_topic_name(),
                        blocks.apply)


def fresh_entry(entry: CacheEntry | None, now: float) -> CacheEntry | None:
    """``entry`` unless it is older than ``IMAGESTREAM_CACHE_TTL`` (then: a miss)."""
    if entry is None or settings.cache_ttl is None:
        return entry
    return entry if now - entry.created_at <= settings.cache_ttl else None


def cached_entry(cache_key: str) -> CacheEntry | None:
    """The cache entry for ``cache_key``: decoded already, or read from the table once."""
    entries = executor().entries
    entry = entries.get(cache_key)
    if entry is None:
        entry = edit_cache.get(cache_key)
        if entry is not None:
            entries.put(cache_key, entry)
    return fresh_entry(entry, time.time())


@app.on_partitions_revoked.connect  # type: ignore[misc]
async def _forget_decoded_entries(app: faust.App, revoked: Any, **kwargs: Any) -> None:
    """Tables of revoked partitions may change on another worker: drop decoded copies."""
    if _executor is not None:
        _executor.entries.clear()


class BatchAck:
    """Acks a job batch's event once every job in it has its result in Kafka."""

    def __init__(self, event: faust.EventT, pending: int) -> None:
        self.event = event
        self.pending = pending
        if pending == 0:
            event.ack()

    def done(self, n: int = 1) -> None:
        self.pending -= n
        if self.pending == 0:
            self.event.ack()


async def _send_results(task_id: str, results: Sequence[ImageResult | Mapping[str, Any]],
                        acks: list[BatchAck]) -> None:
    """Publish outcomes of one task's jobs; each job counts as done once it is durable."""

    def delivered() -> None:
        for ack in acks:
            ack.done()

    on_delivery(await publish(task_updates_topic, task_id, results_update(task_id, results)), delivered)


async def _finish_job(job: ImageJob, partition: int, ack: BatchAck, gate: asyncio.Semaphore) -> None:
    try:
        outcome = await executor().run(job, partition=partition)
        if outcome.new_entry is not None and ack.event.message.tp in app.consumer.assignment():
            # Only completed results are cached, and only while this worker still owns
            # the partition (after a rebalance the new owner replays the job).
            edit_cache[job.cache_key] = outcome.new_entry
            # The cache entry must be in Kafka before the result is: a worker killed in
            # between would otherwise replay the job as a miss and pay for it twice.
            await app.producer.flush()
        await _send_results(job.task_id, [outcome.result], [ack])
    except asyncio.CancelledError:
        raise  # not acked: the partition's next owner runs it again (idempotent by key)
    except Exception:
        log.exception("job %s/%d crashed", job.task_id, job.index)
        failed = ImageResult(task_id=job.task_id, index=job.index, filename=job.filename, status="failed",
                             error=ErrorInfo(code="internal_error", message="internal error"),
                             cache_key=job.cache_key, source_blob=job.blob)
        await _send_results(job.task_id, [failed], [ack])
    finally:
        gate.release()


@app.agent(image_edit_jobs_topic)
async def edit_images(stream: faust.StreamT[bytes]) -> None:
    """Each event holds one task's jobs for this partition.  Cache hits are answered
    at once, in one update; misses run in the background, so a slow upstream call
    never blocks the partition.  An event's offset is acked only when the results of
    all its jobs are durable in Kafka (Faust commits up to the first unacked offset),
    so a crash replays exactly the unfinished batches (idempotent by cache key and by
    task/index).  Not ``take_events``: it acks every event of a batch itself."""
    gate = asyncio.Semaphore(MAX_PENDING_JOBS)
    pending: set[asyncio.Task[None]] = set()
    async for event in stream.noack().events():
        started = time.monotonic()
        try:
            jobs, invalidate = read_job_batch(event.value)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad event
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value,
                              code="invalid_job", reason=f"{type(exc).__name__}: {exc}"[:500])
            event.ack()
            continue
        ack = BatchAck(event, len(jobs))
        hits: dict[str, list[tuple[JobRef, CacheEntry]]] = {}
        with event_context(event):
            for key in invalidate:
                executor().entries.pop(key)
                if edit_cache.get(key) is not None:
                    del edit_cache[key]
                    metrics.inc("cache_invalidations_total")
            for raw in jobs:
                ref = JobRef.of(raw)
                cached = cached_entry(ref.cache_key)
                if cached is None:
                    await gate.acquire()
                    task = asyncio.create_task(  # copies the event context: cache writes land right
                        _finish_job(ImageJob(**raw), event.message.partition, ack, gate))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    continue
                hits.setdefault(ref.task_id, []).append((ref, cached))
        for task_id, found in hits.items():
            await _send_results(task_id, executor().hits(found, started), [ack] * len(found))


# --- aggregate ----------------------------------------------------------------------
@app.agent(task_updates_topic)
async def aggregate_tasks(stream: faust.StreamT[bytes]) -> None:
    """Fold plans and results into ``task_status``; publish each new result once and
    one snapshot per changed task per batch."""
    async for events in stream.take_events(AGGREGATE_BATCH, within=BATCH_WITHIN):
        changed: dict[str, tuple[faust.EventT, TaskStatus]] = {}
        new_results: list[ImageResult] = []
        now = time.time()
        for event in events:
            try:
                update = TaskUpdate.loads(event.value)
                current = changed[update.task_id][1] if update.task_id in changed else current_status(update.task_id)
                status, fresh = state.fold_update(current, update, now)
                if not fresh:  # read again after a crash? (see state.already_folded)
                    fresh = state.already_folded(current, update)
            except Exception as exc:  # noqa: BLE001 - a bad update must not stop the others
                await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value,
                                  code="invalid_update", reason=f"{type(exc).__name__}: {exc}"[:500])
                continue
            new_results.extend(fresh)
            if status is not current:
                changed[update.task_id] = (event, status)
        for result in new_results:
            await publish(image_edit_results_topic, result.task_id, result)
        for task_id, (event, status) in changed.items():
            with event_context(event):
                task_status[task_id] = status
            last_statuses.put(task_id, status)
            await publish(image_edit_task_status_topic, task_id, status)
            if state.is_terminal(status):
                metrics.inc("tasks_finished_total", status=status.status)
