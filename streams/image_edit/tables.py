"""Tables of the image-edit pipeline (RocksDB, changelogged to Kafka).

Keys are strings, stored and changelogged with the ``json_key`` codec of the source
topics: the same bytes the events carry, so a key's table partition is the
partition its events arrive on.
"""

from __future__ import annotations

from streams.app import app, rocksdb_options, settings
from streams.codecs import with_json_keys
from streams.image_edit.models import CacheEntry, TaskStatus

__all__ = ["edit_cache", "task_status"]

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
