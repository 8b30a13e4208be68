"""Fault injection for the DashScope emulator: pure, seeded, unit-testable.

Nothing here touches the network or the clock on its own: :func:`decide` draws from a
``random.Random`` it is given, :class:`AccountRateLimiter` is fed the time by its caller.

Per request the emulator asks :func:`decide` for a :class:`Decision`:

* ``latency`` seconds to wait before answering (fixed or lognormal; 429s are answered at
  once, as a gateway refuses before any work is done);
* ``fault``: one of :class:`Fault`, chosen by a single uniform draw against the cumulative
  rates ``rate_drop``, ``rate_429``, ``rate_500``, ``rate_inspection`` (in that order);
  a 429 then picks one of the three real throttling messages by ``weights_429``.

The error bodies (HTTP status, ``code``, ``message``) are those DashScope documents in its
status-code table; see :data:`ERRORS`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ACCOUNT_ERRORS",
    "ERRORS",
    "AccountRateLimiter",
    "Decision",
    "ErrorSpec",
    "Fault",
    "FaultConfig",
    "FaultConfigError",
    "Latency",
    "decide",
]


class FaultConfigError(ValueError):
    """A fault setting that cannot be used (bad syntax, rate out of range...)."""


class Fault(enum.Enum):
    """What the emulator does instead of (or after) a normal answer."""

    THROTTLE_RATE = "throttle_rate"  # 429 "Requests rate limit exceeded..."
    THROTTLE_BURST = "throttle_burst"  # 429 "Request rate increased too quickly..."
    QUOTA_EXCEEDED = "quota_exceeded"  # 429 "Allocated quota exceeded..."
    INTERNAL_ERROR = "internal_error"  # 500 InternalError
    INSPECTION_FAILED = "inspection_failed"  # 400 DataInspectionFailed
    REQUEST_TIMEOUT = "request_timeout"  # 408 RequestTimeOut
    UNAVAILABLE = "unavailable"  # 503 ServiceUnavailable
    DROP = "drop"  # close the connection without a response


@dataclass(frozen=True)
class ErrorSpec:
    """An error answer: HTTP status and the ``code``/``message`` of the JSON body."""

    status: int
    code: str
    message: str


#: Error bodies per fault. Codes and messages follow DashScope's published status-code
#: table ("Allocated quota exceeded" is ``Throttling.AllocationQuota`` there, not
#: ``Throttling.RateQuota``). Clients should tell the three 429s apart by message.
ERRORS: Mapping[Fault, ErrorSpec] = {
    Fault.THROTTLE_RATE: ErrorSpec(
        429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
    ),
    Fault.THROTTLE_BURST: ErrorSpec(
        429,
        "Throttling.RateQuota",
        "Request rate increased too quickly. To ensure system stability, "
        "please adjust your client logic to scale requests more smoothly over time.",
    ),
    Fault.QUOTA_EXCEEDED: ErrorSpec(
        429,
        "Throttling.AllocationQuota",
        "Allocated quota exceeded, please increase your quota limit.",
    ),
    Fault.INTERNAL_ERROR: ErrorSpec(
        500,
        "InternalError",
        "An internal error has occured, please try again later or contact service support.",
    ),
    Fault.INSPECTION_FAILED: ErrorSpec(
        400, "DataInspectionFailed", "Input or output data may contain inappropriate content."
    ),
    Fault.REQUEST_TIMEOUT: ErrorSpec(408, "RequestTimeOut", "Request timed out, please try again later."),
    Fault.UNAVAILABLE: ErrorSpec(
        503, "ServiceUnavailable", "The service is temporarily unavailable, please try again later."
    ),
}

#: Account states the emulator can be switched into at run time (``account_error`` in
#: ``POST /_emulator/config``): every call to the affected models gets this answer.
ACCOUNT_ERRORS: Mapping[str, ErrorSpec] = {
    "arrears": ErrorSpec(400, "Arrearage", "Access denied, please make sure your account is in good standing."),
    "bill_overdue": ErrorSpec(400, "PrepaidBillOverdue", "The prepaid bill is overdue."),
    "not_purchased": ErrorSpec(
        403, "AccessDenied.Unpurchased",
        "Access to model denied. Please make sure you are eligible for using the model."),
    "model_access_denied": ErrorSpec(403, "Model.AccessDenied", "Model access denied."),
    "free_quota": ErrorSpec(429, "Throttling.AllocationQuota", "Free allocated quota exceeded."),
}

_THROTTLES = (Fault.THROTTLE_RATE, Fault.THROTTLE_BURST, Fault.QUOTA_EXCEEDED)


@dataclass(frozen=True, kw_only=True)
class Latency:
    """Response latency: none, a fixed delay, or lognormal around a median.

    Text form (CLI, env, runtime config): ``0`` / ``none``, ``fixed:0.5``,
    ``lognormal:MEDIAN,SIGMA`` (seconds; SIGMA is the sd of the underlying normal).
    """

    kind: Literal["none", "fixed", "lognormal"] = "none"
    seconds: float = 0.0  # fixed delay, or the median for lognormal
    sigma: float = 0.0
    #: Upper bound for any draw, so a heavy tail cannot hang a test forever.
    cap: float = 120.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "fixed", "lognormal"):
            raise FaultConfigError(f"unknown latency kind {self.kind!r}")
        if not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise FaultConfigError(f"latency must be >= 0 seconds, got {self.seconds!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise FaultConfigError(f"latency sigma must be >= 0, got {self.sigma!r}")
        if self.kind == "lognormal" and self.seconds <= 0:
            raise FaultConfigError("lognormal latency needs a median > 0")

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``"fixed:0.5"``, ``"lognormal:0.8,0.6"``, ``"0.25"`` (fixed) or ``"none"``."""
        raw = text.strip().lower()
        try:
            if raw in ("", "none", "0", "off"):
                return cls()
            if ":" not in raw:
                return cls(kind="fixed", seconds=float(raw))
            kind, _, args = raw.partition(":")
            if kind == "fixed":
                return cls(kind="fixed", seconds=float(args))
            if kind == "lognormal":
                median, _, sigma = args.partition(",")
                return cls(kind="lognormal", seconds=float(median), sigma=float(sigma or 0.5))
        except ValueError as exc:
            if isinstance(exc, FaultConfigError):
                raise
            raise FaultConfigError(f"bad latency {text!r}: {exc}") from None
        raise FaultConfigError(
            f"bad latency {text!r}: expected none, fixed:SECONDS or lognormal:MEDIAN,SIGMA"
        )

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.seconds:g}"
        if self.kind == "lognormal":
            return f"lognormal:{self.seconds:g},{self.sigma:g}"
        return "none"

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds. Draws from ``rng`` only for lognormal."""
        if self.kind == "fixed":
            return min(self.seconds, self.cap)
        if self.kind == "lognormal":
            return min(rng.lognormvariate(math.log(self.seconds), self.sigma), self.cap)
        return 0.0


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    """Rates are probabilities per request; their sum must not exceed 1."""

    latency: Latency = Latency()
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_inspection: float = 0.0
    rate_drop: float = 0.0
    rate_408: float = 0.0
    rate_503: float = 0.0
    #: Relative weights of the 429 messages: (rate limit, burst, quota exhausted).
    weights_429: tuple[float, float, float] = (0.85, 0.1, 0.05)

    def __post_init__(self) -> None:
        rates = {
            "rate_429": self.rate_429,
            "rate_500": self.rate_500,
            "rate_inspection": self.rate_inspection,
            "rate_drop": self.rate_drop,
            "rate_408": self.rate_408,
            "rate_503": self.rate_503,
        }
        for name, value in rates.items():
            if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
                raise FaultConfigError(f"{name} must be within [0, 1], got {value!r}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise FaultConfigError(f"error rates add up to more than 1: {rates}")
        if len(self.weights_429) != 3 or any(
            not (isinstance(w, int | float) and math.isfinite(w) and w >= 0)
            for w in self.weights_429
        ):
            raise FaultConfigError(
                f"weights_429 must be three weights >= 0, got {self.weights_429!r}"
            )
        if sum(self.weights_429) <= 0:
            raise FaultConfigError("weights_429 must not all be zero")

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A copy with ``changes`` applied (the JSON body of ``POST /_emulator/config``).

        ``latency`` may be a string (``"fixed:0.2"``) or ``{"kind", "seconds", "sigma"}``;
        ``weights_429`` a list of three numbers or ``{"rate", "burst", "quota"}``.
        Unknown keys raise :class:`FaultConfigError`.
        """
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "latency":
                values["latency"] = _latency_from_json(value)
            elif key == "weights_429":
                values["weights_429"] = _weights_from_json(value)
            elif key in ("rate_429", "rate_500", "rate_inspection", "rate_drop", "rate_408", "rate_503"):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise FaultConfigError(f"{key} must be a number, got {value!r}")
                values[key] = float(value)
            else:
                raise FaultConfigError(f"unknown fault setting {key!r}")
        return dataclasses.replace(self, **values)

    def to_json(self) -> dict[str, Any]:
        rate, burst, quota = self.weights_429
        return {
            "latency": str(self.latency),
            "rate_429": self.rate_429,
            "rate_500": self.rate_500,
            "rate_inspection": self.rate_inspection,
            "rate_drop": self.rate_drop,
            "rate_408": self.rate_408,
            "rate_503": self.rate_503,
            "weights_429": {"rate": rate, "burst": burst, "quota": quota},
        }


def _latency_from_json(value: Any) -> Latency:
    if isinstance(value, str):
        return Latency.parse(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Latency(kind="fixed", seconds=float(value)) if value else Latency()
    if isinstance(value, Mapping):
        try:
            return Latency(
                kind=value.get("kind", "fixed"),
                seconds=float(value.get("seconds", value.get("median", 0.0))),
                sigma=float(value.get("sigma", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise FaultConfigError(f"bad latency {value!r}: {exc}") from None
    raise FaultConfigError(f"bad latency {value!r}")


def _weights_from_json(value: Any) -> tuple[float, float, float]:
    try:
        if isinstance(value, Mapping):
            return (
                float(value.get("rate", 0.0)),
                float(value.get("burst", 0.0)),
                float(value.get("quota", 0.0)),
            )
        if isinstance(value, str):
            value = value.split(",")
        rate, burst, quota = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise FaultConfigError(f"bad weights_429 {value!r}: {exc}") from None
    return rate, burst, quota


@dataclass(frozen=True)
class Decision:
    """What to do with one request."""

    fault: Fault | None
    latency: float

    @property
    def error(self) -> ErrorSpec | None:
        return ERRORS.get(self.fault) if self.fault is not None else None


def decide(config: FaultConfig, rng: random.Random) -> Decision:
    """Pick the fate of one request.

    Draw order is fixed (one uniform for the fault, one for the 429 kind when a 429 is
    chosen, then the latency), so a seeded ``rng`` gives a reproducible sequence.
    """
    u = rng.random()
    fault: Fault | None = None
    edge = config.rate_drop
    if u < edge:
        fault = Fault.DROP
    elif u < (edge := edge + config.rate_429):
        fault = rng.choices(_THROTTLES, weights=config.weights_429)[0]
    elif u < (edge := edge + config.rate_500):
        fault = Fault.INTERNAL_ERROR
    elif u < (edge := edge + config.rate_inspection):
        fault = Fault.INSPECTION_FAILED
    elif u < (edge := edge + config.rate_408):
        fault = Fault.REQUEST_TIMEOUT
    elif u < edge + config.rate_503:
        fault = Fault.UNAVAILABLE
    if fault in _THROTTLES:
        return Decision(fault, 0.0)
    return Decision(fault, config.latency.sample(rng))


class AccountRateLimiter:
    """Token bucket emulating DashScope's per-account requests/second limit.

    ``rps`` tokens per second, bucket size ``burst`` (default ``max(1, rps)``); a request
    that finds no token is refused (429). The caller passes the monotonic time.
    """

    def __init__(self, rps: float, *, burst: float | None = None, now: float = 0.0) -> None:
        if not (math.isfinite(rps) and rps > 0):
            raise FaultConfigError(f"account rps must be > 0, got {rps!r}")
        self.rps = float(rps)
        self.burst = float(burst) if burst is not None else max(1.0, self.rps)
        self._tokens = self.burst
        self._stamp = now

    def allow(self, now: float) -> bool:
        """Take a token if there is one at time ``now``."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rps)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
