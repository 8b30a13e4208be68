"""HTTP API of the dimension pipeline (DESIGN.md §7, §8).

``GET /api/v1/dimensions?session_id=&resource=&scene=&url=[&refresh=true]``
    The size at once: ``source`` ``cache`` (the entry this session/resource/scene
    has), or ``placeholder`` (the scene's most common size, else the configured
    one) while one fetch is enqueued.  Without ``url``: a lookup, 404 on a miss.
    Answered by the worker owning the key's partition (forwarded there if needed).

``POST /api/v1/dimensions`` with JSON ``{session_id, resource, scene, data}``
    ``data`` is a base64 image (or data URI): the size is computed in-line
    (``source: computed``) and recorded for later GETs.  A body with ``url`` and
    no ``data`` behaves like the GET.

``POST /api/v1/dimensions/batch`` with ``{session_id, scene, items: [{resource, url | data}], refresh?}``
    One conversation's images in one call: ``{"items": [DimensionResult, ...]}`` in
    the same order, each answered at once like the GET / POST above (one background
    fetch per new URL), at most ``IMAGESTREAM_DIMENSION_BATCH_MAX`` items (more: 400
    ``too_many_items``).  Items owned by other workers are asked of them, one
    forwarded batch per owner (:mod:`streams.dimensions.batching`).

``POST /api/v1/dimensions/prewarm`` with ``{"urls": [...], "refresh": false}``
    Enqueues up to :data:`PREWARM_MAX_URLS` fetches that fill the URL table, so a
    later request for any session is answered from it without fetching.  202.

Errors: ``{"error": {"code", "message"}}``: 400 for missing/malformed parameters,
503 with ``Retry-After`` while the worker joins the group or recovers tables.
"""

from __future__ import annotations

import json
import time
from typing import Any

import faust
from aiohttp import web
from yarl import URL

from streams.app import app, settings
from streams.dimensions import service
from streams.dimensions.agents import answer, answer_many, compute, key_of, recent_enqueues
from streams.dimensions.batching import BATCH_PATH, answer_batch
from streams.dimensions.models import DimensionRequest, FetchJob
from streams.dimensions.tables import dimensions
from streams.errors import InvalidRequest
from streams.stats import metrics
from streams.routing import ROUTED_HEADER, not_ready, owner_of
from streams.topics import dimension_fetch_topic
from streams.web import error_response, readiness

__all__ = ["PREWARM_MAX_URLS"]

#: URLs one prewarm request may name.
PREWARM_MAX_URLS = 1000
#: Largest JSON body of POST /api/v1/dimensions (base64 of a max-size image + slack).
_MAX_BODY = settings.max_image_bytes * 4 // 3 + 64 * 1024
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-type"}


def _query_of(req: DimensionRequest) -> dict[str, str]:
    query = {"session_id": req.session_id, "resource": req.resource, "scene": req.scene}
    if req.url is not None:
        query["url"] = req.url
    if req.refresh:
        query["refresh"] = "true"
    return query


async def _forward(view: faust.web.View, request: web.Request, dest: URL, req: DimensionRequest) -> web.Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    headers[ROUTED_HEADER] = "1"
    target = dest.with_path("/api/v1/dimensions").with_query(_query_of(req))
    async with app.http_client.get(target, headers=headers) as response:
        body = await response.read()
        out = web.Response(body=body, status=response.status, content_type=response.content_type)
        for name in ("X-Dimension-Source", "Retry-After", "Server-Timing"):
            if name in response.headers:
                out.headers[name] = response.headers[name]
        return out


def _result_response(result: Any, started: float) -> web.Response:
    body = result.asdict()
    if body.get("error") is not None and not isinstance(body["error"], dict):
        body["error"] = body["error"].asdict()
    response = web.json_response(body, dumps=lambda obj: json.dumps(obj, separators=(",", ":")))
    response.headers["X-Dimension-Source"] = result.source
    response.headers["Cache-Control"] = "no-store"
    # Time spent in the view (parse, lookup, enqueue), for clients and benchmarks.
    response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
    return response


async def _answer_routed(
    view: faust.web.View, request: web.Request, req: DimensionRequest, started: float
) -> web.Response:
    """Answer on the key's owner: here, or forwarded as a GET."""
    if not readiness.ready:
        return not_ready()
    if ROUTED_HEADER not in request.headers:
        try:
            dest = owner_of(dimensions, key_of(req))
        except KeyError:
            return not_ready()
        if dest is not None:
            metrics.inc("dimension_requests_forwarded_total")
            return await _forward(view, request, dest, req)
    result = await answer(req, via="http")
    if result is None:
        return error_response(404, "dimension_not_found",
                              "no size known for this session_id/resource/scene; pass url to fetch it")
    return _result_response(result, started)


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise InvalidRequest(f"request body over {_MAX_BODY} bytes", code="request_too_large")
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json") from None


@app.page("/api/v1/dimensions")
class DimensionsView(faust.web.View):
    """Sizes of images referenced by URL (GET) or sent inline (POST)."""

    async def get(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        req = service.parse_request(dict(request.query), require_source=False)
        return await _answer_routed(self, request, req, started)

    async def post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await _json_body(request)
        req = service.parse_request(body)
        if req.data is None:
            return await _answer_routed(self, request, req, started)
        # Computed in-line, on any worker: the dimensions table is written by the
        # update it publishes, on the key's owner.
        result = await compute(req)
        metrics.inc("dimension_requests_total", source="computed", via="http")
        return _result_response(result, started)


@app.page(BATCH_PATH)
class DimensionBatchView(faust.web.View):
    """Many images of one session and scene in one call, answered in order."""

    async def post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        if not readiness.ready:
            return not_ready()
        batch = service.parse_batch(await _json_body(request), max_items=settings.dimension_batch_max)
        items = await answer_batch(batch, via="http", local=answer_many, forward=ROUTED_HEADER not in request.headers)
        response = web.json_response({"items": items}, dumps=lambda obj: json.dumps(obj, separators=(",", ":")))
        response.headers["Cache-Control"] = "no-store"
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
        return response


@app.page("/api/v1/dimensions/prewarm")
class PrewarmView(faust.web.View):
    """Fill the URL table ahead of use: one fetch job per URL (deduplicated)."""

    async def post(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("urls"), list):
            raise InvalidRequest('expected {"urls": [...]}', code="invalid_request")
        urls = body["urls"]
        if not urls:
            raise InvalidRequest("urls is empty", code="missing_parameter")
        if len(urls) > PREWARM_MAX_URLS:
            raise InvalidRequest(f"at most {PREWARM_MAX_URLS} urls per prewarm", code="too_many_urls")
        refresh = service.parse_bool(body.get("refresh"))
        checked: list[str] = []
        for index, url in enumerate(urls):
            if not isinstance(url, str):
                raise InvalidRequest(f"urls[{index}] must be a string", code="invalid_url")
            try:
                checked.append(service.check_url(url.strip()))
            except InvalidRequest as exc:
                raise InvalidRequest(f"urls[{index}]: {exc.message}", code=exc.code) from None
        now = time.time()
        enqueued = 0
        for url in dict.fromkeys(checked):
            if not recent_enqueues.claim((url, "", refresh)):
                continue
            await dimension_fetch_topic.send(key=url, value=FetchJob(url=url, requested_at=now, refresh=refresh,
                                                                     waiters=[]))
            enqueued += 1
        metrics.inc("dimension_prewarm_urls_total", enqueued)
        return self.json({"accepted": len(checked), "enqueued": enqueued}, status=202)
