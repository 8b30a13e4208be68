"""Keys must be byte-identical to Faust's json codec, or table routing goes astray."""

from __future__ import annotations

import pytest
from faust.serializers import codecs

from streams.codecs import JSON_KEY
from streams.publish import key_bytes


@pytest.mark.parametrize("key", ["abc", "task-1", "中文键", "a|b|c", 'quote"d', "emoji 🎉", ""])
def test_keys_match_faust_json(key: str) -> None:
    expected = codecs.dumps("json", key)
    assert codecs.dumps(JSON_KEY, key) == expected
    assert key_bytes(key) == expected


def test_malformed_keys_decode_as_text() -> None:
    assert codecs.loads(JSON_KEY, b'"ok"') == "ok"
    assert codecs.loads(JSON_KEY, b"plain-key") == "plain-key"
    assert codecs.loads(JSON_KEY, b"\xfe\xfd") == "\ufffd\ufffd"
