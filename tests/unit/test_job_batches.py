"""Job batches read without records, and result updates written from field dicts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.image_edit.models import (
    ErrorInfo,
    ImageJob,
    ImageJobBatch,
    ImageResult,
    JobRef,
    TaskUpdate,
    read_job_batch,
    results_update,
)


def job(index: int = 0, **changes: Any) -> ImageJob:
    fields = dict(task_id="t1", index=index, filename=f"{index}.png", edit_type="enhance", prompt="提升画质",
                  params={"seed": 7}, cache_key="k" * 64, image_sha256="s" * 64, blob="s" * 64, submitted_at=1.5)
    return ImageJob(**{**fields, **changes})


def test_a_batch_reads_back_as_the_jobs_it_was_made_of() -> None:
    batch = ImageJobBatch(jobs=[job(0), job(1)], invalidate=["x" * 64])
    jobs, invalidate = read_job_batch(batch.dumps())
    assert invalidate == ["x" * 64]
    assert [ImageJob(**raw) for raw in jobs] == [job(0), job(1)]
    assert JobRef.of(jobs[1]) == JobRef("t1", 1, "1.png", "k" * 64, "s" * 64)


def test_an_empty_batch_and_defaults() -> None:
    assert read_job_batch(b"{}") == ([], [])


def _with(**changes: Any) -> bytes:
    raw = json.loads(ImageJobBatch(jobs=[job()]).dumps())
    raw["jobs"][0].update(changes)
    return json.dumps(raw).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"jobs": {}}',
        b'{"jobs": [], "invalidate": [1]}',
        b'{"jobs": ["x"]}',
        _with(index="0"),
        _with(index=True),
        _with(params=[]),
        _with(cache_key=None),
        _with(surprise=1),
    ],
)
def test_bad_batches_are_refused_before_any_job_runs(raw: bytes) -> None:
    with pytest.raises(ValueError):
        read_job_batch(raw)


def test_a_missing_field_is_refused() -> None:
    raw = json.loads(ImageJobBatch(jobs=[job()]).dumps())
    del raw["jobs"][0]["prompt"]
    with pytest.raises(ValueError, match="prompt"):
        read_job_batch(json.dumps(raw).encode())


def test_results_update_from_dicts_and_records_reads_as_a_task_update() -> None:
    as_record = ImageResult(task_id="t1", index=0, filename="a.png", status="failed",
                            error=ErrorInfo(code="x", message="y"))
    as_fields = ImageResult(task_id="t1", index=1, filename="b.png", status="completed", result_url="/r",
                            from_cache=True, cache_status="HIT").asdict()
    update = TaskUpdate.loads(results_update("t1", [as_record, as_fields]))
    assert update.task_id == "t1" and update.kind == "results"
    assert update.results == [as_record, ImageResult(**as_fields)]
    assert update.results[0].error == ErrorInfo(code="x", message="y")


def test_hit_results_carry_every_image_result_field() -> None:
    from config.settings import Settings
    from streams.image_edit.executor import EditExecutor
    from streams.image_edit.models import CacheEntry

    executor = EditExecutor(settings=Settings.from_env({}), blobs=None, editor=None, http=None)  # type: ignore[arg-type]
    entry = CacheEntry(result_blob="r" * 64, size=10, upstream_request_id="req-1", created_at=1.0)
    raw = json.loads(ImageJobBatch(jobs=[job(3)]).dumps())["jobs"][0]
    [fields] = executor.hits([(JobRef.of(raw), entry)], started=0.0)
    assert set(fields) == set(ImageResult._options.fields)
    result = ImageResult(**fields)
    assert (result.index, result.status, result.from_cache, result.cache_status) == (3, "completed", True, "HIT")
    assert result.result_url.endswith("/api/v1/blobs/" + "r" * 64) and result.source_blob == "s" * 64
