"""Small pieces of HTTP both pipelines read from the servers they call."""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

__all__ = ["parse_retry_after"]


def parse_retry_after(value: Any, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: a number, digits, or an HTTP date.

    Returns ``None`` for anything unusable; never negative.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - (time.time() if now is None else now)
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
