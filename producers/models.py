"""Typed, immutable views of the records the client reads and writes.

Plain frozen dataclasses, not Faust records: the client must not need the worker's
app or settings to run.  Field names are those of the wire records (DESIGN.md §4,
``streams/image_edit/models.py``, ``streams/dimensions/models.py``); unknown fields
in what the server sends are ignored, so newer servers keep working with this
client.  Every record has ``from_dict()`` and ``to_dict()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from producers.client import ImageEditClient, TaskEvent

__all__ = [
    "TERMINAL_STATES",
    "Cost",
    "DimensionResult",
    "ErrorInfo",
    "ImageResult",
    "TaskHandle",
    "TaskStatus",
]

#: Task states after which nothing changes any more.
TERMINAL_STATES = frozenset({"completed", "partial", "failed"})

Via = Literal["http", "kafka"]

_R = TypeVar("_R")


def _known(cls: type[Any], doc: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in doc.items() if k in names}


def _error(value: Any) -> ErrorInfo | None:
    if isinstance(value, ErrorInfo) or value is None:
        return value
    if isinstance(value, Mapping):
        return ErrorInfo.from_dict(value)
    return ErrorInfo(code="error", message=str(value))


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """``{code, message}`` of a failed image, task or fetch."""

    code: str
    message: str = ""

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ErrorInfo:
        return cls(code=str(doc.get("code", "error")), message=str(doc.get("message", "")))

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Cost:
    """What an image or a task cost upstream and what the cache saved."""

    currency: str
    spent: float = 0.0
    saved: float = 0.0

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Cost:
        return cls(currency=str(doc.get("currency", "")), spent=float(doc.get("spent") or 0.0),
                   saved=float(doc.get("saved") or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"currency": self.currency, "spent": self.spent, "saved": self.saved}


@dataclass(frozen=True, slots=True)
class ImageResult:
    """The outcome for one image of a task (topic ``image-edit-results``)."""

    task_id: str
    index: int
    filename: str
    status: str  # completed | failed
    result_url: str | None = None
    from_cache: bool = False
    error: ErrorInfo | None = None
    cache_key: str | None = None
    duration_ms: float = 0.0
    cache_status: str | None = None  # HIT | MISS | COALESCED
    upstream_request_id: str | None = None
    result_blob: str | None = None
    #: Every output of the call (``edit_params.n`` of them), our own blob URLs in
    #: upstream order; ``result_url`` is the first.
    result_urls: tuple[str, ...] = ()
    #: The task's image indexes this result was made from (its group, in order).
    inputs: tuple[int, ...] = ()
    model: str | None = None
    cost: Cost | None = None

    @property
    def ok(self) -> bool:
        """True when the image was edited and ``result_url`` can be downloaded."""
        return self.status == "completed" and bool(self.result_url)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ImageResult:
        values = _known(cls, doc)
        values["index"] = int(values.get("index", 0))
        values["error"] = _error(values.get("error"))
        values.setdefault("filename", f"image-{values['index']}")
        values.setdefault("status", "failed")
        values["result_urls"] = tuple(values.get("result_urls") or ())
        values["inputs"] = tuple(int(i) for i in values.get("inputs") or ())
        values["cost"] = Cost.from_dict(values["cost"]) if isinstance(values.get("cost"), Mapping) else None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["error"] = self.error.to_dict() if self.error else None
        out["result_urls"] = list(self.result_urls)
        out["inputs"] = list(self.inputs)
        out["cost"] = self.cost.to_dict() if self.cost else None
        return out


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of a task (``GET /api/v1/image-edit/task/{id}``, topic
    ``image-edit-task-status``)."""

    task_id: str
    status: str  # pending | processing | completed | partial | failed
    total_images: int
    completed_images: int = 0
    failed_images: int = 0
    progress: float = 0.0
    results: tuple[ImageResult, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0
    error: ErrorInfo | None = None
    #: ``{currency, spent, saved}`` of the whole task (catalogue prices).
    cost: Cost | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the task is ``completed``, ``partial`` or ``failed``."""
        return self.status in TERMINAL_STATES

    @property
    def finished_images(self) -> int:
        """Images with an outcome so far (completed or failed)."""
        return self.completed_images + self.failed_images

    @property
    def cached_images(self) -> int:
        """Completed images that came from the cache (no upstream call was paid)."""
        return sum(1 for r in self.results if r.status == "completed" and r.from_cache)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TaskStatus:
        values = _known(cls, doc)
        values["results"] = tuple(
            r if isinstance(r, ImageResult) else ImageResult.from_dict(r) for r in values.get("results") or ()
        )
        values["error"] = _error(values.get("error"))
        values["cost"] = Cost.from_dict(values["cost"]) if isinstance(values.get("cost"), Mapping) else None
        values.setdefault("status", "pending")
        values.setdefault("total_images", 0)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["results"] = [r.to_dict() for r in self.results]
        out["error"] = self.error.to_dict() if self.error else None
        out["cost"] = self.cost.to_dict() if self.cost else None
        return out


@dataclass(frozen=True, slots=True)
class DimensionResult:
    """The size of an image (``GET /api/v1/dimensions``, topic ``dimension-results``).

    ``source`` is ``cache``, ``fetched``, ``computed`` or ``placeholder`` (the real
    size is not known yet; it is being fetched in the background)."""

    session_id: str
    resource: str
    scene: str
    url: str | None
    width: int
    height: int
    orientation: int = 1
    format: str | None = None
    source: str = "placeholder"
    fetched_at: float | None = None
    bytes_read: int = 0
    raw_width: int = 0
    raw_height: int = 0
    error: ErrorInfo | None = None
    flagged: str | None = None

    @property
    def is_placeholder(self) -> bool:
        return self.source == "placeholder"

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> DimensionResult:
        values = _known(cls, doc)
        values["error"] = _error(values.get("error"))
        values["scene"] = str(values.get("scene", ""))
        for name in ("session_id", "resource"):
            values[name] = str(values.get(name, ""))
        values.setdefault("url", None)
        values.setdefault("width", 0)
        values.setdefault("height", 0)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["error"] = self.error.to_dict() if self.error else None
        return out


@dataclass(frozen=True)
class TaskHandle:
    """An accepted task: what ``submit()`` returns.

    ``await handle.wait()``, ``handle.results()`` and ``handle.events()`` are
    shortcuts for the client's methods with this task's id (the client must still
    be open)."""

    task_id: str
    total_images: int
    status: str = "pending"
    via: Via = "http"
    submitted_at: float = 0.0
    _client: ImageEditClient | None = field(default=None, repr=False, compare=False)

    def _bound(self) -> ImageEditClient:
        if self._client is None:
            raise RuntimeError("this TaskHandle is not bound to a client")
        return self._client

    async def wait(self, *, timeout: float | None = None, raise_on_failure: bool = False) -> TaskStatus:
        """The task's final status (see :meth:`ImageEditClient.wait`)."""
        return await self._bound().wait(self.task_id, timeout=timeout, raise_on_failure=raise_on_failure)

    def results(self, *, timeout: float | None = None) -> AsyncIterator[ImageResult]:
        """Per-image results as they arrive (see :meth:`ImageEditClient.results`)."""
        return self._bound().results(self.task_id, timeout=timeout, total_images=self.total_images)

    def events(self, *, timeout: float | None = None) -> AsyncIterator[TaskEvent]:
        """Results and status snapshots as they arrive (see :meth:`ImageEditClient.events`)."""
        return self._bound().events(self.task_id, timeout=timeout)

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "total_images": self.total_images,
                "via": self.via, "submitted_at": self.submitted_at}
