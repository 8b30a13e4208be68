"""Task aggregation: transitions, idempotency, terminal-state rule."""

from __future__ import annotations

import itertools
import random

import pytest

from streams.errors import InvalidRequest
from streams.image_edit.models import ErrorInfo, ImageResult, TaskStatus, TaskUpdate
from streams.image_edit.state import (
    COMPLETED,
    FAILED,
    PROCESSING,
    apply_result,
    fold_update,
    is_terminal,
    mark_processing,
    mark_task_failed,
    new_status,
    progress_of,
)


def _result(index: int, status: str = "completed", task_id: str = "t", **kw: object) -> ImageResult:
    error = ErrorInfo(code="upstream_unavailable", message="500") if status == "failed" else None
    return ImageResult(task_id=task_id, index=index, filename=f"{index}.png", status=status, error=error, **kw)


def _apply_all(status: TaskStatus, results: list[ImageResult]) -> TaskStatus:
    for n, result in enumerate(results):
        status, _ = apply_result(status, result, now=float(n + 1))
    return status


def test_new_status_is_pending() -> None:
    status = new_status("t", 3, 10.0)
    assert (status.status, status.total_images, status.progress) == ("pending", 3, 0.0)
    assert (status.completed_images, status.failed_images, status.results) == (0, 0, [])
    assert status.created_at == status.updated_at == 10.0
    with pytest.raises(ValueError):
        new_status("t", -1, 0.0)


def test_mark_processing_only_from_pending() -> None:
    status, changed = mark_processing(new_status("t", 2, 0.0), 5.0)
    assert changed and status.status == "processing" and status.updated_at == 5.0
    again, changed = mark_processing(status, 6.0)
    assert not changed and again is status


def test_progress_through_completion() -> None:
    status = new_status("t", 3, 0.0)
    status, changed = apply_result(status, _result(1), 1.0)
    assert changed and status.status == "processing"
    assert (status.completed_images, status.progress) == (1, 33.3)
    status, _ = apply_result(status, _result(0), 2.0)
    assert status.progress == 66.7 and status.status == "processing"
    status, _ = apply_result(status, _result(2), 3.0)
    assert status.status == "completed" and status.progress == 100.0
    assert status.updated_at == 3.0 and status.created_at == 0.0
    assert is_terminal(status)


@pytest.mark.parametrize(
    ("outcomes", "final"),
    [
        (["completed", "completed"], "completed"),
        (["completed", "failed"], "partial"),
        (["failed", "failed"], "failed"),
    ],
)
def test_final_states(outcomes: list[str], final: str) -> None:
    status = _apply_all(new_status("t", 2, 0.0), [_result(i, s) for i, s in enumerate(outcomes)])
    assert status.status == final
    assert status.completed_images == outcomes.count("completed")
    assert status.failed_images == outcomes.count("failed")


def test_duplicates_and_replays_never_double_count() -> None:
    status = new_status("t", 2, 0.0)
    status, _ = apply_result(status, _result(0), 1.0)
    same, changed = apply_result(status, _result(0), 2.0)
    assert not changed and same is status  # unchanged input back, not even updated_at
    replay, changed = apply_result(status, _result(0, from_cache=True, cache_status="HIT"), 3.0)
    assert not changed and replay.completed_images == 1 and replay.results[0].from_cache is False


def test_late_failed_after_completed_keeps_completed() -> None:
    status = _apply_all(new_status("t", 1, 0.0), [_result(0, "completed")])
    after, changed = apply_result(status, _result(0, "failed"), 9.0)
    assert not changed and after.status == "completed" and after.failed_images == 0


def test_completed_replaces_failed() -> None:
    status = _apply_all(new_status("t", 2, 0.0), [_result(0, "failed"), _result(1, "completed")])
    assert status.status == "partial"
    status, changed = apply_result(status, _result(0, "completed", result_url="u"), 9.0)
    assert changed and status.status == "completed"
    assert (status.completed_images, status.failed_images) == (2, 0)
    assert status.results[0].result_url == "u" and status.results[0].error is None
    # a second failure for it now changes nothing
    assert apply_result(status, _result(0, "failed"), 10.0)[1] is False


def test_input_status_is_not_mutated() -> None:
    before = new_status("t", 2, 0.0)
    after, _ = apply_result(before, _result(0), 1.0)
    assert before.results == [] and before.completed_images == 0 and before.status == "pending"
    assert after is not before


def test_results_sorted_and_order_independent() -> None:
    rng = random.Random(5)
    results = [_result(i, "failed" if i % 4 == 0 else "completed") for i in range(50)]
    reference = None
    for _ in range(5):
        shuffled = results + rng.sample(results, 20)  # plus duplicates
        rng.shuffle(shuffled)
        status = _apply_all(new_status("t", 50, 0.0), shuffled)
        assert [r.index for r in status.results] == list(range(50))
        summary = (status.status, status.completed_images, status.failed_images, status.progress)
        assert summary == ("partial", 37, 13, 100.0)
        reference = reference or summary
        assert summary == reference


def test_any_order_of_completed_and_failed_for_one_index_ends_completed() -> None:
    versions = [_result(0, "failed"), _result(0, "completed"), _result(0, "failed")]
    for order in itertools.permutations(versions):
        status = _apply_all(new_status("t", 1, 0.0), list(order))
        assert status.status == "completed" and status.completed_images == 1


@pytest.mark.parametrize(
    "bad",
    [
        _result(0, task_id="other"),
        _result(2),
        _result(-1),
        _result(0, "processing"),
    ],
)
def test_foreign_results_are_refused(bad: ImageResult) -> None:
    with pytest.raises(ValueError):
        apply_result(new_status("t", 2, 0.0), bad, 1.0)


def test_mark_task_failed_from_error_and_ignores_later_results() -> None:
    status = new_status("t", 2, 0.0)
    failed = mark_task_failed(status, InvalidRequest("no such type", code="unknown_edit_type"), 4.0)
    assert failed.status == "failed" and failed.progress == 100.0 and failed.updated_at == 4.0
    assert failed.error is not None and failed.error.code == "unknown_edit_type"
    assert failed.error.message == "no such type"
    assert status.status == "pending"  # not mutated
    late, changed = apply_result(failed, _result(0), 5.0)
    assert not changed and late is failed
    assert mark_task_failed(failed, ErrorInfo(code="unknown_edit_type", message="no such type")) is failed


def test_mark_task_failed_accepts_mapping_and_keeps_time() -> None:
    status = new_status("t", 0, 3.0)
    failed = mark_task_failed(status, {"code": "no_images", "message": "none"})
    assert failed.error == ErrorInfo(code="no_images", message="none")
    assert failed.updated_at == 3.0


def test_status_round_trips_through_json() -> None:
    status = _apply_all(new_status("t", 2, 0.0), [_result(1, "failed"), _result(0)])
    loaded = TaskStatus.loads(status.dumps())
    again, changed = apply_result(loaded, _result(1, "failed"), 9.0)
    assert not changed and again.status == "partial"
    assert [r.index for r in loaded.results] == [0, 1]


def test_progress_of() -> None:
    assert progress_of(0, 0) == 0.0
    assert progress_of(1, 3) == 33.3
    assert progress_of(2, 3) == 66.7
    assert progress_of(5, 3) == 100.0


# --- fold_update: plans and batches of results, as the aggregator applies them -------
def _plan(task_id: str = "t", total: int = 3, error: ErrorInfo | None = None) -> TaskUpdate:
    return TaskUpdate(task_id=task_id, kind="plan", total_images=total, created_at=10.0, error=error)


def _results(*results: ImageResult) -> TaskUpdate:
    return TaskUpdate(task_id=results[0].task_id, kind="results", results=list(results))


def test_fold_plan_then_batches_reports_only_new_results() -> None:
    status, fresh = fold_update(None, _plan(), 11.0)
    assert status.status == PROCESSING and status.total_images == 3 and fresh == []
    r0, r1, r2 = (_result(i) for i in range(3))
    status, fresh = fold_update(status, _results(r0, r1), 12.0)
    assert [r.index for r in fresh] == [0, 1] and status.completed_images == 2
    status, fresh = fold_update(status, _results(r1, r2), 13.0)  # r1 replayed
    assert [r.index for r in fresh] == [2]
    assert status.status == COMPLETED and status.progress == 100.0


def test_fold_replayed_plan_changes_nothing() -> None:
    status, _ = fold_update(None, _plan(), 11.0)
    status, _ = fold_update(status, _results(_result(0)), 12.0)
    again, fresh = fold_update(status, _plan(), 13.0)
    assert again is status and fresh == []


def test_fold_refused_task_is_failed_at_once() -> None:
    status, _ = fold_update(None, _plan(total=0, error=ErrorInfo(code="no_images", message="none")), 11.0)
    assert status.status == FAILED and status.error.code == "no_images"


def test_fold_results_before_plan_or_unknown_kind_are_errors() -> None:
    with pytest.raises(ValueError, match="before its plan"):
        fold_update(None, _results(_result(0)), 1.0)
    with pytest.raises(ValueError, match="unknown task update kind"):
        fold_update(None, TaskUpdate(task_id="t", kind="bogus"), 1.0)


def test_an_update_read_again_after_a_crash_gives_back_its_stored_results() -> None:
    from streams.image_edit.state import already_folded, fold_update

    plan = TaskUpdate(task_id="t", kind="plan", total_images=3, created_at=1.0)
    status, _ = fold_update(None, plan, 1.0)
    first = TaskUpdate(task_id="t", kind="results", results=[_result(0), _result(2)])
    status, fresh = fold_update(status, first, 2.0)
    assert [r.index for r in fresh] == [0, 2]
    # The same update again (its status reached the changelog, its events maybe not):
    again, fresh_again = fold_update(status, first, 3.0)
    assert again is status and fresh_again == []
    stored = already_folded(status, first)
    assert [r.index for r in stored] == [0, 2] and stored == [status.results[0], status.results[1]]
    # Nothing for a plan, for a task not seen, or for images not folded yet.
    assert already_folded(status, plan) == []
    assert already_folded(None, first) == []
    assert already_folded(status, TaskUpdate(task_id="t", kind="results", results=[_result(1)])) == []
