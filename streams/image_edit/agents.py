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
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import faust
from faust.streams import _current_event

from streams.app import app, settings
from streams.deadletter import dead_letter
from streams.errors import ImagestreamError, InputError, InvalidImage, InvalidRequest
from streams.image_edit import state
from streams.image_edit.executor import EditExecutor
from streams.image_edit.images import ImageInfo, inspect_image_in_thread
from streams.image_edit.keys import cache_key, image_sha256
from streams.image_edit.models import ErrorInfo, ImageJob, ImageRef, ImageResult, TaskRequest, TaskStatus, TaskUpdate
from streams.image_edit.presets import load_presets
from streams.image_edit.tables import edit_cache, task_status
from streams.image_edit.validation import validate_edit_request, validate_task_request
from streams.runtime import runtime
from streams.stats import metrics
from streams.topics import (
    image_edit_jobs_topic,
    image_edit_requests_topic,
    image_edit_results_topic,
    image_edit_task_status_topic,
    task_updates_topic,
)
from streams.upstream import DashScopeEditor

log = logging.getLogger(__name__)

#: Jobs of one worker waiting for or in an upstream call; past it the agent pauses.
MAX_PENDING_JOBS = 2000
#: Images of one task resolved and inspected at once.
PLAN_PARALLELISM = 4
#: Aggregator batch: at most this many updates, or what arrived within AGGREGATE_WITHIN.
AGGREGATE_BATCH = 500
AGGREGATE_WITHIN = 0.005


# --- plan ---------------------------------------------------------------------------
class _InfoMemo:
    """sha256 → ImageInfo for images seen recently (decode + pixel hash once)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, ImageInfo] = OrderedDict()

    def get(self, sha: str) -> ImageInfo | None:
        info = self._items.get(sha)
        if info is not None:
            self._items.move_to_end(sha)
        return info

    def put(self, info: ImageInfo) -> None:
        self._items[info.sha256] = info
        while len(self._items) > self.size:
            self._items.popitem(last=False)


_memo = _InfoMemo()


async def fetch_image_bytes(ref: ImageRef) -> bytes:
    """The bytes of one input image, wherever it is; InputError if it can't be had."""
    rt = runtime()
    if ref.blob:
        try:
            return await rt.blobs.get(ref.blob)
        except FileNotFoundError:
            raise InvalidRequest(f"blob {ref.blob} is not in the blob store", code="blob_not_found") from None
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
    info = _memo.get(sha)
    if info is None:
        info = await inspect_image_in_thread(data, max_bytes=settings.max_image_bytes,
                                             max_pixels=settings.max_image_pixels)
        _memo.put(info)
    if not ref.blob:
        await runtime().blobs.put(data, sha)
    return sha, info


async def plan_task(task: TaskRequest) -> None:
    """Fan a validated task out into jobs; failed images get their result at once."""
    edit_type, prompt, params = validate_edit_request(
        task.edit_type, task.edit_params, len(task.images), settings, load_presets()
    )
    params.pop("prompt", None)
    gate = asyncio.Semaphore(PLAN_PARALLELISM)

    async def prepare(ref: ImageRef) -> tuple[str, ImageInfo] | InputError:
        async with gate:
            try:
                return await prepare_image(ref)
            except InputError as exc:
                return exc
            except (ValueError, TypeError) as exc:  # bad base64 and the like
                return InvalidImage(f"image could not be read: {exc}")

    prepared = await asyncio.gather(*(prepare(ref) for ref in task.images))
    now = time.time()
    plan = TaskUpdate(task_id=task.task_id, kind="plan", total_images=len(task.images),
                      created_at=task.submitted_at or now)
    await (await task_updates_topic.send(key=task.task_id, value=plan))
    sends = []
    for index, (ref, item) in enumerate(zip(task.images, prepared, strict=True)):
        if isinstance(item, InputError):
            failed = ImageResult(task_id=task.task_id, index=index, filename=ref.filename, status="failed",
                                 error=ErrorInfo(code=item.code, message=item.message))
            metrics.inc("images_failed_total", code=item.code)
            sends.append(await task_updates_topic.send(
                key=task.task_id, value=TaskUpdate(task_id=task.task_id, kind="result", result=failed)))
            continue
        sha, info = item
        key = cache_key(model=settings.model, edit_type=edit_type, image_identity=info.identity,
                        prompt=prompt, params=params)
        job = ImageJob(task_id=task.task_id, index=index, filename=ref.filename, edit_type=edit_type,
                       prompt=prompt, params=params, cache_key=key, image_sha256=sha, blob=sha,
                       submitted_at=task.submitted_at or now)
        sends.append(await image_edit_jobs_topic.send(key=key, value=job))
    await asyncio.gather(*sends)  # durable before the request's offset is committed
    metrics.inc("tasks_planned_total")
    metrics.inc("images_planned_total", len(task.images))


async def refuse_task(task_id: str, error: ImagestreamError) -> None:
    """A task that can't run at all: failed status (so its submitter learns why)."""
    update = TaskUpdate(task_id=task_id, kind="plan", total_images=0, created_at=time.time(),
                        error=ErrorInfo(code=error.code, message=error.message))
    await (await task_updates_topic.send(key=task_id, value=update))


@app.agent(image_edit_requests_topic)
async def plan_tasks(stream: faust.StreamT[bytes]) -> None:
    """Validate each TaskRequest and fan it out; a bad one is dead-lettered."""
    async for event in stream.events():
        raw = event.value
        try:
            task = validate_task_request(raw)
        except InvalidRequest as exc:
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=raw, code=exc.code,
                              reason=exc.message)
            continue
        try:
            await plan_task(task)
        except InputError as exc:
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=raw, code=exc.code,
                              reason=exc.message)
            await refuse_task(task.task_id, exc)
        except Exception as exc:  # a bug must not kill the agent or block the partition
            log.exception("planning task %s failed", task.task_id)
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=raw, code="internal_error",
                              reason=f"{type(exc).__name__}: {exc}")
            await refuse_task(task.task_id, ImagestreamError("internal error while planning the task"))


# --- edit ---------------------------------------------------------------------------
_executor: EditExecutor | None = None


def executor() -> EditExecutor:
    global _executor
    if _executor is None:
        rt = runtime()
        editor = DashScopeEditor(model=settings.model, api_key=settings.dashscope_api_key,
                                 base_url=settings.dashscope_base_url, timeout=settings.upstream_timeout,
                                 session=rt.http)
        _executor = EditExecutor(settings=settings, blobs=rt.blobs, editor=editor, http=rt.http)
        metrics.gauge("upstream_in_flight", lambda: [
            ((("partition", str(p)),), float(w.in_flight)) for p, w in sorted(_executor.windows.items())
        ] if _executor else [])
    return _executor


def _ack_on_delivery(event: faust.EventT) -> Any:
    def callback(_: Any) -> None:
        event.ack()

    return callback


async def _finish_job(event: faust.EventT, job: ImageJob, gate: asyncio.Semaphore) -> None:
    try:
        outcome = await executor().run(job, partition=event.message.partition)
        if outcome.new_entry is not None:
            edit_cache[job.cache_key] = outcome.new_entry  # only completed results are cached
        update = TaskUpdate(task_id=job.task_id, kind="result", result=outcome.result)
        await task_updates_topic.send(key=job.task_id, value=update, callback=_ack_on_delivery(event))
    except asyncio.CancelledError:
        raise  # not acked: the partition's next owner runs it again (idempotent by key)
    except Exception:
        log.exception("job %s/%d crashed", job.task_id, job.index)
        failed = ImageResult(task_id=job.task_id, index=job.index, filename=job.filename, status="failed",
                             error=ErrorInfo(code="internal_error", message="internal error"),
                             cache_key=job.cache_key)
        await task_updates_topic.send(key=job.task_id, value=TaskUpdate(task_id=job.task_id, kind="result",
                                      result=failed), callback=_ack_on_delivery(event))
    finally:
        gate.release()


@app.agent(image_edit_jobs_topic)
async def edit_images(stream: faust.StreamT[bytes]) -> None:
    """Cache hits answer at once; misses run in the background, so a slow upstream
    call never blocks the partition.  Each job's offset is acked only when its
    result has been delivered to Kafka (Faust commits up to the first unacked)."""
    gate = asyncio.Semaphore(MAX_PENDING_JOBS)
    pending: set[asyncio.Task[None]] = set()
    async for event in stream.noack().events():
        started = time.monotonic()
        try:
            job = ImageJob.loads(event.value)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad event
            await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value,
                              code="invalid_job", reason=str(exc)[:500])
            event.ack()
            continue
        cached = edit_cache.get(job.cache_key)
        if cached is not None:
            result = executor().hit(job, cached, started)
            await task_updates_topic.send(key=job.task_id,
                                          value=TaskUpdate(task_id=job.task_id, kind="result", result=result),
                                          callback=_ack_on_delivery(event))
            continue
        await gate.acquire()
        task = asyncio.create_task(_finish_job(event, job, gate))
        pending.add(task)
        task.add_done_callback(pending.discard)


# --- aggregate ----------------------------------------------------------------------
def fold_update(current: TaskStatus | None, update: TaskUpdate, now: float) -> tuple[TaskStatus, bool]:
    """Apply one plan or result to a task's status; returns (status, new result?).

    A replayed plan changes nothing; a result without a plan is a bad event
    (ValueError → dead letter), since plans are always written first.
    """
    if update.kind == "plan":
        if current is not None:
            return current, False
        status = state.new_status(update.task_id, update.total_images, update.created_at or now)
        if update.error is not None:
            return state.mark_task_failed(status, update.error, now), False
        return state.mark_processing(status, now)[0], False
    if update.kind != "result" or update.result is None:
        raise ValueError(f"unknown task update kind {update.kind!r}")
    if current is None:
        raise ValueError(f"result for task {update.task_id!r} before its plan")
    return state.apply_result(current, update.result, now)


@contextmanager
def event_context(event: faust.EventT) -> Iterator[None]:
    """Make ``event`` the current event, so a table write lands in its partition.

    ``take_events`` hands out a batch; Faust's RocksDB store and changelog pick the
    partition from the *current* event, which is the batch's last one otherwise.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


@app.agent(task_updates_topic)
async def aggregate_tasks(stream: faust.StreamT[bytes]) -> None:
    """Fold plans and results into ``task_status``; publish each new result once and
    one snapshot per changed task per batch."""
    async for events in stream.take_events(AGGREGATE_BATCH, within=AGGREGATE_WITHIN):
        changed: dict[str, tuple[faust.EventT, TaskStatus]] = {}
        new_results: list[ImageResult] = []
        now = time.time()
        for event in events:
            try:
                update = TaskUpdate.loads(event.value)
                current = changed[update.task_id][1] if update.task_id in changed else task_status.get(update.task_id)
                status, fresh = fold_update(current, update, now)
            except Exception as exc:  # noqa: BLE001 - a bad update must not stop the others
                await dead_letter(source_topic=event.message.topic, key=event.key, raw=event.value,
                                  code="invalid_update", reason=f"{type(exc).__name__}: {exc}"[:500])
                continue
            if fresh and update.result is not None:
                new_results.append(update.result)
            if status is not current:
                changed[update.task_id] = (event, status)
        for result in new_results:
            await image_edit_results_topic.send(key=result.task_id, value=result)
        for task_id, (event, status) in changed.items():
            with event_context(event):
                task_status[task_id] = status
            await image_edit_task_status_topic.send(key=task_id, value=status)
            if state.is_terminal(status):
                metrics.inc("tasks_finished_total", status=status.status)
