"""Shared web plumbing: JSON errors, bearer-token access and ``/healthz``.

Every error leaves the API as ``{"error": {"code", "message"}}`` with a 4xx/5xx
status, whatever raised it: an :class:`~streams.errors.ImagestreamError`, aiohttp's
own HTTP errors (413 for an oversized body, 405, 404) or an unexpected bug (500,
logged with its traceback, never shown to the client).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiohttp import web

from streams.app import app, settings
from streams.errors import ImagestreamError
from streams.readiness import readiness

__all__ = ["authorized", "error_response", "readiness"]

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The one shape of every error the HTTP API returns."""
    body: dict[str, Any] = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def authorized(request: web.Request) -> bool:
    """True when no ``IMAGESTREAM_API_TOKEN`` is set, or the request carries it.

    Every ``/api/`` route needs it.  The HTML pages (``/tasks/…``, ``/stats``) are
    shells anyone may load; without the token they carry no data, and their scripts
    read the API with the token from the URL fragment (never sent to a server, so
    never in a log)."""
    token = settings.api_token
    if not token:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), token.encode())


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer-token check, then JSON errors for whatever the handler raised."""
    if request.path.startswith("/api/") and not authorized(request):
        return error_response(401, "unauthorized", "missing or wrong bearer token")
    try:
        return await handler(request)
    except ImagestreamError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(413, "request_too_large", f"request body over {exc.max_size} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the worker log")


app.web.web_app.middlewares.append(api_middleware)


@app.page("/healthz")
async def healthz(self: faust.web.View, request: faust.web.Request) -> faust.web.Response:
    """200 when ready (:mod:`streams.readiness`); 503 before, naming what it waits for."""
    state = readiness.describe()
    return self.json(state, status=200 if readiness.ready else 503)
