"""Errors of the imagestream client library and CLI.

One tree, one root; every class has a stable ``code`` (the server's error code for
:class:`ApiError`) and a ``retriable`` flag, like the service's own errors
(``streams/errors.py``)::

    ImagestreamClientError              client_error
    ├── InvalidInput  (ValueError)      invalid_input, file_not_found, upload_required, ...
    ├── ApiError                        the server's code: unknown_edit_type, image_too_large, ...
    │   └── TaskNotFound                task_not_found (404)
    ├── TaskFailed                      task_failed: a task ended ``failed`` (or ``partial``)
    ├── Timeout  (TimeoutError)         timeout
    └── Unreachable  (ConnectionError)  unreachable: the HTTP API or Kafka did not answer

Foreign exceptions (aiohttp, aiokafka, OSError) are translated into these at one
boundary each (``producers/_http.py``, ``producers/_kafka.py``); nothing else leaks
out of the client.  The built-in bases let ``except TimeoutError`` /
``except ConnectionError`` / ``except ValueError`` work as one would expect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from producers.models import TaskStatus

__all__ = [
    "ApiError",
    "ImagestreamClientError",
    "InvalidInput",
    "TaskFailed",
    "TaskNotFound",
    "Timeout",
    "Unreachable",
]


class ImagestreamClientError(Exception):
    """Root of every error the client raises."""

    code: str = "client_error"
    #: Whether trying the same thing again later may succeed.
    retriable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """``{"code", "message"}``, the shape the HTTP API uses for its errors."""
        return {"code": self.code, "message": self.message}


class InvalidInput(ImagestreamClientError, ValueError):
    """Something the caller passed cannot be used (missing file, bad params JSON,
    an image too large to travel over Kafka, ...). Nothing was sent."""

    code = "invalid_input"


class ApiError(ImagestreamClientError):
    """The HTTP API answered with an error: ``status`` and the server's ``{code, message}``."""

    code = "api_error"

    def __init__(self, message: str, *, status: int, code: str | None = None,
                 body: Any = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        #: The HTTP status.
        self.status = status
        #: The decoded error body, when there was one.
        self.body = body
        #: Seconds from a ``Retry-After`` header, when the server sent one.
        self.retry_after = retry_after
        self.retriable = status in (429, 502, 503, 504)

    @property
    def is_client_error(self) -> bool:
        """True for 4xx: the request was wrong, retrying it cannot help."""
        return 400 <= self.status < 500

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}


class TaskNotFound(ApiError):
    """No task with this id (404 ``task_not_found``), not even after the grace period
    a just-submitted task gets."""

    code = "task_not_found"

    def __init__(self, task_id: str, message: str | None = None, *, body: Any = None) -> None:
        super().__init__(message or f"no task {task_id!r}", status=404, code="task_not_found", body=body)
        self.task_id = task_id


class TaskFailed(ImagestreamClientError):
    """A task ended without every image done; ``task`` is its final status."""

    code = "task_failed"

    def __init__(self, task: TaskStatus) -> None:
        done = f"{task.completed_images}/{task.total_images} images completed"
        reason = f": {task.error.code}: {task.error.message}" if task.error else ""
        super().__init__(f"task {task.task_id} ended {task.status} ({done}){reason}")
        self.task = task


class Timeout(ImagestreamClientError, TimeoutError):
    """A deadline passed (waiting for a task, or one HTTP/Kafka operation)."""

    code = "timeout"
    retriable = True


class Unreachable(ImagestreamClientError, ConnectionError):
    """The HTTP API or the Kafka cluster could not be reached; ``service`` says which."""

    code = "unreachable"
    retriable = True

    def __init__(self, message: str, *, service: str) -> None:
        super().__init__(message)
        #: ``"api"`` or ``"kafka"``.
        self.service = service
