"""One key encoding everywhere: topics, tables, the client library, routing."""

from __future__ import annotations

import json

import pytest
from faust.serializers import codecs

from producers._kafka import json_key
from streams.codecs import JSON_KEY
from streams.dimensions.tables import dimensions, scene_sizes, url_dimensions
from streams.image_edit.tables import edit_cache, task_status
from streams.publish import key_bytes


KEYS = ["abc", "task-1", "中文键", "a|b|c", 'quote"d', "emoji 🎉", ""]


@pytest.mark.parametrize("key", KEYS)
def test_keys_are_ascii_json_strings_everywhere(key: str) -> None:
    expected = json.dumps(key).encode()  # ASCII-escaped: what any producer of ours writes
    assert codecs.dumps(JSON_KEY, key) == expected
    assert key_bytes(key) == expected
    assert json_key(key) == expected  # the client library
    assert codecs.loads(JSON_KEY, expected) == key


def test_tables_store_keys_as_the_topics_carry_them() -> None:
    # Faust's own json codec would follow its JSON backend: orjson writes UTF-8.
    assert codecs.dumps("json", "中文键") != json.dumps("中文键").encode()
    tables = [edit_cache, task_status, dimensions, url_dimensions, scene_sizes]
    assert all(table.key_serializer == JSON_KEY for table in tables)
    for table in tables:
        assert table.changelog_topic.key_serializer == JSON_KEY


def test_malformed_keys_decode_as_text() -> None:
    assert codecs.loads(JSON_KEY, b'"ok"') == "ok"
    assert codecs.loads(JSON_KEY, b"plain-key") == "plain-key"
    assert codecs.loads(JSON_KEY, b"\xfe\xfd") == "\ufffd\ufffd"
