"""Retry policy for upstream calls, as pure functions (DESIGN.md §6 step 2).

:func:`decide` looks at one failure and says whether to try again and after how
long.  It reads the ``retriable`` flag of the :mod:`streams.errors` classes rather
than listing classes, with these rules on top, in order:

1. ``quota_exhausted`` is never retried (the quota will not come back in seconds).
2. Errors the flag calls non-retriable are not retried; neither is any upstream error
   carrying a 4xx ``http_status`` other than 408 and 429, whatever its class says
   (a 400 input error repeats forever and costs a slot each time).
3. Foreign exceptions: ``TimeoutError`` (incl. ``asyncio.TimeoutError``) and
   ``ConnectionError`` are transient; anything else is a bug and is not retried.
4. After ``max_attempts`` attempts in total, stop.
5. A ``retry_after`` hint on the error (seconds, or an HTTP ``Retry-After`` string)
   is honoured: wait that long plus a little jitter.  A hint longer than
   ``max_retry_after`` gives up instead of holding an upstream slot for minutes.
6. A burst refusal ("Request rate increased too quickly", ``burst=True``) waits
   ``burst_factor`` times longer, with *equal* jitter (never less than half the
   ceiling), so the retry does not land in the same burst.
7. Otherwise exponential backoff with *full* jitter:
   ``uniform(0, min(backoff_max, backoff_base * 2 ** (attempt - 1)))``.

``attempt`` counts the attempts made so far, the failed one included (1 after the
first call failed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from config.settings import Settings
from streams.errors import ImagestreamError, UpstreamQuotaExhausted, UpstreamRateLimited
from streams.httputil import parse_retry_after

__all__ = [
    "RetryDecision",
    "RetryPolicy",
    "backoff_ceiling",
    "decide",
]

# Reasons a decision gives (stable strings for logs and stats).
REASON_TRANSIENT = "transient"
REASON_RATE_LIMITED = "rate_limited"
REASON_BURST = "burst"
REASON_RETRY_AFTER = "retry_after"
REASON_QUOTA = "quota_exhausted"
REASON_CLIENT_ERROR = "client_error"
REASON_NOT_RETRIABLE = "not_retriable"
REASON_EXHAUSTED = "attempts_exhausted"
REASON_RETRY_AFTER_TOO_LONG = "retry_after_too_long"

#: 4xx statuses that are about timing, not about the request.
_RETRIABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard to retry: attempts, backoff base and cap, burst and hint limits."""

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 20.0
    #: Multiplier of the backoff ceiling after a burst refusal.
    burst_factor: float = 4.0
    #: Longest ``Retry-After`` we wait for; longer hints fail the attempt instead.
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.burst_factor < 1:
            raise ValueError("backoff_base/backoff_max must be >= 0, burst_factor >= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy the settings ask for."""
        return cls(
            max_attempts=settings.upstream_max_attempts,
            backoff_base=settings.upstream_backoff_base,
            backoff_max=settings.upstream_backoff_max,
        )


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Try again (after ``delay`` seconds) or not, and why."""

    retry: bool
    delay: float
    reason: str


def backoff_ceiling(attempt: int, policy: RetryPolicy, *, factor: float = 1.0) -> float:
    """``min(backoff_max, backoff_base * factor * 2 ** (attempt - 1))``."""
    exponent = min(attempt - 1, 62)  # 2**62 is plenty; avoids float overflow
    return min(policy.backoff_max, policy.backoff_base * factor * 2.0**exponent)


def _refusal(error: BaseException) -> str | None:
    """Why ``error`` must not be retried, or ``None`` if it may be."""
    if isinstance(error, UpstreamQuotaExhausted) or getattr(error, "code", None) == REASON_QUOTA:
        return REASON_QUOTA
    http_status = getattr(error, "http_status", None)
    if isinstance(http_status, int) and 400 <= http_status < 500 and http_status not in _RETRIABLE_4XX:
        return REASON_CLIENT_ERROR
    if isinstance(error, ImagestreamError):
        if error.retriable:
            return None
        return REASON_CLIENT_ERROR if 400 <= error.status < 500 else REASON_NOT_RETRIABLE
    if isinstance(error, (TimeoutError, ConnectionError)):
        return None
    return REASON_NOT_RETRIABLE


def decide(
    error: BaseException, attempt: int, *, policy: RetryPolicy, rng: random.Random
) -> RetryDecision:
    """Whether to retry after ``attempt`` attempts ended in ``error``, and when.

    Pure apart from ``rng`` (pass a seeded ``random.Random`` in tests).
    """
    if attempt < 1:
        raise ValueError("attempt counts attempts made, starting at 1")
    refusal = _refusal(error)
    if refusal is not None:
        return RetryDecision(False, 0.0, refusal)
    if attempt >= policy.max_attempts:
        return RetryDecision(False, 0.0, REASON_EXHAUSTED)
    hint = parse_retry_after(getattr(error, "retry_after", None))
    if hint is not None:
        if hint > policy.max_retry_after:
            return RetryDecision(False, 0.0, REASON_RETRY_AFTER_TOO_LONG)
        return RetryDecision(True, hint + rng.uniform(0.0, policy.backoff_base), REASON_RETRY_AFTER)
    if isinstance(error, UpstreamRateLimited) and error.burst:
        ceiling = backoff_ceiling(attempt, policy, factor=policy.burst_factor)
        return RetryDecision(True, rng.uniform(ceiling / 2, ceiling), REASON_BURST)
    reason = REASON_RATE_LIMITED if isinstance(error, UpstreamRateLimited) else REASON_TRANSIENT
    return RetryDecision(True, rng.uniform(0.0, backoff_ceiling(attempt, policy)), reason)
