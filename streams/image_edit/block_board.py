"""Every worker reads the whole ``imagestream-upstream-blocks`` topic.

Not a Faust agent: an agent's partitions are shared out among the group, and a block
must reach *every* worker.  So each worker runs one plain aiokafka consumer without a
group, assigned the topic's partition(s) and reading them from the start (the topic
is compacted: one event per model is all it keeps), and applies each event to its
:class:`~streams.image_edit.blocks.ModelBlocks`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.image_edit.blocks import BlockEvent

__all__ = ["follow_blocks"]

log = logging.getLogger(__name__)


async def follow_blocks(bootstrap: str, topic: str, apply: Callable[[BlockEvent, float], None]) -> None:
    """Apply every block event of ``topic``, old and new, until cancelled."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=200)
    await consumer.start()
    try:
        while not (partitions := consumer.partitions_for_topic(topic)):
            await consumer._client.force_metadata_update()  # the worker creates it at start
            await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("reading %s: %s", topic, exc)
                await asyncio.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    try:
                        apply(BlockEvent.loads(record.value or b""), time.time())
                    except (ValueError, TypeError) as exc:
                        log.warning("ignoring a bad upstream-block event: %s", exc)
    finally:
        await consumer.stop()
