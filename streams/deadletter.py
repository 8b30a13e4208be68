"""Dead letters: a bad event is parked on ``imagestream-dead-letters`` with a reason,
and its partition moves on."""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any

from streams.stats import metrics
from streams.topics import dead_letter_topic

__all__ = ["dead_letter"]

log = logging.getLogger(__name__)

#: Raw payloads are kept up to this size in the dead letter (the rest is cut).
MAX_KEPT_BYTES = 64 * 1024


async def dead_letter(*, source_topic: str, key: Any, raw: bytes | None, code: str, reason: str) -> None:
    """Publish ``{source_topic, key, code, reason, value_b64, value_size, at}``."""
    raw = raw or b""
    metrics.inc("dead_letters_total", topic=source_topic, code=code)
    log.warning("dead letter from %s: %s (%s)", source_topic, code, reason[:200])
    letter = {
        "source_topic": source_topic,
        "key": str(key) if key is not None else None,
        "code": code,
        "reason": reason,
        "value_b64": base64.b64encode(raw[:MAX_KEPT_BYTES]).decode(),
        "value_size": len(raw),
        "truncated": len(raw) > MAX_KEPT_BYTES,
        "at": time.time(),
    }
    try:
        await dead_letter_topic.send(key=str(key) if key is not None else None, value=json.dumps(letter).encode())
    except Exception:  # noqa: BLE001 - losing a dead letter must not stop the partition
        log.exception("could not publish a dead letter from %s", source_topic)
