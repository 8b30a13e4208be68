"""Whether this worker can serve, and what it still waits for (``/healthz``).

Ready means: this worker has joined the group, no rebalance is under way, its tables
are recovered, every agent's source topic has all its partitions assigned across
the group (so a job published now has an agent that will take it), and every member
of the group uses this worker's blob store (:mod:`streams.blob_sharing`).  Faust serves
web views before all of that holds; the views that route to a table owner answer 503
until then.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import faust

from streams.app import App, app
from streams.blob_sharing import BlobSharing, sharing

__all__ = ["Readiness", "readiness", "unassigned_topics"]

log = logging.getLogger(__name__)

#: A source topic left out of the group's assignment this long makes the worker
#: re-read the cluster's metadata, which makes the group rejoin.
REJOIN_AFTER = 3.0
REJOIN_EVERY = 10.0


def unassigned_topics(sources: Mapping[str, int], distribution: Mapping[str, Mapping[str, Sequence[int]]]) -> list[str]:
    """The source topics (name → partition count) some partition of which no member
    of the group was assigned, from the group-wide assignment Faust's assignor hands
    every member (member URL → topic → partitions)."""
    assigned: dict[str, set[int]] = defaultdict(set)
    for topics in distribution.values():
        for topic, partitions in topics.items():
            assigned[topic].update(partitions)
    return sorted(name for name, count in sources.items() if not set(range(count)) <= assigned[name])


class Readiness:
    """This worker's readiness, read from Faust's state at the moment of asking."""

    def __init__(self, app: App, sharing: BlobSharing) -> None:
        self.app = app
        self.sharing = sharing
        self.assigned_at: float | None = None
        self.started_at = time.time()
        self._unassigned_since: float | None = None
        self._last_refresh = 0.0

    def on_assigned(self) -> None:
        self.assigned_at = time.time()

    def source_topics(self) -> dict[str, int]:
        """Every agent's source topic → its partition count (as the broker has it)."""
        out: dict[str, int] = {}
        for agent in self.app.agents.values():
            channel = agent.channel
            if isinstance(channel, faust.TopicT):
                for name in channel.topics:
                    out[name] = self.app.topic_partitions.get(name) or channel.partitions or self.app.conf.topic_partitions
        return out

    def unassigned(self) -> list[str]:
        if self.assigned_at is None:
            return sorted(self.source_topics())
        return unassigned_topics(self.source_topics(), self.app.assignor.external_topic_distribution)

    def waiting_for(self) -> list[str]:
        """What stands between this worker and ready (empty: ready)."""
        waiting: list[str] = []
        if self.assigned_at is None:
            waiting.append("partition_assignment")
        if self.app.rebalancing:
            waiting.append("rebalancing")
        recovery = self.app.tables.recovery
        if recovery.in_recovery or not recovery.completed.is_set():
            waiting.append("table_recovery")
        if self.assigned_at is not None and not self.app.rebalancing:
            waiting.extend(self.unassigned())
            if (problem := self.sharing.problem()) is not None:
                waiting.append(problem)
        return waiting

    @property
    def ready(self) -> bool:
        return not self.waiting_for()

    def describe(self) -> dict[str, Any]:
        waiting = self.waiting_for()
        assignment = self.app.consumer.assignment() if self.assigned_at else set()
        sources = self.source_topics()
        mine: dict[str, list[int]] = {name: [] for name in sorted(sources)}
        for tp in sorted(assignment):
            if tp.topic in mine:
                mine[tp.topic].append(tp.partition)
        return {
            "ready": not waiting,
            "status": "starting" if waiting else "ok",
            "waiting_for": waiting,
            "rebalancing": bool(self.app.rebalancing),
            "in_recovery": bool(self.app.tables.recovery.in_recovery),
            "assigned_partitions": len(assignment),
            #: This worker's share of every agent's source topic.
            "source_partitions": mine,
            "blob_store": self.sharing.describe(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    async def heal(self, now: float) -> None:
        """Make the group rejoin when a source topic stays out of its assignment.

        Every topic exists before the consumer joins (:func:`streams.topics.create_topics`),
        so this is the second line: a topic deleted and re-created, or a member that
        joined with older metadata, would otherwise wait for aiokafka's next periodic
        metadata refresh (5 minutes) with an agent that has no partition.
        """
        if self.assigned_at is None or self.app.rebalancing or not self.unassigned():
            self._unassigned_since = None
            return
        if self._unassigned_since is None:
            self._unassigned_since = now
        if now - self._unassigned_since >= REJOIN_AFTER and now - self._last_refresh >= REJOIN_EVERY:
            self._last_refresh = now
            log.warning("topics %s have partitions no member of the group was assigned; "
                        "re-reading the cluster's metadata so the group rejoins", self.unassigned())
            await self.app.consumer.refresh_metadata()


readiness = Readiness(app, sharing)


@app.on_partitions_assigned.connect  # type: ignore[misc]
async def _mark_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
    readiness.on_assigned()


@app.timer(1.0)
async def _heal_assignment() -> None:
    await readiness.heal(time.monotonic())
