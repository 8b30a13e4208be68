"""HTTP I/O of the client (internal): one aiohttp session, errors translated once.

Every error answer of the API is ``{"error": {"code", "message"}}``; it becomes an
:class:`~producers.errors.ApiError` carrying the status, code and message.  aiohttp's
connection errors become :class:`~producers.errors.Unreachable`, timeouts
:class:`~producers.errors.Timeout`.  A 503 is retried, honouring ``Retry-After``,
until a deadline the caller gives.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from yarl import URL

from producers.errors import ApiError, ImagestreamClientError, TaskNotFound, Timeout, Unreachable

__all__ = ["HttpApi", "api_error"]

#: Longest wait between two tries of a 503, whatever Retry-After says.
_MAX_RETRY_DELAY = 5.0
_DEFAULT_RETRY_DELAY = 0.5


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: not sent by our API; use the default delay


def api_error(status: int, body: bytes, headers: Any = None, *, task_id: str | None = None) -> ApiError:
    """The :class:`ApiError` for an error answer (pure: used by tests too)."""
    doc: Any = None
    code, message = f"http_{status}", ""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        message = body[:300].decode("utf-8", errors="replace").strip()
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        code = str(doc["error"].get("code") or code)
        message = str(doc["error"].get("message") or "")
    if not message:
        message = f"HTTP {status}"
    if status == 404 and task_id is not None and code in ("task_not_found", "http_404"):
        return TaskNotFound(task_id, message, body=doc)
    return ApiError(message, status=status, code=code, body=doc, retry_after=_retry_after(headers))


class HttpApi:
    """Requests to the imagestream HTTP API at ``base_url``."""

    def __init__(self, base_url: str, *, token: str | None, timeout: float) -> None:
        self.base_url = URL(base_url.rstrip("/") or base_url)
        self._token = token
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout),
                                                  raise_for_status=False)
        return self._session

    def url(self, path: str) -> URL:
        return self.base_url.with_path(self.base_url.path.rstrip("/") + path, encoded=False)

    def _headers(self, url: URL) -> dict[str, str]:
        # The token goes to our API only, never to a third-party result URL.
        if self._token and url.origin() == self.base_url.origin():
            return {"Authorization": f"Bearer {self._token}"}
        return {}

    async def request(
        self,
        method: str,
        url: URL | str,
        *,
        retry_until: float | None = None,
        task_id: str | None = None,
        **kwargs: Any,
    ) -> tuple[int, bytes, Any]:
        """``(status, body, headers)`` of a 2xx answer; raises for anything else.

        A 503 (and a 429) is retried until the monotonic deadline ``retry_until``
        (no retries without one), waiting what ``Retry-After`` says, capped."""
        target = URL(url) if isinstance(url, str) else url
        headers = {**self._headers(target), **kwargs.pop("headers", {})}
        while True:
            try:
                async with self.session.request(method, target, headers=headers, **kwargs) as resp:
                    body = await resp.read()
                    status, resp_headers = resp.status, resp.headers
            except asyncio.TimeoutError:
                raise Timeout(f"{method} {target} did not answer within {self._timeout:g}s") from None
            except (aiohttp.ClientConnectionError, OSError) as exc:
                raise Unreachable(f"cannot reach {target.origin()}: {exc}", service="api") from None
            except aiohttp.ClientError as exc:
                raise ImagestreamClientError(f"{method} {target} failed: {exc}", code="http_error") from None
            if 200 <= status < 300:
                return status, body, resp_headers
            error = api_error(status, body, resp_headers, task_id=task_id)
            if status in (429, 503) and retry_until is not None:
                delay = min(error.retry_after if error.retry_after is not None else _DEFAULT_RETRY_DELAY,
                            _MAX_RETRY_DELAY)
                if time.monotonic() + delay < retry_until:
                    await asyncio.sleep(delay)
                    continue
            raise error

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON body of a 2xx answer to ``method path``."""
        _, body, _ = await self.request(method, self.url(path), **kwargs)
        try:
            return json.loads(body)
        except ValueError:
            raise ImagestreamClientError(f"{method} {path}: the answer is not JSON",
                                         code="invalid_response") from None

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
