"""Every topic of the app, declared once so all agents and views share the objects.

Names of the external topics are fixed (DESIGN.md §4).  All topics are created by
the worker at start with ``IMAGESTREAM_TOPIC_PARTITIONS`` partitions (the broker's
auto-create is off): consumed ones by Faust itself, produced-only ones by
:func:`declare_topics`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import faust
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from streams.app import app, settings
from streams.codecs import JSON_KEY

log = logging.getLogger(__name__)

__all__ = [
    "ALL_TOPICS",
    "dead_letter_topic",
    "dimension_fetch_topic",
    "dimension_requests_topic",
    "dimension_results_topic",
    "dimension_updates_topic",
    "image_edit_jobs_topic",
    "image_edit_requests_topic",
    "image_edit_results_topic",
    "image_edit_task_status_topic",
    "task_updates_topic",
    "topics_declared",
    "track_in_producer_metadata",
]


def _topic(name: str, *, compacted: bool = False) -> faust.TopicT:
    # Values travel as raw JSON bytes: consumers parse them with the pipelines'
    # validators (a bad event becomes a dead letter, not an agent crash);
    # producers send Records, which serialise themselves as plain JSON.
    return app.topic(
        settings.topic_prefix + name,
        key_type=str,
        value_type=bytes,
        key_serializer=JSON_KEY,
        value_serializer="raw",
        internal=True,
        partitions=settings.topic_partitions,
        compacting=compacted or None,
    )


# Image edit --------------------------------------------------------------------------
image_edit_requests_topic = _topic("image-edit-requests")
image_edit_jobs_topic = _topic("image-edit-jobs")
image_edit_results_topic = _topic("image-edit-results")
image_edit_task_status_topic = _topic("image-edit-task-status")
#: Internal: plans and per-image outcomes, keyed by task_id, in the order they
#: happened (a task's plan is always written before any of its jobs exist).
task_updates_topic = _topic("imagestream-task-updates")

# Dimensions --------------------------------------------------------------------------
dimension_requests_topic = _topic("dimension-requests")
dimension_results_topic = _topic("dimension-results")
#: Internal: URLs to fetch, keyed by URL so one partition owns each URL's fetch.
dimension_fetch_topic = _topic("imagestream-dimension-fetches")
#: Internal: fetched sizes, keyed by session|resource|scene for the dimensions table.
dimension_updates_topic = _topic("imagestream-dimension-updates")

# Errors ------------------------------------------------------------------------------
dead_letter_topic = _topic("imagestream-dead-letters")

ALL_TOPICS: tuple[faust.TopicT, ...] = (
    image_edit_requests_topic,
    image_edit_jobs_topic,
    image_edit_results_topic,
    image_edit_task_status_topic,
    task_updates_topic,
    dimension_requests_topic,
    dimension_results_topic,
    dimension_fetch_topic,
    dimension_updates_topic,
    dead_letter_topic,
)


#: Set once every topic exists; the worker is not ready (``/healthz``) before.
topics_declared = asyncio.Event()


def track_in_producer_metadata(client: AIOKafkaClient, names: Iterable[str]) -> None:
    """Make the producer's client ask for these topics in every metadata refresh.

    aiokafka tracks a topic only when a send finds it missing from its metadata.  A
    refresh made while nothing is tracked fetches *every* topic (Faust's topic
    creation makes one), so sends to existing topics then track nothing.  The first
    send to a topic that does not exist yet (a produced-only topic before it is
    created) makes the tracked set just that topic, the next refresh forgets all the
    others, and a batch already queued for one of them has no leader: the sender
    loops on metadata requests at full CPU until the batch expires
    (``producer_request_timeout``, 20 min in Faust), and whatever awaits it (a flush,
    an ack) hangs with it.  Seen here on a worker's first seconds.  Tracking every
    topic the worker writes to, as soon as it exists, keeps them all in every refresh
    (tracking one before it exists would log an error on every refresh until then).
    """
    for name in names:
        client.add_topic(name)


def produced_topic_names() -> list[str]:
    """Every topic this worker writes to: ours and the tables' changelogs."""
    return [t.get_topic_name() for t in ALL_TOPICS] + [
        table.changelog_topic.get_topic_name() for table in app.tables.values()
    ]


async def _declare(topic: faust.TopicT, client: AIOKafkaClient | None) -> None:
    """Create one topic, retried with backoff while the broker is unreachable."""
    delay = 0.5
    while True:
        try:
            await topic.maybe_declare()
            break
        except KafkaError as exc:
            log.warning("creating topic %s failed (%r); retrying in %.1fs", topic.get_topic_name(), exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    if client is not None:
        track_in_producer_metadata(client, [topic.get_topic_name()])


@app.task
async def declare_topics() -> None:
    """Create every topic (idempotent) before agents produce to them, and have the
    producer track each in its metadata as soon as it exists.

    Retried with backoff while the broker is unreachable: a broker restart in the
    first seconds of a worker must not crash it (agents wait on the topics meanwhile).
    """
    producer = getattr(app.producer, "_producer", None)  # faust's aiokafka driver keeps it here
    client: AIOKafkaClient | None = getattr(producer, "client", None)
    wanted = produced_topic_names()
    if client is None:
        log.warning("producer not started before declare_topics: its metadata tracks topics only as sent")
    else:
        try:  # the ones that exist already (changelogs, consumed topics) at once
            existing = (await client.fetch_all_metadata()).topics()
            track_in_producer_metadata(client, [name for name in wanted if name in existing])
        except KafkaError as exc:
            log.warning("listing topics failed (%r); tracking them once created", exc)
    # All at once: each creation waits for the broker's metadata to show the topic.
    await asyncio.gather(*(_declare(topic, client) for topic in ALL_TOPICS))
    if client is not None:
        track_in_producer_metadata(client, wanted)  # changelogs, should one have been missing above
    topics_declared.set()
