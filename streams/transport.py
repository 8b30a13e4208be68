"""Faust's aiokafka transport, with the one consumer setting it does not expose.

Faust creates its worker consumer with ``fetch_max_wait_ms=1500``.  aiokafka keeps one
fetch request per broker in flight, for the partitions whose fetched records are all
consumed; a partition that runs dry meanwhile waits until that request comes back,
and the broker holds it the full wait when nothing arrives on *its* partitions.  The
agents here feed each other through topics, so that happens all the time: with the
1.5 s wait the cached path stalled for ~1.2 s at a time (1,700 images/s; 3,600 with
20 ms, ``bench/bench_image_edit.py``).  Idle, a shorter wait costs one small fetch
request per wait per broker.
"""

from __future__ import annotations

from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as driver

__all__ = ["Transport"]


class ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: driver.Transport) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its Fetcher (no public knob).
        consumer._fetch_max_wait_ms = getattr(transport, "fetch_max_wait_ms", consumer._fetch_max_wait_ms)
        return consumer

    async def refresh_metadata(self) -> None:
        """Re-read the cluster's metadata now (in the consumer's own thread and loop)."""
        await self.call_thread(self._refresh_metadata)

    async def _refresh_metadata(self) -> None:
        await self._ensure_consumer()._client.force_metadata_update()


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def refresh_metadata(self) -> None:
        """Re-read the cluster's metadata now instead of at the next periodic refresh
        (5 min).  aiokafka's coordinator rejoins the group when it sees a subscribed
        topic's partition count change, so a topic the group's last assignment missed
        gets its partitions assigned."""
        await cast(ConsumerThread, self._thread).refresh_metadata()


class Transport(driver.Transport):
    """``kafka://`` as Faust's, with ``fetch_max_wait`` (seconds) for its consumer."""

    Consumer = Consumer

    def __init__(self, *args: Any, fetch_max_wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_ms = max(1, round(fetch_max_wait * 1000))
