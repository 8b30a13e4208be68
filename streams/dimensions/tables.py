"""Tables of the dimension pipeline (RocksDB, changelogged to Kafka).

Each table is written only by the agent of the topic it is co-partitioned with:

==================  ==========================  ===================================
table               key                         written by (topic, same key)
==================  ==========================  ===================================
``dimensions``      session_id|resource|scene   ``apply_updates`` (dimension updates)
``url_dimensions``  URL                         ``fetch_dimensions_of_urls`` (fetches)
``scene_sizes``     scene|partition             ``apply_updates`` (dimension updates)
==================  ==========================  ===================================

``scene_sizes`` keeps one row per (scene, partition of the updates topic), written
only from that partition's events (so it is stored in, and recovered from, that
partition's changelog).  Readers merge the rows they hold: each partition sees a
random sample of the keys, so any worker's rows estimate the scene's size
distribution, and a single worker sees all of them.

Keys are strings, stored and changelogged with the topics' ``json_key`` codec
(:func:`streams.codecs.with_json_keys`).  Every read and write here happens in the
context of the feeding topic's event (whose partition is the truth), and views find
a key's owner through that topic's key bytes (:func:`streams.dimensions.views._owner`),
never through ``table_route``.
"""

from __future__ import annotations

from streams.app import app, rocksdb_options, settings
from streams.codecs import with_json_keys
from streams.dimensions.models import DimensionEntry, SceneSizes, UrlEntry

__all__ = ["dimensions", "scene_sizes", "url_dimensions"]


def _table(name: str, value_type: type, help_text: str):  # type: ignore[no-untyped-def]
    return with_json_keys(app.Table(
        name,
        key_type=str,
        value_type=value_type,
        partitions=settings.topic_partitions,
        options=rocksdb_options(settings),
        help=help_text,
    ))


#: session_id|resource|scene → DimensionEntry (latest fetched_at wins).
dimensions = _table("dimensions", DimensionEntry, "Image sizes per session, resource and scene.")

#: URL → UrlEntry (size, ETag/Last-Modified, fetched_at; TTL checked at read, then
#: revalidated), or the URL's last failure until its retry_at (the negative cache).
url_dimensions = _table("url_dimensions", UrlEntry, "Image sizes per URL, shared by sessions.")

#: scene|partition → SceneSizes (bounded counts of real sizes: the smart placeholder).
scene_sizes = _table("scene_sizes", SceneSizes, "Most common real image sizes per scene.")
