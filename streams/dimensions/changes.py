"""Every worker follows the ``url_dimensions`` changelog: one answer across workers.

A key's owner remembers a URL's failure (:class:`~streams.dimensions.service.
RememberedFailures`) from the failure updates of the keys it owns, and answers
requests for the URL from that memory without a fetch job.  The URL's entry itself
lives on another worker (the URL's partition).  When a ``refresh=true`` succeeds
there, only the workers owning that refresh's keys hear of it through updates;
every other worker would keep answering the old failure until its TTL ran out.

So each worker reads the table's changelog (all partitions, from the end, with a
plain consumer outside the group: nothing is committed, every worker sees every
record) and hands each change of a URL it remembers to
:meth:`~streams.dimensions.service.RememberedFailures.apply_entry`.  Records of
other URLs cost a key decode and a dict lookup.  Changelog records are written by
Faust as the table is, so the memory follows the truth within a consumer fetch
(tens of milliseconds), whichever worker wrote it.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.app import app, settings
from streams.dimensions.models import UrlEntry
from streams.dimensions.service import RememberedFailures
from streams.dimensions.tables import url_dimensions
from streams.stats import metrics

__all__ = ["apply_change", "follow_url_changes"]

log = logging.getLogger(__name__)

#: Seconds between looks for the changelog topic before it exists (first start).
TOPIC_WAIT = 0.5

metrics.describe("dimension_url_changes_applied_total",
                 "url_dimensions changelog records that changed a remembered failure on this worker, by result")


def apply_change(memory: RememberedFailures, key: bytes | None, value: bytes | None) -> str | None:
    """Apply one changelog record; returns what it did (``forgot``, ``renewed``) or None."""
    if key is None:
        return None
    try:
        url = orjson.loads(key)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(url, str) or not memory.watches(url):
        return None
    entry: UrlEntry | None = None
    if value is not None:
        try:
            entry = UrlEntry.from_data(orjson.loads(value))
        except Exception:  # noqa: BLE001 - an unreadable record: keep what we know
            log.warning("unreadable url_dimensions changelog record")
            return None
    memory.apply_entry(url, entry)
    return "renewed" if entry is not None and entry.error is not None else "forgot"


def follow_url_changes(memory: RememberedFailures) -> None:
    """Register the task that keeps ``memory`` in step with the changelog."""

    @app.task
    async def follow_url_dimensions_changelog() -> None:
        while True:
            try:
                await _follow(memory)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broker hiccup: follow again, from the end
                log.exception("following the url_dimensions changelog failed; again in 1 s")
                await asyncio.sleep(1.0)


async def _follow(memory: RememberedFailures) -> None:
    topic = url_dimensions.changelog_topic.get_topic_name()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
        fetch_max_wait_ms=int(max(settings.consumer_fetch_wait, 0.05) * 1000), client_id=f"{settings.app_id}-urlwatch",
    )
    await consumer.start()
    try:
        while topic not in await consumer.topics():  # fresh metadata each time
            await asyncio.sleep(TOPIC_WAIT)  # the app creates its topics at start
        # The app created the changelog with the table's partitions (streams.topics).
        tps = [TopicPartition(topic, p) for p in range(url_dimensions.partitions or settings.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        log.info("following %s (%d partitions) for remembered dimension failures", topic, len(tps))
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for records in batches.values():
                for record in records:
                    done = apply_change(memory, record.key, record.value)
                    if done is not None:
                        metrics.inc("dimension_url_changes_applied_total", result=done)
    finally:
        await consumer.stop()
