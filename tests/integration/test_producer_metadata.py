"""aiokafka forgets topics it never had to look up; the worker tracks them up front.

Against the real broker.  aiokafka tracks a topic only once a send finds it missing
from its metadata; after an all-topics refresh, a send to a topic that does not exist
yet narrows the tracked set to that one topic, and the next refresh drops every other
topic from the producer's metadata (a batch queued for one of them then finds no
leader: the worker hung in a flush this way).  What is checked here is our fix,
:func:`streams.topics.track_in_producer_metadata`: after that narrowing send and a
refresh, the tracked topics are still in the producer's metadata, and a send to one
is delivered.  Nothing depends on aiokafka still having the bug, or on linger timing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.topics import track_in_producer_metadata
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


async def test_tracked_topics_stay_in_the_producer_metadata_after_a_send_to_a_new_topic(
    kafka_bootstrap: str, admin: AIOKafkaAdminClient
) -> None:
    existing = f"meta-{uuid.uuid4().hex[:8]}"
    later = f"{existing}-later"
    await admin.create_topics([NewTopic(existing, 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000)
    await producer.start()
    try:
        async def known() -> bool:  # nothing tracked yet: each refresh fetches every topic
            await producer.client.force_metadata_update()
            return producer.client.cluster.partitions_for_topic(existing) == {0}

        # created is not yet led: the broker's metadata shows the topic a moment later
        await wait_for(known, timeout=20, what=f"{existing} in the producer's metadata")
        track_in_producer_metadata(producer.client, [existing, later])
        # A send to a topic the producer has not seen (it does not exist yet): the
        # narrowing step.
        send_later = asyncio.create_task(producer.send_and_wait(later, b"later"))
        await admin.create_topics([NewTopic(later, 1, 1)])
        assert (await asyncio.wait_for(send_later, 30)).offset == 0
        await producer.client.force_metadata_update()
        # Still known after the refresh, so a batch for it finds its leader.
        assert producer.client.cluster.partitions_for_topic(existing) == {0}
        assert producer.client.cluster.partitions_for_topic(later) == {0}
        delivered = await asyncio.wait_for(producer.send_and_wait(existing, b"after the refresh"), 30)
        assert delivered.offset == 0
    finally:
        await producer.stop()
