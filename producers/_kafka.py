"""Kafka I/O of the client (internal): publish JSON events, follow a key on topics.

The one place aiokafka is used by the client library; its exceptions become
:class:`~producers.errors.Unreachable` here.  Keys are written as the worker writes
them (a JSON string, ``json.dumps(key)``) so partitioning and ``kcat`` agree.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from producers.errors import Unreachable

__all__ = ["Follower", "KafkaIO", "json_key", "partition_for"]

log = logging.getLogger(__name__)

_FAILURES = (KafkaError, OSError, asyncio.TimeoutError)


def json_key(key: str) -> bytes:
    """A message key as the worker writes it: the JSON string of ``key``."""
    return json.dumps(key).encode()


def partition_for(key: bytes, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner (murmur2, as aiokafka's and the Java
    client's) gives ``key`` among ``partitions``."""
    ordered = sorted(partitions)
    return ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]


class Follower:
    """Reads new messages with one key from some topics, from where they ended when
    :meth:`start` returned (so only events after that moment are seen).

    Only the partition the key hashes to is read on each topic."""

    def __init__(self, bootstrap: str, topics: Sequence[str], key: str, *, timeout: float) -> None:
        self._topics = list(topics)
        self._key = key
        self._raw_keys = {json_key(key), key.encode()}  # JSON keys, and plain ones from other producers
        self._timeout = timeout
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,
            request_timeout_ms=max(int(timeout * 1000), 5000),
        )
        self._started = False

    async def start(self) -> None:
        """Connect, assign the key's partitions and resolve their end offsets.

        Raises :class:`Unreachable` (``service="kafka"``) when the cluster does not
        answer in time or a topic does not exist."""
        try:
            await asyncio.wait_for(self._start(), self._timeout)
        except _FAILURES as exc:
            await self.close()
            raise Unreachable(f"Kafka follow of {', '.join(self._topics)} failed: {_describe(exc)}",
                              service="kafka") from None

    async def _start(self) -> None:
        await self._consumer.start()
        self._started = True
        assigned: list[TopicPartition] = []
        for topic in self._topics:
            partitions = await _partitions(self._consumer, topic)
            assigned.append(TopicPartition(topic, partition_for(json_key(self._key), partitions)))
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the end offsets now, before anything else happens
            await self._consumer.position(tp)

    async def read(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """``(topic, value)`` of the messages with our key that arrive within ``timeout``
        seconds (returns as soon as there are some).  Values that are not JSON objects
        are skipped."""
        try:
            batch = await self._consumer.getmany(timeout_ms=max(int(timeout * 1000), 0))
        except _FAILURES as exc:
            raise Unreachable(f"Kafka read failed: {_describe(exc)}", service="kafka") from None
        out: list[tuple[str, dict[str, Any]]] = []
        for tp, records in batch.items():
            for record in records:
                if record.key not in self._raw_keys or record.value is None:
                    continue
                try:
                    value = json.loads(record.value)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    out.append((tp.topic, value))
        return out

    async def close(self) -> None:
        if self._started:
            self._started = False
            try:
                await self._consumer.stop()
            except _FAILURES:  # pragma: no cover - closing a broken connection
                log.debug("closing the Kafka consumer failed", exc_info=True)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    # aiokafka has no public "metadata of this topic" call on a consumer without a
    # subscription; the client's add_topic() refreshes metadata including the topic.
    await consumer._client.add_topic(topic)  # noqa: SLF001
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise KafkaError(f"topic {topic!r} does not exist (is a worker running with this topic prefix?)")
    return set(partitions)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text, name = str(exc), type(exc).__name__
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class KafkaIO:
    """A lazily started producer plus followers, for one bootstrap address."""

    def __init__(self, bootstrap: str, *, timeout: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _get_producer(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0,
                                            request_timeout_ms=max(int(self.timeout * 1000), 5000))
                try:
                    await asyncio.wait_for(producer.start(), self.timeout)
                except _FAILURES as exc:
                    await _stop_quietly(producer)
                    raise Unreachable(f"Kafka at {self.bootstrap} did not answer: {_describe(exc)}",
                                      service="kafka") from None
                self._producer = producer
            return self._producer

    async def send(self, topic: str, key: str, value: Mapping[str, Any]) -> None:
        """Publish ``value`` as JSON with the JSON-string ``key``; returns once the
        broker has it.  The topic must exist (the worker creates its topics)."""
        producer = await self._get_producer()
        try:
            await asyncio.wait_for(producer.partitions_for(topic), self.timeout)
        except _FAILURES:
            raise Unreachable(f"topic {topic!r} not found on Kafka at {self.bootstrap} (is a worker running "
                              "with the same IMAGESTREAM_TOPIC_PREFIX?)", service="kafka") from None
        raw = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            await asyncio.wait_for(producer.send_and_wait(topic, raw, key=json_key(key)), self.timeout)
        except _FAILURES as exc:
            raise Unreachable(f"publishing to {topic!r} failed: {_describe(exc)}", service="kafka") from None

    async def follow(self, topics: Iterable[str], key: str) -> Follower:
        """A started :class:`Follower` (raises :class:`Unreachable`)."""
        follower = Follower(self.bootstrap, list(topics), key, timeout=self.timeout)
        await follower.start()
        return follower

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await _stop_quietly(producer)


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except _FAILURES:  # pragma: no cover
        log.debug("stopping the Kafka producer failed", exc_info=True)
