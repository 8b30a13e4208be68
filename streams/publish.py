"""Publishing without Faust's per-message channel machinery.

``Topic.send`` builds a FutureMessage, runs the channel's serializers and sensors for
every event: about half of the CPU of the cached path.  The pipelines' hot paths send
already-serialised JSON through the app's producer instead.  Keys are written exactly
as the ``json_key`` codec writes them, so partitioning (and with it table routing)
is the same as for events Faust sends.
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from aiokafka.structs import RecordMetadata

from streams.app import app

__all__ = ["key_bytes", "on_delivery", "partition_for", "publish"]


def key_bytes(key: str) -> bytes:
    """A string key as JSON bytes: what the ``json_key`` codec writes on every topic
    and table (ASCII-escaped)."""
    return json.dumps(key).encode()


@lru_cache(maxsize=65536)
def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) gives ``key``.

    The same function the producer applies, memoised: keys repeat (50 images of a
    task share its id) and aiokafka's murmur2 is pure Python.
    """
    return (murmur2(key_bytes(key)) & 0x7FFFFFFF) % partitions


async def publish(
    topic: faust.TopicT, key: str | None, value: bytes | faust.Record, *, partition: int | None = None
) -> asyncio.Future[RecordMetadata]:
    """Hand one event to the producer; returns the delivery future (await it for durability).

    Without ``partition`` the key picks it, as for any Kafka producer.
    """
    raw = value if isinstance(value, bytes) else value.dumps()
    name = topic.get_topic_name()
    if partition is None and key is not None and topic.partitions:
        partition = partition_for(key, topic.partitions)
    return await app.producer.send(name, key_bytes(key) if key is not None else None, raw, partition, None, None)


def on_delivery(future: asyncio.Future[Any], callback: Any) -> None:
    """Run ``callback()`` once the event is durably written (not on failure)."""

    def done(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            callback()

    future.add_done_callback(done)
