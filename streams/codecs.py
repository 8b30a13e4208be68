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

import faust
from faust.serializers import codecs

__all__ = ["JSON_KEY", "LenientJsonKey", "with_json_keys"]

JSON_KEY = "json_key"


class LenientJsonKey(codecs.Codec):
    """JSON for keys; undecodable keys are returned as (replacement-decoded) text."""

    def _dumps(self, obj: Any) -> bytes:
        return json.dumps(obj).encode()  # ASCII-escaped, whatever JSON backend Faust uses

    def _loads(self, s: bytes) -> Any:
        try:
            return json.loads(s)
        except ValueError:
            return s.decode("utf-8", errors="replace")


codecs.register(JSON_KEY, LenientJsonKey())


def with_json_keys(table: faust.TableT) -> faust.TableT:
    """Store and changelog ``table``'s keys exactly as they travel on the topics.

    Faust would pick its ``json`` codec for ``key_type=str``, whose bytes follow its
    JSON backend (orjson writes non-ASCII as UTF-8, the standard library escapes it):
    one key encoding everywhere keeps lookups of data written by any version working.
    """
    table.key_serializer = JSON_KEY  # the store and the changelog sends
    table.changelog_topic.key_serializer = JSON_KEY  # already made by the constructor
    return table
