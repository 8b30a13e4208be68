"""Do all workers of the group use one blob store?

An image is uploaded to the worker that receives the request and read by the worker
that owns its job's partition, so every member of a group must see the same store.
One host: the default folder is the host's (``Settings.blob_dir``), shared whatever
each worker's DATA_DIR.  Several hosts: S3 (``IMAGESTREAM_BLOB_URL=s3://…``).  A
worker with a store of its own is refused loudly rather than discovered image by
image as ``blob_not_found``.

How: every worker writes its store's identity (:meth:`BlobStore.store_id`, a random
id kept in the store itself) to the compacted topic ``imagestream-blob-stores``, keyed
by its URL, as a startup step, so before its consumer joins the group.  Every worker
reads that whole topic, and compares the announcements of the group's current members
(the URLs in the assignment Faust's assignor hands every member).  Members that
disagree make every worker say so: ``/healthz`` 503 ``blob_store_not_shared``, submits
and uploads 503 with that code, a missing input blob failed with it (not
``blob_not_found``), and an error in the log naming the fix.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from faust.serializers import codecs

from streams.app import App, app, settings
from streams.blobs import BlobStoreNotShared
from streams.codecs import JSON_KEY
from streams.topics import blob_stores_topic

__all__ = [
    "NOT_SHARED",
    "UNANNOUNCED",
    "BlobSharing",
    "StoreAnnouncement",
    "sharing",
    "sharing_problem",
]

log = logging.getLogger(__name__)

#: ``waiting_for`` entries of /healthz.
NOT_SHARED = "blob_store_not_shared"
UNANNOUNCED = "blob_store_announcements"

FIX = ("several workers must use one blob store: on one host leave IMAGESTREAM_BLOB_URL unset "
       "(the host's folder, whatever IMAGESTREAM_DATA_DIR says) or give every worker the same "
       "file:///path; on several hosts set IMAGESTREAM_BLOB_URL=s3://bucket/prefix on every worker")


@dataclass(frozen=True)
class StoreAnnouncement:
    """One worker's blob store, as it tells the group (no credentials: locations only)."""

    member: str  # the worker's URL, as the assignor names members
    store_id: str
    location: str
    host: str
    at: float

    def dumps(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> StoreAnnouncement:
        doc = json.loads(raw)
        return cls(member=str(doc["member"]), store_id=str(doc["store_id"]), location=str(doc["location"]),
                   host=str(doc["host"]), at=float(doc["at"]))


def sharing_problem(members: Iterable[str], announced: Mapping[str, StoreAnnouncement]) -> str | None:
    """``NOT_SHARED`` when the members' announcements name more than one store,
    ``UNANNOUNCED`` when a member's announcement is not known here yet, else None."""
    members = list(members)
    stores = {announced[m].store_id for m in members if m in announced}
    if len(stores) > 1:
        return NOT_SHARED
    if any(m not in announced for m in members):
        return UNANNOUNCED
    return None


def describe_stores(members: Iterable[str], announced: Mapping[str, StoreAnnouncement]) -> dict[str, list[str]]:
    """Store (location and id) → the members using it, for messages and /healthz."""
    out: dict[str, list[str]] = {}
    for member in sorted(members):
        a = announced.get(member)
        label = f"{a.location} (id {a.store_id[:8]}, host {a.host})" if a else "unknown (not announced yet)"
        out.setdefault(label, []).append(member)
    return out


class BlobSharing:
    """This worker's announcement and what it has read of everyone else's."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.mine: StoreAnnouncement | None = None
        self.announced: dict[str, StoreAnnouncement] = {}
        self._reported: str | None = None

    def members(self) -> set[str]:
        """URLs of the group's current members (this worker's own before any assignment)."""
        members = set(self.app.assignor.external_topic_distribution)
        return members or {str(self.app.conf.canonical_url)}

    def problem(self) -> str | None:
        problem = sharing_problem(self.members(), self.announced)
        if problem != self._reported:
            self._report(problem)
        return problem

    def _report(self, problem: str | None) -> None:
        stores = describe_stores(self.members(), self.announced)
        if problem == NOT_SHARED:
            log.error("BLOB STORE NOT SHARED: the workers of group %r use different blob stores %s; "
                      "submits are refused until they share one: %s", self.app.conf.id, stores, FIX)
        elif self._reported == NOT_SHARED:
            log.warning("the workers of group %r share one blob store again: %s", self.app.conf.id, stores)
        self._reported = problem

    def not_shared_error(self) -> BlobStoreNotShared | None:
        """The error to answer while the group's stores differ (None while they do not)."""
        if self.problem() != NOT_SHARED:
            return None
        stores = describe_stores(self.members(), self.announced)
        return BlobStoreNotShared(f"the workers of this group use different blob stores "
                                  f"({'; '.join(f'{k}: {v}' for k, v in stores.items())}); {FIX}")

    def check_shared(self) -> None:
        """Raise :class:`BlobStoreNotShared` while the group's stores differ."""
        if (error := self.not_shared_error()) is not None:
            raise error

    def missing_blob(self, sha256: str) -> BlobStoreNotShared | None:
        """Why a blob is missing, if the group's stores tell (see ExplainedStore)."""
        return self.not_shared_error()

    def describe(self) -> dict[str, Any]:
        return {
            "store": self.mine.location if self.mine else None,
            "store_id": self.mine.store_id if self.mine else None,
            "members": {member: self.announced[member].location if member in self.announced else None
                        for member in sorted(self.members())},
        }

    # --- I/O --------------------------------------------------------------------------
    async def announce(self, app: App) -> None:
        """Startup step: write this worker's announcement (retried while the broker is away)."""
        from streams.runtime import runtime  # runtime wraps its store with this module's check

        store = runtime().blobs
        self.mine = StoreAnnouncement(member=str(app.conf.canonical_url), store_id=await store.store_id(),
                                      location=store.location, host=socket.gethostname(), at=time.time())
        topic = blob_stores_topic.get_topic_name()
        delay = 0.5
        while True:
            producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all",
                                        client_id=f"{app.conf.id}-blob-store")
            try:
                await producer.start()
                await producer.send_and_wait(topic, self.mine.dumps(), key=codecs.dumps(JSON_KEY, self.mine.member))
                break
            except KafkaError as exc:
                log.warning("announcing the blob store failed (%r); retrying in %.1fs", exc, delay)
            finally:
                await producer.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        self.announced[self.mine.member] = self.mine
        log.info("blob store %s (id %s) announced to group %r", self.mine.location, self.mine.store_id[:8],
                 app.conf.id)
        app.add_future(self.follow())

    async def follow(self) -> None:
        """Read every announcement, from the start of the topic, for as long as the worker runs."""
        tp = TopicPartition(blob_stores_topic.get_topic_name(), 0)
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                        enable_auto_commit=False, client_id=f"{self.app.conf.id}-blob-stores")
            try:
                await consumer.start()
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                while True:
                    batches = await consumer.getmany(tp, timeout_ms=1000)
                    for record in batches.get(tp, []):
                        self._apply(record.value)
            except KafkaError as exc:
                log.warning("reading blob store announcements failed (%r); starting over", exc)
            finally:
                await consumer.stop()
            await asyncio.sleep(1.0)

    def _apply(self, raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            announcement = StoreAnnouncement.loads(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed blob store announcement (%d bytes)", len(raw))
            return
        self.announced[announcement.member] = announcement


sharing = BlobSharing(app)
app.startup_steps.append(sharing.announce)
