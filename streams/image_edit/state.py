"""Task aggregation as pure functions (DESIGN.md §6 step 3).

A task's :class:`~streams.image_edit.models.TaskStatus` moves
``pending → processing → completed | partial | failed``:

* ``pending`` — created, no image finished (:func:`new_status`);
* ``processing`` — jobs fanned out (:func:`mark_processing`) or some images finished;
* ``completed`` — every image completed; ``failed`` — every image failed, or the
  task itself was refused (:func:`mark_task_failed`); ``partial`` — some of each.

Rules of :func:`apply_result` (idempotent per ``(task_id, index)``):

* A duplicate or replayed result never double-counts: counts are recomputed from
  the per-index results, which hold at most one result per index.
* **The first terminal result for an index wins, except that a ``completed`` result
  replaces a ``failed`` one.**  A success is a fact (the picture exists, it was
  billed, it is cached); a failure may be a transient one that a replay or a
  duplicate job for the same key later got past.  So a late ``failed`` never undoes
  ``completed``, and a second ``completed`` does not replace the first (the first
  one's ``result_url`` is what clients may already have).
* A task failed as a whole (``mark_task_failed``) ignores later image results.
* ``progress`` is ``100 × finished / total`` rounded to one decimal; a task failed
  as a whole shows 100 (it is finished).

Inputs are never mutated; a changed status is a new record.  A batch of results
(:func:`apply_results`; cache hits of a task arrive together) costs one pass over the
task's results and one new record, and counts are recomputed from the results each
time — simpler and self-healing compared to keeping counters.  Results stay sorted by
index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streams.errors import ImagestreamError
from streams.image_edit.models import Cost, ErrorInfo, ImageResult, TaskStatus, TaskUpdate

__all__ = [
    "COMPLETED",
    "already_folded",
    "FAILED",
    "PARTIAL",
    "PENDING",
    "PROCESSING",
    "TERMINAL_STATES",
    "apply_result",
    "apply_results",
    "fold_update",
    "is_terminal",
    "mark_processing",
    "mark_task_failed",
    "new_status",
    "progress_of",
    "task_cost",
]

PENDING = "pending"
PROCESSING = "processing"
COMPLETED = "completed"
PARTIAL = "partial"
FAILED = "failed"
TERMINAL_STATES = frozenset({COMPLETED, PARTIAL, FAILED})

_IMAGE_STATES = frozenset({COMPLETED, FAILED})


def progress_of(finished: int, total: int) -> float:
    """Percent finished, one decimal (0.0 for an empty task)."""
    if total <= 0:
        return 0.0
    return round(100.0 * min(finished, total) / total, 1)


def is_terminal(status: TaskStatus) -> bool:
    """Whether the task has reached completed, partial or failed."""
    return status.status in TERMINAL_STATES


def _replace(current: TaskStatus, /, **changes: Any) -> TaskStatus:
    fields = current.asdict()
    fields.update(changes)
    return TaskStatus(**fields)


def new_status(task_id: str, total: int, now: float) -> TaskStatus:
    """A ``pending`` status for a task of ``total`` images created at ``now``."""
    if total < 0:
        raise ValueError("total must be >= 0")
    return TaskStatus(
        task_id=task_id,
        status=PENDING,
        total_images=total,
        completed_images=0,
        failed_images=0,
        progress=0.0,
        results=[],
        created_at=now,
        updated_at=now,
    )


def mark_processing(status: TaskStatus, now: float) -> tuple[TaskStatus, bool]:
    """``pending → processing`` (jobs were fanned out); anything else is unchanged."""
    if status.status != PENDING:
        return status, False
    return _replace(status, status=PROCESSING, updated_at=now), True


def _supersedes(new: ImageResult, old: ImageResult) -> bool:
    return new.status == COMPLETED and old.status == FAILED


def _task_state(completed: int, failed: int, total: int) -> str:
    if completed + failed < total:
        return PROCESSING
    if failed == 0:
        return COMPLETED
    return FAILED if completed == 0 else PARTIAL


def _check_result(status: TaskStatus, result: ImageResult) -> None:
    if result.task_id != status.task_id:
        raise ValueError(f"result for task {result.task_id!r} applied to {status.task_id!r}")
    if not 0 <= result.index < status.total_images:
        raise ValueError(f"result index {result.index} outside 0..{status.total_images - 1}")
    if result.status not in _IMAGE_STATES:
        raise ValueError(f"result status must be completed or failed, got {result.status!r}")


def apply_result(status: TaskStatus, result: ImageResult, now: float) -> tuple[TaskStatus, bool]:
    """Fold one image result into the task status; ``changed`` is False for no-ops.

    Raises :class:`ValueError` for a result that cannot belong to this task (other
    task_id, index out of range, non-terminal status): the caller dead-letters it.
    """
    status, fresh = apply_results(status, [result], now)
    return status, bool(fresh)


def already_folded(status: TaskStatus | None, update: TaskUpdate) -> list[ImageResult]:
    """The stored results of an update's images that the status holds already.

    An update read again after a crash had its results folded (the table's changelog
    reached Kafka) but maybe not their result events: those are published again, the
    stored copies, so every result reaches ``image-edit-results`` at least once.
    """
    if status is None or update.kind != "results":
        return []
    by_index = {r.index: r for r in status.results}
    return [by_index[r.index] for r in update.results if r.index in by_index]


def apply_results(
    status: TaskStatus, results: Sequence[ImageResult], now: float
) -> tuple[TaskStatus, list[ImageResult]]:
    """Fold a batch of image results in one pass; returns the status and the results
    that changed it (duplicates and superseded ones are left out).

    One new record per batch, not per result: a 50-image task's hits arrive together.
    Raises :class:`ValueError` like :func:`apply_result`, before changing anything.
    """
    for result in results:
        _check_result(status, result)
    if status.status == FAILED and status.error is not None:
        return status, []  # the task failed as a whole; late results change nothing
    by_index = {r.index: r for r in status.results}
    fresh: list[ImageResult] = []
    for result in results:
        old = by_index.get(result.index)
        if old is not None and not _supersedes(result, old):
            continue
        by_index[result.index] = result
        fresh.append(result)
    if not fresh:
        return status, []
    merged = [by_index[i] for i in sorted(by_index)]
    completed = sum(1 for r in merged if r.status == COMPLETED)
    failed = len(merged) - completed
    return (
        _replace(
            status,
            status=_task_state(completed, failed, status.total_images),
            completed_images=completed,
            failed_images=failed,
            progress=progress_of(completed + failed, status.total_images),
            results=merged,
            updated_at=now,
            cost=task_cost(merged) or status.cost,
        ),
        fresh,
    )


def task_cost(results: Sequence[ImageResult]) -> Cost | None:
    """The sum of the completed results' costs (failures are not billed)."""
    costs = [r.cost for r in results if r.status == COMPLETED and r.cost is not None]
    if not costs:
        return None
    return Cost(currency=costs[0].currency, spent=round(sum(c.spent for c in costs), 6),
                saved=round(sum(c.saved for c in costs), 6))


def _error_info(error: ErrorInfo | ImagestreamError | Mapping[str, Any]) -> ErrorInfo:
    if isinstance(error, ErrorInfo):
        return error
    if isinstance(error, ImagestreamError):
        return ErrorInfo(code=error.code, message=error.message)
    return ErrorInfo(code=str(error["code"]), message=str(error.get("message", "")))


def mark_task_failed(
    status: TaskStatus,
    error: ErrorInfo | ImagestreamError | Mapping[str, Any],
    now: float | None = None,
) -> TaskStatus:
    """Fail the whole task (e.g. it did not validate) with ``error``.

    Image counts and results are kept as they are; ``progress`` becomes 100.
    ``now`` defaults to the status's own ``updated_at``.  Failing an already
    failed task with the same error returns it unchanged.
    """
    info = _error_info(error)
    if status.status == FAILED and status.error is not None and (
        status.error.code,
        status.error.message,
    ) == (info.code, info.message):
        return status
    return _replace(
        status,
        status=FAILED,
        error=info,
        progress=100.0,
        updated_at=status.updated_at if now is None else now,
    )


def fold_update(current: TaskStatus | None, update: TaskUpdate, now: float) -> tuple[TaskStatus, list[ImageResult]]:
    """Apply one plan or batch of results to a task's status.

    Returns the status and the results that were new (a duplicate or replayed result
    changes nothing and is not published again).  A replayed plan changes nothing;
    results without a plan are a bad event (ValueError → dead letter), since plans
    are always written first.
    """
    if update.kind == "plan":
        if current is not None:
            return current, []
        status = new_status(update.task_id, update.total_images, update.created_at or now)
        if update.error is not None:
            return mark_task_failed(status, update.error, now), []
        return mark_processing(status, now)[0], []
    if update.kind != "results":
        raise ValueError(f"unknown task update kind {update.kind!r}")
    if current is None:
        raise ValueError(f"results for task {update.task_id!r} before its plan")
    return apply_results(current, update.results, now)
