"""Retry policy: which errors are retried, and how long the waits are."""

from __future__ import annotations

import asyncio
import random
import statistics

import pytest

from config.settings import Settings
from streams.errors import (
    ImageTooLarge,
    InvalidImage,
    InvalidRequest,
    UpstreamError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from streams.image_edit.retry import (
    RetryDecision,
    RetryPolicy,
    backoff_ceiling,
    decide,
)
from streams.httputil import parse_retry_after

POLICY = RetryPolicy(max_attempts=5, backoff_base=0.5, backoff_max=8.0, burst_factor=4.0, max_retry_after=30.0)


def _decide(error: BaseException, attempt: int = 1, seed: int = 1) -> RetryDecision:
    return decide(error, attempt, policy=POLICY, rng=random.Random(seed))


def _with_retry_after(error: UpstreamError, value: object) -> UpstreamError:
    error.retry_after = value  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (UpstreamQuotaExhausted("Allocated quota exceeded", http_status=429), "quota_exhausted"),
        (UpstreamRejected("bad", code="InvalidParameter", http_status=400), "client_error"),
        (UpstreamRejected("moderation", code="DataInspectionFailed", http_status=400), "client_error"),
        (UpstreamError("Arrearage", http_status=400), "client_error"),  # retriable class, 4xx status
        (UpstreamUnavailable("auth", http_status=401), "client_error"),
        (InvalidImage("broken"), "client_error"),
        (ImageTooLarge("big"), "client_error"),
        (InvalidRequest("x", code="missing_prompt"), "client_error"),
        (ValueError("a bug"), "not_retriable"),
        (KeyError("a bug"), "not_retriable"),
    ],
)
def test_never_retried(error: BaseException, reason: str) -> None:
    decision = _decide(error)
    assert decision == RetryDecision(False, 0.0, reason)


def test_quota_not_retried_even_with_retry_after() -> None:
    error = _with_retry_after(UpstreamQuotaExhausted("quota", http_status=429), 1)
    assert _decide(error).retry is False


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRateLimited("Requests rate limit exceeded", http_status=429),
        UpstreamUnavailable("InternalError", http_status=500),
        UpstreamUnavailable("timeout"),
        UpstreamUnavailable("request timeout", http_status=408),
        TimeoutError(),
        asyncio.TimeoutError(),
        ConnectionResetError(),
    ],
)
def test_transient_errors_retried_until_max_attempts(error: BaseException) -> None:
    for attempt in range(1, POLICY.max_attempts):
        assert _decide(error, attempt).retry is True
    last = _decide(error, POLICY.max_attempts)
    assert last == RetryDecision(False, 0.0, "attempts_exhausted")


def test_reasons_name_rate_limit_and_transient() -> None:
    assert _decide(UpstreamRateLimited("rate", http_status=429)).reason == "rate_limited"
    assert _decide(UpstreamUnavailable("500", http_status=500)).reason == "transient"


def test_backoff_ceiling_doubles_and_caps() -> None:
    assert [backoff_ceiling(a, POLICY) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_ceiling(10_000, POLICY) == 8.0  # no overflow


def test_full_jitter_stays_within_ceiling_and_spreads() -> None:
    error = UpstreamUnavailable("500", http_status=500)
    policy = RetryPolicy(max_attempts=100, backoff_base=0.5, backoff_max=8.0)
    rng = random.Random(42)
    for attempt in range(1, 8):
        delays = [decide(error, attempt, policy=policy, rng=rng).delay for _ in range(300)]
        ceiling = backoff_ceiling(attempt, policy)
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9  # full jitter


def test_seeded_rng_is_deterministic() -> None:
    error = UpstreamUnavailable("500")
    assert _decide(error, 3, seed=7) == _decide(error, 3, seed=7)
    assert _decide(error, 3, seed=7).delay != _decide(error, 3, seed=8).delay


def test_burst_waits_longer_and_never_near_zero() -> None:
    burst = UpstreamRateLimited("Request rate increased too quickly", burst=True, http_status=429)
    plain = UpstreamRateLimited("Requests rate limit exceeded", http_status=429)
    rng = random.Random(3)
    burst_delays = [decide(burst, 1, policy=POLICY, rng=rng).delay for _ in range(200)]
    plain_delays = [decide(plain, 1, policy=POLICY, rng=rng).delay for _ in range(200)]
    ceiling = backoff_ceiling(1, POLICY, factor=POLICY.burst_factor)  # 2.0
    assert all(ceiling / 2 <= d <= ceiling for d in burst_delays)
    assert statistics.mean(burst_delays) > 4 * statistics.mean(plain_delays)
    assert _decide(burst).reason == "burst"
    # the burst ceiling is capped too
    assert all(d <= POLICY.backoff_max for d in (_decide(burst, 9, seed=s).delay for s in range(50)))


def test_retry_after_hint_is_honoured() -> None:
    error = _with_retry_after(UpstreamRateLimited("429", http_status=429), 7)
    for seed in range(20):
        decision = _decide(error, 1, seed)
        assert decision.retry and decision.reason == "retry_after"
        assert 7.0 <= decision.delay <= 7.0 + POLICY.backoff_base
    # a hint longer than the full backoff ceiling is still honoured
    assert _decide(_with_retry_after(UpstreamUnavailable("503"), "20"), 1).delay >= 20.0


def test_retry_after_too_long_gives_up() -> None:
    error = _with_retry_after(UpstreamRateLimited("429", http_status=429), 3600)
    assert _decide(error) == RetryDecision(False, 0.0, "retry_after_too_long")


def test_retry_after_does_not_extend_attempts() -> None:
    error = _with_retry_after(UpstreamRateLimited("429", http_status=429), 1)
    assert _decide(error, POLICY.max_attempts).reason == "attempts_exhausted"


def test_parse_retry_after() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after(3) == 3.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(-4) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(float("inf")) is None
    assert parse_retry_after(True) is None
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    assert parse_retry_after(date, now=1445412480.0 - 30) == pytest.approx(30.0)
    assert parse_retry_after(date, now=1445412480.0 + 30) == 0.0


def test_policy_from_settings_and_guards() -> None:
    settings = Settings(upstream_max_attempts=3, upstream_backoff_base=0.1, upstream_backoff_max=2.0)
    policy = RetryPolicy.from_settings(settings)
    assert (policy.max_attempts, policy.backoff_base, policy.backoff_max) == (3, 0.1, 2.0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        decide(UpstreamUnavailable("x"), 0, policy=policy, rng=random.Random(0))
