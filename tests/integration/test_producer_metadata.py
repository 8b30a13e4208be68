"""aiokafka forgets topics it never had to look up; the worker tracks them up front.

Against the real broker: a producer whose metadata came from an all-topics refresh
queues a batch for an existing topic, then a send to a topic that does not exist yet
narrows the tracked set to that one topic.  Untreated, the next refresh drops the
first topic and its batch never finds a leader (the worker hung in a flush this way);
with :func:`streams.topics.track_in_producer_metadata` it is delivered.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from streams.topics import track_in_producer_metadata

pytestmark = pytest.mark.timeout(60)

#: Short, so the untreated batch gives up (it would retry for 20 min in Faust).
REQUEST_TIMEOUT_MS = 3000


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


async def queue_then_narrow(bootstrap: str, admin: AIOKafkaAdminClient, *, track: bool) -> asyncio.Future:
    existing = f"meta-{uuid.uuid4().hex[:8]}"
    later = f"{existing}-later"
    await admin.create_topics([NewTopic(existing, 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=300, request_timeout_ms=REQUEST_TIMEOUT_MS)
    await producer.start()
    try:
        await producer.client.force_metadata_update()  # nothing tracked yet: every topic's metadata
        assert producer.client.cluster.partitions_for_topic(existing) == {0}
        if track:
            track_in_producer_metadata(producer.client, [existing, later])
        queued = await producer.send(existing, b"queued")  # lingers 300 ms in the accumulator
        send_later = asyncio.create_task(producer.send(later, b"later"))  # unknown: narrows the tracked set
        await admin.create_topics([NewTopic(later, 1, 1)])
        outcome = asyncio.get_running_loop().create_future()
        try:
            outcome.set_result(await asyncio.wait_for(asyncio.shield(queued), REQUEST_TIMEOUT_MS / 1000 + 5))
        except KafkaError as exc:
            outcome.set_exception(exc)
        await send_later
        return outcome
    finally:
        await producer.stop()


async def test_untracked_topic_loses_its_queued_batch(kafka_bootstrap: str, admin: AIOKafkaAdminClient) -> None:
    """The failure the workaround exists for (if aiokafka fixes it, this test says so)."""
    outcome = await queue_then_narrow(kafka_bootstrap, admin, track=False)
    with pytest.raises(KafkaError):
        outcome.result()


async def test_tracked_topics_keep_their_metadata(kafka_bootstrap: str, admin: AIOKafkaAdminClient) -> None:
    outcome = await queue_then_narrow(kafka_bootstrap, admin, track=True)
    assert outcome.result().offset == 0
