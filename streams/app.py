"""The Faust application: ``app`` is what ``imagestream worker`` (and ``faust -A streams.app``) runs.

Settings are read once, here, from the environment (:class:`config.Settings`); every
other module takes them from :data:`settings`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import faust

from config import Settings
from streams.transport import Transport

__all__ = ["App", "app", "build_app", "settings"]

#: Modules holding agents, tasks, timers and views; scanned when the worker starts.
COMPONENT_MODULES = [
    "streams.topics",
    "streams.blob_sharing",
    "streams.readiness",
    "streams.web",
    "streams.stats_views",
    "streams.image_edit.agents",
    "streams.image_edit.views",
    "streams.dimensions.agents",
    "streams.dimensions.views",
    "streams.pages",
]


def broker_urls(bootstrap: str) -> list[str]:
    """``"h1:9092,h2:9092"`` → ``["kafka://h1:9092", "kafka://h2:9092"]``."""
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


StartupStep = Callable[["App"], Awaitable[None]]


class App(faust.App):
    """Faust's App with steps of its own at the start: :attr:`startup_steps`.

    mode runs a service's own ``on_start`` before it starts its children, so these
    steps are done before the producer, the consumer and the agents start, and before
    the consumer joins its group: the topics exist and the broker leads them
    (:func:`streams.topics.create_topics`), and this worker's blob store is announced
    to the group (:mod:`streams.blob_sharing`).
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        #: Awaited in order at every start (registered by the modules that own them).
        self.startup_steps: list[StartupStep] = []
        #: Partitions of every topic as the broker has them (filled at start).
        self.topic_partitions: dict[str, int] = {}

    async def on_start(self) -> None:
        await super().on_start()
        for step in self.startup_steps:
            await step(self)


def build_app(settings: Settings) -> App:
    """A configured :class:`App` (agents and views attach to it on import)."""
    settings.table_dir.mkdir(parents=True, exist_ok=True)
    app = App(
        settings.app_id,
        broker=broker_urls(settings.kafka_bootstrap),
        store="rocksdb://",
        datadir=str(settings.data_dir / "faust"),
        tabledir=str(settings.table_dir.resolve()),
        autodiscover=COMPONENT_MODULES,
        origin="streams",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        # Consumer group: quick joins and failure detection on a small cluster.
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_commit_interval=settings.commit_interval,
        consumer_auto_offset_reset=settings.consumer_auto_offset_reset,
        producer_linger=settings.producer_linger,
        producer_max_batch_size=settings.producer_batch_bytes,
        producer_acks=-1,
        # Stream buffers: the agents take control of acks, so a small buffer is enough.
        stream_buffer_maxsize=4096,
        stream_wait_empty=False,
        # Web: the body limit is raised on purpose for multipart uploads of 10 MB images;
        # anything larger is refused with 413 by aiohttp before it is read.
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        canonical_url=settings.web_url,
        web_application_options={"client_max_size": settings.max_request_bytes},
        web_in_thread=False,
        web_stats_enabled=False,
        web_tables_enabled=False,
        web_router_enabled=True,
        web_graph_enabled=False,
        table_cleanup_interval=60.0,
        table_standby_replicas=0,
    )
    # Faust's transport for kafka://, but its consumer's fetch wait is ours (see there).
    app.transport = Transport(app.conf.broker_consumer, app, fetch_max_wait=settings.consumer_fetch_wait)
    return app


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Per-partition RocksDB options for every table.

    Faust's defaults reserve a 2 GiB block cache and 3 × 64 MiB write buffers per
    partition DB; with 8 partitions × several tables that is far more than a worker
    should hold.  These keep a table's DB in a few MiB.
    """
    return {
        "block_cache_size": settings.rocksdb_block_cache_bytes,
        "block_cache_compressed_size": settings.rocksdb_block_cache_bytes,
        "write_buffer_size": settings.rocksdb_write_buffer_bytes,
        "max_write_buffer_number": settings.rocksdb_max_write_buffers,
        "max_open_files": 256,
    }


settings = Settings.from_env()
app = build_app(settings)
