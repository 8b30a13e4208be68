"""The DashScope boundary: the one place the ``dashscope`` SDK is called.

:class:`DashScopeEditor` sends 1-3 images + prompt to a Qwen image-edit model through
``dashscope.AioMultiModalConversation.call`` and returns an :class:`EditOutcome`, or
raises a :mod:`streams.errors` class. Everything the SDK or its transport can report is
translated here and nowhere else:

* an error *response* (the SDK returns it, with ``status_code``/``code``/``message``)
  goes through :func:`translate`;
* an *exception* (timeout, connection reset, server disconnected, any
  ``aiohttp.ClientError``, an SDK error) goes through :func:`translate_exception`.

There are no retries here: the retry policy reads ``error.retriable`` (and
``UpstreamRateLimited.burst``). The API key is never logged.

Facts about the SDK (dashscope 2.0.2) this module relies on or works around:

* The base URL is ``dashscope.base_http_api_url``, read at *call* time (its default
  comes from ``DASHSCOPE_HTTP_BASE_URL`` at SDK *import* time); a per-call
  ``base_address`` overrides it. We pass ``base_address`` when a base URL is configured,
  so two editors in one process can point at different hosts.
* A dropped connection *raises* (``aiohttp.ServerDisconnectedError``) after the SDK has
  silently resent the whole request once (``send_with_retry_async`` retries any
  ``ClientConnectionError`` raised before response headers). A timeout raises
  ``TimeoutError``. HTTP errors never raise; they come back as a response.
* ``AioMultiModalConversation.call`` runs every ``image`` *and* ``text`` item through
  ``check_and_upload_local``: a prompt that happens to name an existing local file (or
  starts with ``file://`` / ``oss://``) would be uploaded to OSS with *blocking*
  ``requests`` calls, or raise. We send data URIs and plain prompts only, so
  :class:`_NoUploadConversation` turns that preprocessing off.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp

# The SDK reads DASHSCOPE_HTTP_BASE_URL once, at import.  An empty value (what
# docker-compose passes for an unset ``${DASHSCOPE_HTTP_BASE_URL:-}``) means "the
# SDK's own default", not the empty URL.
if os.environ.get("DASHSCOPE_HTTP_BASE_URL") == "":
    del os.environ["DASHSCOPE_HTTP_BASE_URL"]

import dashscope  # noqa: E402 - after the environment fix above
from dashscope.common.error import (
    AuthenticationError,
    DashScopeException,
    ServiceUnavailableError,
    TimeoutException,
)

from streams.errors import (
    UpstreamAccountError,
    UpstreamError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)

__all__ = [
    "PASSED_PARAMS",
    "region_base_url",
    "DashScopeEditor",
    "EditOutcome",
    "translate",
    "translate_exception",
]

log = logging.getLogger(__name__)

#: Params handed to the model. An allow-list on purpose: the SDK treats some keyword
#: arguments as transport settings (``base_address``, ``headers``, ``session``,
#: ``workspace``, ``stream``...), so a user-given param must never reach it unfiltered.
PASSED_PARAMS = frozenset({"negative_prompt", "seed", "watermark", "prompt_extend", "size", "n"})

_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


@dataclass(frozen=True)
class EditOutcome:
    """A successful edit: where the result is (valid ~24 h upstream) and what it cost."""

    result_url: str
    request_id: str
    width: int | None
    height: int | None
    usage: dict[str, Any]
    #: Every result URL when ``n`` > 1 (``result_urls[0] == result_url``).
    result_urls: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- translation

#: Upstream codes that say the account cannot pay (Model Studio's error-code page:
#: 400 Arrearage "Access denied, please make sure your account is in good standing").
ARREARS_CODES = frozenset({"Arrearage", "PrepaidBillOverdue", "PostpaidBillOverdue"})
#: Upstream codes that say the account has not bought (activated) the model.
NOT_PURCHASED_CODES = frozenset({"AccessDenied.Unpurchased", "Model.AccessDenied", "CommodityNotPurchased"})
#: The rate-limit page: "Allocated quota exceeded" is a per-minute limit that
#: "typically recovers automatically within one minute".
ALLOCATED_QUOTA_RETRY_AFTER = 60.0



def translate(
    status_code: int | None, code: str | None, message: str | None, request_id: str | None
) -> UpstreamError:
    """The :mod:`streams.errors` class for an upstream error answer.

    * Arrearage / *BillOverdue → :class:`UpstreamAccountError` ``account_in_arrears``
    * AccessDenied.Unpurchased / Model.AccessDenied / CommodityNotPurchased →
      :class:`UpstreamAccountError` ``model_not_purchased``
    * 429 "Free allocated quota exceeded" → :class:`UpstreamQuotaExhausted` (the free
      quota is used up: stop)
    * 429 "Allocated quota exceeded" → :class:`UpstreamRateLimited` with
      ``retry_after`` = the documented minute
    * 429 "Request rate increased too quickly" → :class:`UpstreamRateLimited` ``burst=True``
    * other 429 → :class:`UpstreamRateLimited`
    * 401 / 403 → :class:`UpstreamRejected` with the upstream code (``InvalidApiKey``
      when none is given)
    * other 4xx → :class:`UpstreamRejected` with the upstream code (``DataInspectionFailed``,
      ``InvalidParameter``...)
    * 5xx, or no usable status → :class:`UpstreamUnavailable`
    """
    text = (message or "").strip()
    folded = text.casefold()
    upstream_code = (code or "").strip() or None
    context = {"http_status": status_code, "request_id": request_id or None}
    shown = f"{upstream_code}: {text}" if upstream_code and text else (text or upstream_code or "")

    if upstream_code in ARREARS_CODES:
        return UpstreamAccountError(shown, code="account_in_arrears", **context)
    if upstream_code in NOT_PURCHASED_CODES:
        return UpstreamAccountError(shown, code="model_not_purchased", **context)
    if status_code == HTTPStatus.TOO_MANY_REQUESTS:
        shown = shown or "rate limited"
        if "free allocated quota exceeded" in folded or "free tier" in folded:
            return UpstreamQuotaExhausted(shown, **context)
        if "allocated quota exceeded" in folded:
            return UpstreamRateLimited(shown, retry_after=ALLOCATED_QUOTA_RETRY_AFTER, **context)
        if "increased too quickly" in folded:
            return UpstreamRateLimited(shown, burst=True, **context)
        return UpstreamRateLimited(shown, **context)
    if status_code in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
        fallback = "InvalidApiKey" if status_code == HTTPStatus.UNAUTHORIZED else "AccessDenied"
        return UpstreamRejected(
            shown or "upstream refused the API key", code=upstream_code or fallback, **context
        )
    if status_code == HTTPStatus.REQUEST_TIMEOUT:
        # About timing, not the request: worth another try.
        return UpstreamUnavailable(shown or "upstream timed out (HTTP 408)", code="timeout", **context)
    if status_code is not None and 400 <= status_code < 500:
        return UpstreamRejected(
            shown or f"upstream rejected the request (HTTP {status_code})",
            code=upstream_code or f"http_{status_code}",
            **context,
        )
    return UpstreamUnavailable(
        shown or f"upstream failed (HTTP {status_code})", **context
    )


class UpstreamConnectionLost(Exception):
    """The connection to the upstream broke before its answer arrived.

    Deliberately not an :class:`OSError`: aiohttp wraps those into
    ``ClientOSError``, a ``ClientConnectionError`` the SDK would resend again."""


def translate_exception(exc: BaseException) -> UpstreamError:
    """The :mod:`streams.errors` class for an exception raised by the SDK or transport."""
    if isinstance(exc, UpstreamError):
        return exc
    # Before ClientError: aiohttp's ServerTimeoutError is both.
    if isinstance(exc, TimeoutError | TimeoutException):
        return UpstreamUnavailable("upstream call timed out", code="timeout")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ContentTypeError):
        # A response we could not read as the SDK expects (e.g. a proxy's HTML page).
        return UpstreamUnavailable(
            f"unreadable upstream response: {type(exc).__name__}",
            code="bad_response",
            http_status=getattr(exc, "status", None),
        )
    if isinstance(exc, aiohttp.ClientError | ConnectionError | UpstreamConnectionLost):
        return UpstreamUnavailable(
            f"connection to upstream failed: {type(exc).__name__}: {exc}",
            code="connection_error",
        )
    if isinstance(exc, AuthenticationError):
        # The SDK found no API key anywhere (argument, env, key file).
        return UpstreamRejected("no DashScope API key configured", code="InvalidApiKey")
    if isinstance(exc, OSError):
        return UpstreamUnavailable(
            f"connection to upstream failed: {type(exc).__name__}", code="connection_error"
        )
    if isinstance(exc, ServiceUnavailableError):
        return UpstreamUnavailable(f"upstream unavailable: {exc}", code="connection_error")
    if isinstance(exc, DashScopeException):
        return UpstreamRejected(f"{type(exc).__name__}: {exc}", code="sdk_error")
    return UpstreamUnavailable(
        f"unexpected upstream failure: {type(exc).__name__}: {exc}", code="bad_response"
    )


# --------------------------------------------------------------------------- region


def region_base_url(region: str, *, catalogue_url: str, workspace_id: str | None) -> str:
    """The endpoint of a Model Studio region, through the SDK's own rules where it has them.

    dashscope 2.0.2 (``dashscope.common.env``): ``cn-beijing`` is
    ``https://dashscope.aliyuncs.com/api/v1``; a region in ``MAAS_REGIONS`` with a
    workspace id (``DASHSCOPE_WORKSPACE_ID``) is ``https://{workspace}.{region}
    .maas.aliyuncs.com/api/v1``.  Without a workspace id the API reference's endpoint
    for the region (``catalogue_url``, e.g. ``dashscope-intl`` for Singapore) is used.
    """
    from dashscope.common.env import MAAS_REGIONS, validate_workspace_id

    if workspace_id and region in MAAS_REGIONS:
        validate_workspace_id(workspace_id)
        return f"https://{workspace_id}.{MAAS_REGIONS[region]}.maas.aliyuncs.com/api/v1"
    return catalogue_url


# --------------------------------------------------------------------------- client


class _NoUploadConversation(dashscope.AioMultiModalConversation):
    """The SDK's call without its local-file upload step (see the module docstring)."""

    @classmethod
    def _preprocess_messages(  # type: ignore[override]
        cls, model: str, messages: list[dict[str, Any]], api_key: str | None
    ) -> bool:
        return False


async def no_sdk_resend(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp client middleware: a broken connection surfaces as
    :class:`UpstreamConnectionLost`, not :class:`aiohttp.ClientConnectionError`.

    The SDK (``send_with_retry_async``) sends the whole request again once on any
    ``ClientConnectionError``; that second request passes our rate limiter, retry
    budget and call counts unseen, and a request that reached the service before the
    drop may be billed twice.  Raised as :class:`UpstreamConnectionLost` the failure
    reaches our retry policy instead, which decides (with backoff, within the limits).
    """
    try:
        return await handler(request)
    except aiohttp.ClientConnectionError as exc:
        raise UpstreamConnectionLost(f"{type(exc).__name__}: {exc}") from exc


def upstream_session(*, max_connections: int = 100) -> aiohttp.ClientSession:
    """The aiohttp session DashScope calls go through (see :func:`no_sdk_resend`)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections),
        cookie_jar=aiohttp.DummyCookieJar(),
        middlewares=(no_sdk_resend,),
    )


def _data_uri(image: bytes, mime: str) -> str:
    if not _MIME.fullmatch(mime):
        raise ValueError(f"not a MIME type: {mime!r}")
    return f"data:{mime.lower()};base64,{base64.b64encode(image).decode('ascii')}"


class DashScopeEditor:
    """The Qwen image-edit models through the dashscope SDK, 1-3 images per call.

    ``base_url`` (e.g. ``http://127.0.0.1:8089/api/v1`` for the emulator) is passed per
    call; without it the SDK's own ``dashscope.base_http_api_url`` applies. ``timeout``
    bounds a whole call, including the SDK's own resend after a dropped connection.

    Use as ``async with DashScopeEditor(...) as editor`` or call :meth:`aclose`: the
    editor owns an aiohttp session (created on first use, inside the running loop)
    unless one is given.
    """

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None,
        base_url: str | None = None,
        timeout: float = 120.0,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 100,
    ) -> None:
        if not model:
            raise ValueError("model is required")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.model = model
        self._api_key = api_key
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections

    def __repr__(self) -> str:
        where = self.base_url or "sdk default"
        return f"DashScopeEditor(model={self.model!r}, base_url={where!r}, timeout={self.timeout})"

    async def __aenter__(self) -> DashScopeEditor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session this editor created (not one it was given)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = upstream_session(max_connections=self._max_connections)
            self._owns_session = True
        return self._session

    async def edit(
        self,
        *,
        prompt: str,
        params: Mapping[str, Any],
        image: bytes | None = None,
        mime: str | None = None,
        images: Sequence[tuple[bytes, str]] = (),
        model: str | None = None,
    ) -> EditOutcome:
        """Edit one image, or 1-3 (``images``: ``(bytes, mime)`` in order; the output
        follows the last).  ``model`` overrides the editor's default for this call.
        Raises :class:`~streams.errors.UpstreamError` subclasses only (and
        ``ValueError`` for a malformed ``mime``)."""
        inputs = list(images) if images else [(image, mime)]
        content: list[dict[str, str]] = []
        for data, kind in inputs:
            if data is None or kind is None:
                raise ValueError("an image needs its bytes and MIME type")
            content.append({"image": _data_uri(data, kind)})
        content.append({"text": prompt})
        kwargs: dict[str, Any] = {
            key: value
            for key, value in params.items()
            if key in PASSED_PARAMS and value is not None
        }
        ignored = sorted(set(params) - PASSED_PARAMS - {"prompt"})
        if ignored:
            log.debug("params not sent upstream: %s", ignored)
        if self.base_url:
            kwargs["base_address"] = self.base_url
        try:
            async with asyncio.timeout(self.timeout):
                response = await _NoUploadConversation.call(
                    model=model or self.model,
                    messages=[{"role": "user", "content": content}],
                    api_key=self._api_key,
                    request_timeout=self.timeout,
                    session=self._get_session(),
                    **kwargs,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the SDK and aiohttp raise many kinds; translate all
            error = translate_exception(exc)
            log.debug("upstream call failed: %s (%s)", error.code, type(exc).__name__)
            raise error from exc
        return _outcome(response)


def _outcome(response: Any) -> EditOutcome:
    """An :class:`EditOutcome` from an SDK response, or the translated error."""
    status = getattr(response, "status_code", None)
    request_id = getattr(response, "request_id", None) or ""
    if status != HTTPStatus.OK:
        raise translate(
            status, getattr(response, "code", None), getattr(response, "message", None), request_id
        )
    try:
        choices = response.output["choices"]
        items = choices[0]["message"]["content"]
        urls = tuple(
            item["image"] for item in items if isinstance(item, Mapping) and item.get("image")
        )
    except (AttributeError, KeyError, IndexError, TypeError):
        urls = ()
    if not urls:
        raise UpstreamUnavailable(
            "upstream answered 200 without a result image",
            code="bad_response",
            http_status=status,
            request_id=request_id or None,
        )
    usage = dict(response.usage or {})
    return EditOutcome(
        result_url=urls[0],
        request_id=request_id,
        width=_int_or_none(usage.get("width")),
        height=_int_or_none(usage.get("height")),
        usage=usage,
        result_urls=urls,
    )


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
