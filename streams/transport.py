"""Faust's aiokafka transport, with the one consumer setting it does not expose and
a commit that never skips an unfinished event.

Faust creates its worker consumer with ``fetch_max_wait_ms=1500``.  aiokafka keeps one
fetch request per broker in flight, for the partitions whose fetched records are all
consumed; a partition that runs dry meanwhile waits until that request comes back,
and the broker holds it the full wait when nothing arrives on *its* partitions.  The
agents here feed each other through topics, so that happens all the time: with the
1.5 s wait the cached path stalled for ~1.2 s at a time (1,700 images/s; 3,600 with
20 ms, ``bench/bench_image_edit.py``).  Idle, a shorter wait costs one small fetch
request per wait per broker.

Commits: the agents here ack events out of order (a job batch whose images were all
cached is acked at once, one waiting on upstream calls seconds later).  Faust commits
"the first run of consecutive acked offsets", and its check that this run starts where
the last commit ended is off by one and skipped while nothing was committed yet: with
offset 5 still running and 6 acked, it committed 7.  A worker killed then lost event 5
for good (its next owner started at 7): seen as a task stuck at 14/20 images after a
``kill -9``.  :func:`commit_bound` commits only below the oldest event still unacked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as driver
from faust.types import TP

__all__ = ["Transport", "commit_bound"]


def commit_bound(acked: list[int], oldest_unacked: int) -> tuple[int | None, list[int]]:
    """The offset to commit while the event at ``oldest_unacked`` is still being
    processed, and the acked offsets left to consider later.

    Everything delivered below ``oldest_unacked`` is acked (delivery is in offset order
    within a partition), so committing it is safe; nothing at or above it is.
    """
    done = [offset for offset in acked if offset < oldest_unacked]
    rest = sorted(offset for offset in acked if offset >= oldest_unacked)
    return (oldest_unacked if done else None), rest


def oldest_unacked(messages: Iterable[Any], tp: TP, generation: int) -> int | None:
    """The lowest offset of ``tp`` delivered in this generation and not acked yet."""
    return min((m.offset for m in messages
                if m.tp == tp and not m.acked and m.generation_id == generation), default=None)


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
    def _new_offset(self, tp: TP) -> int | None:
        """Faust's next commit for ``tp``, never past an event still unacked."""
        pending = oldest_unacked(list(self._unacked_messages), tp, self.app.consumer_generation_id)
        if pending is None:
            return cast("int | None", super()._new_offset(tp))  # everything delivered is acked
        offset, rest = commit_bound(self._acked[tp], pending)
        if offset is not None:
            self._acked_index[tp].difference_update(set(self._acked[tp]) - set(rest))
            self._acked[tp][:] = rest
            if self._gap[tp]:
                self._gap[tp].chop(0, offset)  # offsets below a commit need no filling
        return offset

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
