"""Records of the image-edit pipeline (DESIGN.md §4).

Plain JSON on the wire (``include_metadata=False``) so kcat and any language can read
and write them.  Field names of ``ImageResult`` and ``TaskStatus`` are fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

import faust
from faust.utils import json as faust_json
from mode.utils.compat import want_bytes

__all__ = [
    "CacheEntry",
    "Cost",
    "ErrorInfo",
    "ImageJob",
    "ImageJobBatch",
    "ImageRef",
    "ImageResult",
    "JobRef",
    "read_job_batch",
    "results_update",
    "TaskRequest",
    "TaskStatus",
    "TaskUpdate",
]


class _Record(faust.Record, serializer="json", include_metadata=False, abstract=True):
    pass


class ErrorInfo(_Record):
    """``{code, message}`` of a failed image or task."""

    code: str
    message: str


class Cost(_Record):
    """What an image or a task cost upstream, and what the cache saved (fixed names).

    ``spent``: generated images × the model's catalogue price in the configured region
    (only successful images are billed); ``saved``: what cache hits and coalesced jobs
    would have cost.  Catalogue prices are marked unconfirmed in config/models.toml."""

    currency: str
    spent: float = 0.0
    saved: float = 0.0


class ImageRef(_Record):
    """Where one input image is: exactly one of ``blob``, ``url``, ``data``."""

    filename: str
    blob: Optional[str] = None  # sha256 of the bytes in the blob store
    url: Optional[str] = None
    data: Optional[str] = None  # base64, small images only


class TaskRequest(_Record):
    """A client's task: 1..N images and one edit. Key: task_id."""

    task_id: str
    edit_type: str
    images: list[ImageRef]
    edit_params: dict[str, Any] = {}
    submitted_at: float = 0.0
    reply_to: Optional[str] = None
    #: Multi-image calls (fixed name): lists of 0-based image indexes, 1-3 each, order
    #: significant; each group is one call and one result.  None: each image alone.
    groups: Optional[list[list[int]]] = None


class ImageJob(_Record):
    """One image of a task, routed by cache key so duplicates meet on one partition."""

    task_id: str
    index: int
    filename: str
    edit_type: str
    prompt: str
    params: dict[str, Any]
    cache_key: str
    image_sha256: str
    blob: str
    submitted_at: float = 0.0
    #: The DashScope model (``edit_params.model``); empty in jobs of older workers: the
    #: worker's ``IMAGESTREAM_MODEL``.
    model: str = ""
    #: The input images of a multi-image call, in order (blob shas); empty: ``blob`` alone.
    blobs: list[str] = []
    #: The task's image indexes this job's call takes (its group).
    inputs: list[int] = []


class ImageJobBatch(_Record):
    """Internal (``image-edit-jobs``): the jobs of one task that belong to one partition.

    Jobs are placed by cache key, so duplicates of one image meet on one partition;
    carrying a task's jobs for a partition in one event costs one Kafka event per
    task and partition instead of one per image.
    """

    jobs: list[ImageJob] = []
    #: Cache keys to forget (``DELETE /api/v1/cache/{key}``); processed before the jobs.
    invalidate: list[str] = []


class JobRef(NamedTuple):
    """What a result needs of its job: the cache-hit path reads jobs without records."""

    task_id: str
    index: int
    filename: str
    cache_key: str
    blob: str
    model: str = ""
    inputs: tuple[int, ...] = ()

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobRef:
        return cls(job["task_id"], job["index"], job["filename"], job["cache_key"], job["blob"],
                   job.get("model") or "", tuple(job.get("inputs") or ()))


_JOB_FIELDS = frozenset(ImageJob._options.fields)
_JOB_TYPES: dict[str, type] = {
    "task_id": str, "index": int, "filename": str, "edit_type": str, "prompt": str, "params": dict,
    "cache_key": str, "image_sha256": str, "blob": str,
}


def read_job_batch(raw: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """An ``ImageJobBatch`` event as ``(jobs, invalidate)``, jobs as plain dicts.

    Most jobs are cache hits, answered from a few of their fields; building an
    ``ImageJob`` record each costs more than all the rest of a hit, so only misses
    become records (``ImageJob(**job)``).  Everything is checked here, so that can't
    fail later: ValueError names what is wrong.
    """
    doc = faust_json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("a job batch must be a JSON object")
    jobs, invalidate = doc.get("jobs", []), doc.get("invalidate", [])
    if not isinstance(jobs, list) or not isinstance(invalidate, list):
        raise ValueError("jobs and invalidate must be lists")
    if not all(isinstance(key, str) for key in invalidate):
        raise ValueError("invalidate must list cache keys")
    for job in jobs:
        if not isinstance(job, dict):
            raise ValueError("a job must be a JSON object")
        unknown = job.keys() - _JOB_FIELDS
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        for name, typ in _JOB_TYPES.items():
            value = job.get(name)
            if not isinstance(value, typ) or isinstance(value, bool):
                raise ValueError(f"job field {name!r} must be {typ.__name__}")
    return jobs, invalidate


class ImageResult(_Record):
    """The outcome for one image (seed shape, fixed). Key: task_id."""

    task_id: str
    index: int
    filename: str
    status: str  # completed | failed
    result_url: Optional[str] = None
    from_cache: bool = False
    error: Optional[ErrorInfo] = None
    cache_key: Optional[str] = None
    duration_ms: float = 0.0
    cache_status: Optional[str] = None  # HIT | MISS | COALESCED
    upstream_request_id: Optional[str] = None
    result_blob: Optional[str] = None
    #: sha256 of the input image in the blob store (``/api/v1/blobs/{source_blob}``).
    source_blob: Optional[str] = None
    #: Every output of the call (``n`` of them, upstream order), as our own blob URLs;
    #: ``result_url`` is the first.  Each one was paid for.
    result_urls: list[str] = []
    #: The task's image indexes this result was made from (fixed name; its group).
    inputs: list[int] = []
    #: The model the image was edited with, and what the edit cost or saved.
    model: Optional[str] = None
    cost: Optional[Cost] = None


class TaskStatus(_Record):
    """Snapshot of a task (seed shape, fixed). Key: task_id."""

    task_id: str
    status: str  # pending | processing | completed | partial | failed
    total_images: int
    completed_images: int = 0
    failed_images: int = 0
    progress: float = 0.0
    results: list[ImageResult] = []
    created_at: float = 0.0
    updated_at: float = 0.0
    error: Optional[ErrorInfo] = None
    #: The sum of the results' costs (fixed names: currency, spent, saved).
    cost: Optional[Cost] = None


class TaskUpdate(_Record):
    """Internal (``imagestream-task-updates``): a task's plan, or outcomes of some of
    its images (batched: cache hits of one task arrive together)."""

    task_id: str
    kind: str  # plan | results
    total_images: int = 0
    created_at: float = 0.0
    results: list[ImageResult] = []
    error: Optional[ErrorInfo] = None  # kind=plan: the whole task was refused


def results_update(task_id: str, results: Sequence[ImageResult | Mapping[str, Any]]) -> bytes:
    """A ``TaskUpdate(kind="results")`` as JSON.  Cache hits come as dicts of
    ``ImageResult``'s fields (see :func:`read_job_batch`); the aggregator reads the
    event as a ``TaskUpdate`` either way."""
    return want_bytes(faust_json.dumps({"task_id": task_id, "kind": "results", "results": list(results)}))


class CacheEntry(_Record):
    """Value of the ``edit_cache`` table: where a finished edit's results live."""

    result_blob: str  # the first output (entries of older workers hold only this one)
    size: int
    width: int = 0
    height: int = 0
    upstream_request_id: Optional[str] = None
    upstream_url: Optional[str] = None
    created_at: float = 0.0
    #: Every output blob of the call, in upstream order (``result_blobs[0] == result_blob``).
    result_blobs: list[str] = []

    def blobs(self) -> list[str]:
        """All output blobs (an entry written before ``n`` was kept has just one)."""
        return list(self.result_blobs) or [self.result_blob]
