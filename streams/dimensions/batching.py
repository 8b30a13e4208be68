"""A batch of dimension requests spread over the workers that own its keys.

The items of one conversation share a session and a scene but not a partition: each
``session_id|resource|scene`` key lives on the worker owning its partition of the
``dimensions`` table.  :func:`answer_batch` answers the items this worker owns (and
inline ``data`` items, which any worker measures) with the ``local`` function, asks
each other owner for its items with one forwarded ``POST /api/v1/dimensions/batch``
(concurrently), and puts the answers back in the caller's order.  An owner that
cannot be reached, or no owner known yet, fails only its items: placeholder plus
``error`` ``{code: "not_ready"}``, never the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from yarl import URL

from streams.app import app, settings
from streams.dimensions import service
from streams.dimensions.models import DimensionRequest, DimensionResult, ErrorInfo
from streams.dimensions.tables import dimensions
from streams.publish import partition_for
from streams.routing import ROUTED_HEADER, owner_of
from streams.stats import metrics

__all__ = ["BATCH_PATH", "answer_batch"]

log = logging.getLogger(__name__)

BATCH_PATH = "/api/v1/dimensions/batch"
#: Seconds an owner has to answer its share of a batch (it answers from its table
#: or with placeholders: milliseconds unless it is overloaded or gone).
FORWARD_TIMEOUT = 10.0

def _item(req: DimensionRequest) -> dict[str, Any]:
    item: dict[str, Any] = {"resource": req.resource, "refresh": req.refresh}
    if req.url is not None:
        item["url"] = req.url
    return item


def _unanswered(req: DimensionRequest, why: str) -> dict[str, Any]:
    return service.result_dict(service.placeholder_result(
        req, settings.placeholder, error=ErrorInfo(code="not_ready", message=why)))


async def _ask(dest: URL, batch: service.BatchRequest, items: list[DimensionRequest]) -> list[dict[str, Any]]:
    """The owner's answers to ``items`` (one forwarded batch)."""
    headers = {ROUTED_HEADER: "1"}
    if settings.api_token:
        headers["Authorization"] = f"Bearer {settings.api_token}"
    body = {"session_id": batch.session_id, "scene": batch.scene, "requested_at": items[0].requested_at,
            "items": [_item(req) for req in items]}
    async with app.http_client.post(dest.with_path(BATCH_PATH), json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT)) as response:
        doc = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(doc or {}).get('error')}")
    answers = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(answers, list) or len(answers) != len(items):
        raise RuntimeError("malformed batch answer")
    return answers


async def answer_batch(batch: service.BatchRequest, *, via: str, local: Callable[..., Awaitable[list[DimensionResult]]],
                       forward: bool = True) -> list[dict[str, Any]]:
    """Every item's immediate answer (a DimensionResult as JSON), in order.

    ``local(items, via=via)`` answers items on this worker; ``forward=False`` answers
    every item here (a batch that was forwarded to us)."""
    here: list[int] = []
    away: dict[URL, list[int]] = {}
    unowned: list[int] = []
    owners: dict[int, Any] = {}
    for index, req in enumerate(batch.items):
        if req.data is not None or not forward:
            here.append(index)
            continue
        key = service.dimension_key(req.session_id, req.resource, req.scene)
        partition = partition_for(key, settings.topic_partitions)
        if partition not in owners:  # the router's metadata is rebuilt on every call: once per partition
            try:
                owners[partition] = owner_of(dimensions, key)
            except KeyError:
                owners[partition] = KeyError
        dest = owners[partition]
        if dest is KeyError:
            unowned.append(index)
            continue
        (here if dest is None else away.setdefault(dest, [])).append(index)
    out: list[dict[str, Any] | None] = [None] * len(batch.items)
    asks = {dest: asyncio.ensure_future(_ask(dest, batch, [batch.items[i] for i in idxs]))
            for dest, idxs in away.items()}
    try:
        results = await local([batch.items[i] for i in here], via=via) if here else []
    except BaseException:
        for task in asks.values():
            task.cancel()
        raise
    for index, result in zip(here, results):
        out[index] = service.result_dict(result)
    for dest, idxs in away.items():
        try:
            answers = await asks[dest]
            metrics.inc("dimension_requests_forwarded_total", len(idxs))
        except Exception as exc:  # noqa: BLE001 - the owner's items fail, not the batch
            log.warning("batch items for %s not answered: %s", dest, exc)
            answers = [_unanswered(batch.items[i], "the worker owning this item did not answer; retry")
                       for i in idxs]
        for index, answer in zip(idxs, answers):
            out[index] = answer
    for index in unowned:
        out[index] = _unanswered(batch.items[index], "no worker owns this item yet (group joining); retry")
    metrics.inc("dimension_batches_total", via=via)
    assert all(item is not None for item in out)
    return out  # type: ignore[return-value]
