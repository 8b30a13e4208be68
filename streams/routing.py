"""Partition plumbing shared by both pipelines: who owns a key, and acting as it.

* :func:`owner_of` — the worker whose web server answers for a table key.  Faust's
  ``table_route`` asks the producer's metadata for the key's partition, which fails
  right after start (the producer has not seen the changelog topic yet: a 500).  We
  compute the partition the way Kafka's default partitioner does (murmur2, see
  :func:`streams.publish.partition_for`) and look the host up in the assignor's
  changelog distribution instead.
* :func:`forward` — send the request on to that worker, once (``X-Imagestream-Routed``
  stops loops while the assignment is moving).
* :func:`event_context` — make an event Faust's *current* event: its RocksDB store
  and changelog take the partition from it, so batch processing (``take_events``) and
  background tasks must set it per event before writing a table.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import faust
from aiohttp import web
from faust.streams import _current_event
from yarl import URL

from streams.app import app, settings
from streams.publish import partition_for
from streams.web import error_response

__all__ = ["ROUTED_HEADER", "event_context", "forward", "not_ready", "owner_of"]

#: Marks a request forwarded by another worker: answer it here, never forward again.
ROUTED_HEADER = "X-Imagestream-Routed"
_HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
#: Response headers worth passing back from the owner.
_PASSED_BACK = ("Content-Type", "Retry-After", "Server-Timing", "X-Dimension-Source", "Cache-Control", "ETag")


@contextlib.contextmanager
def event_context(event: faust.EventT | None) -> Iterator[None]:
    """Make ``event`` Faust's current event (table writes go to its partition);
    ``None``: no event, so table reads search every local partition."""
    token = _current_event.set(weakref.ref(event) if event is not None else None)
    try:
        yield
    finally:
        _current_event.reset(token)


def not_ready() -> web.Response:
    """503 with a retry hint, while the worker joins the group or recovers tables."""
    response = error_response(503, "not_ready", "worker is joining the group or recovering tables; retry shortly")
    response.headers["Retry-After"] = "1"
    return response


def _ident(url: URL) -> tuple[str, int]:
    return (url.host or "", int(url.port or 80))


def owner_of(table: faust.TableT, key: str) -> URL | None:
    """The web URL of the worker owning ``key`` in ``table``; ``None`` means this one.

    Raises :class:`KeyError` while no owner is known (assignment in progress).
    """
    partition = partition_for(key, settings.topic_partitions)
    topic = table.changelog_topic.get_topic_name()
    for host, topics in app.router.table_metadata(table.name).items():
        if partition in topics.get(topic, ()):
            dest = URL(host)
            return None if _ident(dest) == _ident(URL(str(app.conf.canonical_url))) else dest
    raise KeyError(f"no owner known for partition {partition} of {topic}")


async def forward(request: web.Request, dest: URL, *, body: bytes | None = None) -> web.Response:
    """The owner's answer to the same request (method, path, query, headers)."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    headers[ROUTED_HEADER] = "1"
    target = dest.with_path(request.path).with_query(request.query)
    async with app.http_client.request(request.method, target, headers=headers, data=body) as response:
        out = web.Response(body=await response.read(), status=response.status)
        for name in _PASSED_BACK:
            if name in response.headers:
                out.headers[name] = response.headers[name]
        return out
