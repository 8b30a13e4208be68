"""Wire codecs.

Faust's ``json`` codec raises on a malformed key, and a decode error is *thrown into
the agent* (it crashes and restarts).  Keys on our topics are plain strings, so the
``json_key`` codec writes them exactly as ``json`` does (so partitioning matches the
tables' json keys) and reads anything: malformed bytes come back as text instead of
killing the agent.  Values are consumed as raw bytes and parsed by the pipelines'
own validators, which turn bad events into dead letters.
"""

from __future__ import annotations

import json
from typing import Any

from faust.serializers import codecs

__all__ = ["JSON_KEY", "LenientJsonKey"]

JSON_KEY = "json_key"


class LenientJsonKey(codecs.Codec):
    """JSON for keys; undecodable keys are returned as (replacement-decoded) text."""

    def _dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()  # byte-for-byte what faust's json codec writes

    def _loads(self, s: bytes) -> Any:
        try:
            return json.loads(s)
        except ValueError:
            return s.decode("utf-8", errors="replace")


codecs.register(JSON_KEY, LenientJsonKey())
