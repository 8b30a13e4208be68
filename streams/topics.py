"""Every topic of the app, declared once so all agents and views share the objects.

The names of the external topics are fixed.  Every topic is created by the worker
at start, with ``IMAGESTREAM_TOPIC_PARTITIONS`` partitions (the broker's auto-create
is off), before its consumer joins the group: :func:`create_topics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NodeNotReadyError,
    NotControllerError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    for_code,
)
from mode.utils.times import want_seconds

from streams.app import app, settings
from streams.codecs import JSON_KEY

log = logging.getLogger(__name__)

__all__ = [
    "ALL_TOPICS",
    "blob_stores_topic",
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
    "upstream_blocks_topic",
    "TopicSpec",
    "create_topics",
    "every_topic_spec",
    "partitions_led",
    "topic_spec",
    "track_in_producer_metadata",
]


def _topic(name: str, *, compacted: bool = False, partitions: int | None = None) -> faust.TopicT:
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
        partitions=partitions or settings.topic_partitions,
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

#: Internal: per-model upstream blocks set and lifted after account-state errors
#: (streams/image_edit/blocks.py), keyed by model.  One compacted partition that every
#: worker reads whole (outside the consumer group), so all learn of a block at once.
upstream_blocks_topic = _topic("imagestream-upstream-blocks", compacted=True, partitions=1)

# Errors ------------------------------------------------------------------------------
dead_letter_topic = _topic("imagestream-dead-letters")

# Cluster -----------------------------------------------------------------------------
#: Internal: each worker's blob store identity, keyed by the worker's URL (compacted,
#: one partition: every worker reads all of it; :mod:`streams.blob_sharing`).
blob_stores_topic = _topic("imagestream-blob-stores", compacted=True, partitions=1)

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
    upstream_blocks_topic,
    dead_letter_topic,
    blob_stores_topic,
)


def track_in_producer_metadata(client: AIOKafkaClient, names: Iterable[str]) -> None:
    """Make the producer's client ask for these topics in every metadata refresh.

    aiokafka tracks a topic only when a send finds it missing from its metadata.  A
    refresh made while nothing is tracked fetches *every* topic, so sends to existing
    topics then track nothing.  The first send to a topic the producer has not seen
    makes the tracked set just that topic, the next refresh forgets all the others,
    and a batch already queued for one of them has no leader: the sender loops on
    metadata requests at full CPU until the batch expires (``producer_request_timeout``,
    20 min in Faust), and whatever awaits it (a flush, an ack) hangs with it.  Every
    topic exists before the producer starts (:func:`create_topics`), so this should
    not happen to the worker; tracking them all keeps it so whatever aiokafka does.
    """
    for name in names:
        client.add_topic(name)


@dataclass(frozen=True)
class TopicSpec:
    """What the broker must have for one topic."""

    name: str
    partitions: int
    replicas: int
    config: Mapping[str, str]

    def new_topic(self) -> NewTopic:
        return NewTopic(self.name, self.partitions, self.replicas, topic_configs=dict(self.config))


def topic_spec(topic: faust.TopicT, *, default_partitions: int, default_replicas: int) -> TopicSpec:
    """The broker-side shape of a Faust topic, with the configs Faust itself would set."""
    config: dict[str, str] = {}
    policies = [name for name, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
    if policies:
        config["cleanup.policy"] = ",".join(policies)
    if topic.retention:
        config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
    config.update({str(k): str(v) for k, v in (topic.config or {}).items()})
    return TopicSpec(
        name=topic.get_topic_name(),
        partitions=topic.partitions or default_partitions,
        replicas=topic.replicas or default_replicas,
        config=config,
    )


def every_topic_spec(app: faust.App) -> list[TopicSpec]:
    """Every topic the worker consumes or writes: ours, the tables' changelogs and
    Faust's leader-election topic (its name is Faust's; it has one partition)."""
    topics: list[faust.TopicT] = [*ALL_TOPICS, *(table.changelog_topic for table in app.tables.values())]
    specs = [
        topic_spec(t, default_partitions=app.conf.topic_partitions, default_replicas=app.conf.topic_replication_factor)
        for t in topics
    ]
    if not app.conf.topic_disable_leader:
        specs.append(TopicSpec(f"{app.conf.id}-__assignor-__leader", 1, app.conf.topic_replication_factor, {}))
    return specs


def partitions_led(described: Iterable[Mapping[str, Any]], names: Iterable[str]) -> dict[str, int]:
    """Topic name → partition count, for those of ``names`` that a Metadata answer shows
    with a leader for every partition (what a consumer group can be assigned)."""
    wanted = set(names)
    ready: dict[str, int] = {}
    for topic in described:
        if topic.get("topic") not in wanted:
            continue
        partitions = topic.get("partitions") or []
        if topic.get("error_code", 0) == 0 and partitions and all(p.get("leader", -1) >= 0 for p in partitions):
            ready[topic["topic"]] = len(partitions)
    return ready


async def _create_and_await(admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout: float) -> dict[str, int]:
    """Create the missing topics, then poll Metadata until every one is led."""
    names = [spec.name for spec in specs]
    # Asked for all topics, not by name: a Metadata request naming a missing topic
    # makes a broker with auto.create.topics.enable create it with its defaults.
    ready = partitions_led(await admin.describe_topics(), names)
    missing = [spec for spec in specs if spec.name not in ready]
    if missing:
        log.info("creating %d topics: %s", len(missing), ", ".join(spec.name for spec in missing))
        response = await admin.create_topics([spec.new_topic() for spec in missing], timeout_ms=int(timeout * 1000))
        for name, code, message in (error[:3] for error in response.topic_errors):
            if code not in (0, TopicAlreadyExistsError.errno):  # another worker was first: fine
                raise for_code(code)(f"cannot create topic {name}: {message}")
    deadline = time.monotonic() + timeout
    while len(ready) < len(specs):
        if time.monotonic() > deadline:
            raise KafkaTimeoutError(f"topics not led after {timeout}s: {sorted(set(names) - set(ready))}")
        await asyncio.sleep(0.05)
        ready = partitions_led(await admin.describe_topics(), names)
    for spec in specs:
        if ready[spec.name] != spec.partitions:
            log.warning("topic %s has %d partitions, not the %d configured (IMAGESTREAM_TOPIC_PARTITIONS "
                        "applies to new topics only)", spec.name, ready[spec.name], spec.partitions)
    return ready


async def create_topics(app: faust.App) -> None:
    """Create every topic and wait until the broker leads all their partitions.

    The first of :class:`streams.app.App`'s startup steps: done before its producer,
    consumer and agents start.  Faust itself declares the consumed topics just before the consumer
    subscribes, but does not wait for the broker's metadata to show them: on a new
    cluster the group's first assignment could be computed while a topic was still
    missing there ("Ignoring missing topic"), and its agent never got a partition
    until the next metadata refresh, 5 minutes later.  Retried with backoff while the
    broker is unreachable, so a broker outage in a worker's first seconds only delays it.
    """
    specs = every_topic_spec(app)
    delay = 0.5
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id=f"{app.conf.id}-topics",
                                    request_timeout_ms=15_000)
        try:
            await admin.start()
            app.topic_partitions.update(await _create_and_await(admin, specs, timeout=30.0))
            return
        except (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError, RequestTimedOutError,
                NotControllerError, LeaderNotAvailableError, OSError) as exc:
            log.warning("creating topics failed (%r); retrying in %.1fs", exc, delay)
        finally:
            await admin.close()
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


app.startup_steps.append(create_topics)


@app.task
async def track_producer_topics() -> None:
    """Have the producer track every topic it writes to (see :func:`track_in_producer_metadata`)."""
    producer = getattr(app.producer, "_producer", None)  # faust's aiokafka driver keeps it here
    client: AIOKafkaClient | None = getattr(producer, "client", None)
    if client is not None:
        track_in_producer_metadata(client, [spec.name for spec in every_topic_spec(app)])
