"""The error tree of imagestream.

Every error the service reports to a user has a stable ``code`` (used in HTTP error
bodies, failed result events and dead letters), an HTTP ``status`` and a
``retriable`` flag that the retry policy reads (as aiokafka's errors do)::

    ImagestreamError
    ├── InputError (400, not retriable)
    │   ├── InvalidImage            invalid_image
    │   ├── ImageTooLarge           image_too_large (413)
    │   ├── UnsupportedFormat       unsupported_format
    │   └── InvalidRequest          invalid_request
    ├── UpstreamError               upstream_error (retriable unless said otherwise)
    │   ├── UpstreamRateLimited     rate_limited (429, retriable)
    │   ├── UpstreamAccountError    the account cannot call the model (not retriable;
    │   │   │                       the worker stops calling that model until a probe
    │   │   │                       succeeds): account_in_arrears, model_not_purchased
    │   │   └── UpstreamQuotaExhausted  quota_exhausted (the free quota is used up)
    │   ├── UpstreamRejected        4xx from DashScope, not retriable (code from upstream)
    │   └── UpstreamUnavailable     5xx / timeout / dropped connection, retriable
    └── FetchError                  dimension fetches, with a ``reason``
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "FetchError",
    "ImageTooLarge",
    "ImagestreamError",
    "InputError",
    "InvalidImage",
    "InvalidRequest",
    "UnsupportedFormat",
    "UpstreamAccountError",
    "UpstreamError",
    "UpstreamQuotaExhausted",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "UpstreamUnavailable",
]


class ImagestreamError(Exception):
    """Root of every error imagestream reports."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        """The ``{"code", "message"}`` body used in HTTP errors and events."""
        return {"code": self.code, "message": self.message}


class InputError(ImagestreamError):
    """The request itself is wrong; retrying it cannot help."""

    code = "invalid_input"
    status = 400


class InvalidRequest(InputError):
    """A malformed or missing field."""

    code = "invalid_request"


class InvalidImage(InputError):
    """Bytes that do not decode as an image, or a truncated one."""

    code = "invalid_image"


class ImageTooLarge(InputError):
    """Too many bytes or too many pixels (decompression bomb)."""

    code = "image_too_large"
    status = 413


class UnsupportedFormat(InputError):
    """An image format we cannot read, or not an image at all."""

    code = "unsupported_format"


class UpstreamError(ImagestreamError):
    """DashScope answered with an error, or did not answer."""

    code = "upstream_error"
    status = 502
    retriable = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.request_id = request_id


class UpstreamRateLimited(UpstreamError):
    """429: too many requests, or a rate that rose too quickly. Back off, retry."""

    code = "rate_limited"
    status = 429
    retriable = True

    def __init__(self, message: str, *, burst: bool = False, retry_after: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        #: True for "Request rate increased too quickly": ramp down, not just wait.
        self.burst = burst
        #: Seconds until a retry can succeed, when the upstream says (or documents) it.
        self.retry_after = retry_after


class UpstreamAccountError(UpstreamError):
    """The account, not the request, is the problem (overdue bill, model not bought,
    free quota used up): every call to that model fails the same way until someone
    acts, so the worker stops calling it (see :mod:`streams.image_edit.blocks`)."""

    code = "account_in_arrears"
    status = 402
    retriable = False


class UpstreamQuotaExhausted(UpstreamAccountError):
    """429 "Free allocated quota exceeded": the model's free quota is used up (and the
    account may not pay for more).  Not the per-minute "Allocated quota exceeded",
    which is a rate limit (:class:`UpstreamRateLimited` with ``retry_after``)."""

    code = "quota_exhausted"
    status = 429


class UpstreamRejected(UpstreamError):
    """A 4xx the upstream gives for this input (InvalidParameter, DataInspectionFailed...)."""

    status = 400
    retriable = False


class UpstreamUnavailable(UpstreamError):
    """5xx, a timeout or a dropped connection: worth another try."""

    code = "upstream_unavailable"
    retriable = True


class FetchError(ImagestreamError):
    """A dimension fetch failed; ``reason`` is the stats bucket.

    Reasons: ``timeout``, ``http_status``, ``too_large``, ``unsupported_format``,
    ``refused_address``, ``connection``, ``truncated``, ``too_many_redirects``,
    ``invalid_url``.
    """

    code = "fetch_failed"
    status = 502

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, code=reason)
        self.reason = reason
