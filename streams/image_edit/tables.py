"""Tables of the image-edit pipeline (RocksDB, changelogged to Kafka).

Keys are strings, stored and changelogged with the ``json_key`` codec of the source
topics: the same bytes the events carry, so a key's table partition is the
partition its events arrive on.
"""

from __future__ import annotations

from typing import Any

import faust

from streams.app import app, rocksdb_options, settings
from streams.codecs import with_json_keys
from streams.image_edit.models import CacheEntry, TaskStatus
from streams.lru import LRU

__all__ = ["current_status", "edit_cache", "last_statuses", "task_status"]

#: Task statuses kept decoded (a 50-image status is ~100 KB in memory).
LAST_STATUSES = 1024

#: task_id → TaskStatus; fed by ``imagestream-task-updates`` (same key, same partitions).
task_status = with_json_keys(app.Table(
    "task_status",
    key_type=str,
    value_type=TaskStatus,
    partitions=settings.topic_partitions,
    options=rocksdb_options(settings),
))

#: cache key → CacheEntry; fed by ``image-edit-jobs`` (keyed by cache key).
edit_cache = with_json_keys(app.Table(
    "edit_cache",
    key_type=str,
    value_type=CacheEntry,
    partitions=settings.topic_partitions,
    options=rocksdb_options(settings),
))

#: The latest status of tasks this worker wrote lately, decoded: the aggregator folds
#: a batch of results into it without decoding the table's copy (every result so
#: far) again, and status reads answer from it.  Only the aggregator writes both.
last_statuses: LRU[str, TaskStatus] = LRU(LAST_STATUSES)


def current_status(task_id: str) -> TaskStatus | None:
    """The task's status as this worker last wrote or read it (None: unknown)."""
    return last_statuses.get(task_id) or task_status.get(task_id)


@app.on_partitions_revoked.connect  # type: ignore[misc]
async def _forget_decoded_statuses(app: faust.App, revoked: Any, **kwargs: Any) -> None:
    """Revoked partitions may change on another worker: drop the decoded copies."""
    last_statuses.clear()
