"""Client records, the error tree, Kafka keys and the public surface of ``producers``."""

from __future__ import annotations

import json

from aiokafka.partitioner import DefaultPartitioner

import producers
from producers import errors
from producers._http import api_error
from producers._kafka import json_key, partition_for
from producers.models import DimensionResult, ImageResult, TaskStatus


def test_public_names_are_sorted_and_importable() -> None:
    assert producers.__all__ == sorted(producers.__all__, key=lambda n: (not n.isupper(), n))
    for name in producers.__all__:
        assert getattr(producers, name) is not None


def test_error_tree_has_one_root_codes_and_builtin_bases() -> None:
    leaves = [errors.InvalidInput, errors.ApiError, errors.TaskNotFound, errors.TaskFailed, errors.Timeout,
              errors.Unreachable]
    assert all(issubclass(cls, errors.ImagestreamClientError) for cls in leaves)
    assert issubclass(errors.TaskNotFound, errors.ApiError)
    assert issubclass(errors.InvalidInput, ValueError)
    assert issubclass(errors.Timeout, TimeoutError)
    assert issubclass(errors.Unreachable, ConnectionError)
    assert len({cls.code for cls in leaves}) == len(leaves)
    exc = errors.InvalidInput("gone", code="file_not_found")
    assert (exc.code, str(exc), exc.to_dict()) == ("file_not_found", "gone",
                                                   {"code": "file_not_found", "message": "gone"})
    assert errors.Unreachable("x", service="kafka").retriable is True


def test_api_error_from_bodies() -> None:
    err = api_error(413, b'{"error": {"code": "image_too_large", "message": "too big"}}')
    assert (type(err), err.status, err.code, err.message) == (errors.ApiError, 413, "image_too_large", "too big")
    assert api_error(502, b"<html>Bad gateway</html>").code == "http_502"
    assert api_error(503, b"{}", {"Retry-After": "2"}).retry_after == 2.0
    missing = api_error(404, b'{"error": {"code": "task_not_found", "message": "no task"}}', task_id="t")
    assert isinstance(missing, errors.TaskNotFound) and missing.task_id == "t"
    assert not isinstance(api_error(404, b'{"error": {"code": "blob_not_found", "message": ""}}', task_id="t"),
                          errors.TaskNotFound)


def test_records_ignore_unknown_fields_and_round_trip() -> None:
    doc = {"task_id": "t", "status": "partial", "total_images": 2, "completed_images": 1, "failed_images": 1,
           "progress": 100.0, "created_at": 1.0, "updated_at": 2.0, "error": None, "new_field": [1],
           "results": [{"task_id": "t", "index": 0, "filename": "a.png", "status": "completed",
                        "from_cache": True, "result_url": "http://x/0", "cache_status": "HIT", "extra": 1},
                       {"task_id": "t", "index": 1, "filename": "b.png", "status": "failed",
                        "error": {"code": "DataInspectionFailed", "message": "m"}}]}
    status = TaskStatus.from_dict(doc)
    assert status.is_terminal and status.finished_images == 2 and status.cached_images == 1
    assert status.results[0].ok and not status.results[1].ok
    assert status.results[1].error is not None and status.results[1].error.code == "DataInspectionFailed"
    again = TaskStatus.from_dict(json.loads(json.dumps(status.to_dict())))
    assert again == status
    assert ImageResult.from_dict(status.results[0].to_dict()) == status.results[0]
    dims = DimensionResult.from_dict({"session_id": "s", "resource": "r", "scene": 1, "url": None, "width": 3,
                                      "height": 4, "source": "cache", "unknown": True})
    assert dims.scene == "1" and not dims.is_placeholder and dims.to_dict()["width"] == 3


def test_keys_and_partitions_match_the_worker_and_kafka() -> None:
    assert json_key("t-1") == b'"t-1"'
    partitioner = DefaultPartitioner()
    for n in (1, 3, 8, 12):
        for task_id in ("t-1", "a" * 40, "任务"):
            key = json_key(task_id)
            assert partition_for(key, list(range(n))) == partitioner(key, list(range(n)), list(range(n)))


def test_client_records_keep_in_step_with_the_worker_records() -> None:
    """producers/models.py repeats the worker's records without Faust; a field added to
    one and not the other would silently vanish on the client side."""
    import dataclasses

    from streams.image_edit import models as worker

    #: Worker fields the client deliberately leaves out (internal bookkeeping).
    worker_only = {"ImageResult": {"source_blob"}, "TaskStatus": set()}
    for name, client_cls in (("ImageResult", ImageResult), ("TaskStatus", TaskStatus)):
        worker_fields = set(getattr(worker, name)._options.fields)
        client_fields = {f.name for f in dataclasses.fields(client_cls)}
        assert client_fields <= worker_fields, (name, client_fields - worker_fields)
        assert worker_fields - client_fields == worker_only[name], (name, worker_fields - client_fields)
    assert "result_urls" in {f.name for f in dataclasses.fields(ImageResult)}
    result = ImageResult.from_dict({"task_id": "t", "index": 0, "filename": "a", "status": "completed",
                                    "result_url": "u0", "result_urls": ["u0", "u1"]})
    assert result.result_urls == ("u0", "u1") and ImageResult.from_dict(result.to_dict()) == result
