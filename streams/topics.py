"""Every topic of the app, declared once so all agents and views share the objects.

Names of the external topics are fixed (DESIGN.md §4).  All topics are created by
the worker at start with ``IMAGESTREAM_TOPIC_PARTITIONS`` partitions (the broker's
auto-create is off): consumed ones by Faust itself, produced-only ones by
:func:`declare_topics`.
"""

from __future__ import annotations

import asyncio
import logging

import faust
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


@app.task
async def declare_topics() -> None:
    """Create every topic (idempotent) before agents produce to them.

    Retried with backoff while the broker is unreachable: a broker restart in the
    first seconds of a worker must not crash it (agents wait on the topics meanwhile).
    """
    pending = list(ALL_TOPICS)
    delay = 0.5
    while pending:
        try:
            await pending[0].maybe_declare()
            pending.pop(0)
            delay = 0.5
        except KafkaError as exc:
            log.warning("creating topic %s failed (%r); retrying in %.1fs", pending[0].get_topic_name(), exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
