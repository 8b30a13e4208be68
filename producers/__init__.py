"""imagestream's client library and the ``imagestream`` command-line tool.

Async clients (use them as ``async with``)::

    from producers import ImageEditClient, DimensionClient

    async with ImageEditClient() as client:
        task = await client.submit(["a.jpg"], "enhance", via="http")   # or via="kafka"
        async for result in client.results(task.task_id): ...
        final = await client.wait(task.task_id)

Blocking wrappers for scripts are in :mod:`producers.sync`.  Every error is an
:class:`ImagestreamClientError` (tree in :mod:`producers.errors`).  Importing this
package does not load the Faust app.
"""

from producers.client import ClientConfig, DimensionClient, ImageEditClient, TaskEvent, dimension_key
from producers.errors import (
    ApiError,
    ImagestreamClientError,
    InvalidInput,
    TaskFailed,
    TaskNotFound,
    Timeout,
    Unreachable,
)
from producers.images import ImageInput
from producers.models import TERMINAL_STATES, DimensionResult, ErrorInfo, ImageResult, TaskHandle, TaskStatus
from producers.sync import SyncDimensionClient, SyncImageEditClient, submit_and_wait

__all__ = [
    "TERMINAL_STATES",
    "ApiError",
    "ClientConfig",
    "DimensionClient",
    "DimensionResult",
    "ErrorInfo",
    "ImageEditClient",
    "ImageInput",
    "ImageResult",
    "ImagestreamClientError",
    "InvalidInput",
    "SyncDimensionClient",
    "SyncImageEditClient",
    "TaskEvent",
    "TaskFailed",
    "TaskHandle",
    "TaskNotFound",
    "TaskStatus",
    "Timeout",
    "Unreachable",
    "dimension_key",
    "submit_and_wait",
]
