"""Batch validation and the changelog-driven memory of failures (pure parts)."""

from __future__ import annotations

import orjson
import pytest

from streams.dimensions.changes import apply_change
from streams.dimensions.models import ErrorInfo, UrlEntry
from streams.dimensions.service import RememberedFailures, batch_key, is_batch, parse_batch
from streams.errors import InvalidRequest


def test_a_batch_parses_in_order_with_the_batch_session_scene_and_refresh() -> None:
    batch = parse_batch({"session_id": "s1", "scene": 7, "refresh": True, "request_id": "q",
                         "items": [{"resource": "a", "url": "https://e.com/a.png"},
                                   {"resource": 2, "data": "iVBORw0KGgo=", "refresh": False},
                                   {"resource": "c", "url": "https://e.com/c.png", "refresh": None}]},
                        max_items=10, now=123.0)
    assert [i.resource for i in batch.items] == ["a", "2", "c"]
    assert all(i.session_id == "s1" and i.scene == "7" and i.requested_at == 123.0 for i in batch.items)
    assert [i.refresh for i in batch.items] == [True, False, True]
    assert batch.request_id == "q" and is_batch({"items": []}) and not is_batch({"url": "x"})
    assert batch_key("a|b", "1") == "a\\|b|1"


@pytest.mark.parametrize(
    ("doc", "code", "where"),
    [
        ({"session_id": "s", "scene": 1, "items": [{"resource": "r", "url": "x"}] * 4}, "too_many_items", ""),
        ({"session_id": "s", "scene": 1, "items": "nope"}, "invalid_parameter", ""),
        ({"session_id": "s", "scene": 1, "items": []}, "missing_parameter", ""),
        ({"scene": 1, "items": [{"resource": "r", "url": "https://e.com/a"}]}, "missing_parameter", ""),
        ({"session_id": "s", "scene": 1, "items": [{"resource": "r", "url": "https://e.com/a"}, 5]},
         "invalid_parameter", "items[1]:"),
        ({"session_id": "s", "scene": 1, "items": [{"resource": "r"}]}, "missing_parameter", "items[0]:"),
        ({"session_id": "s", "scene": 1, "items": [{"resource": "r", "url": "file:///etc/passwd"}]},
         "invalid_url", "items[0]:"),
        ({"session_id": "s", "scene": 1, "items": [{"resource": "r", "scene": 2, "url": "https://e.com/a"}]},
         "invalid_parameter", "items[0]:"),
        ([1, 2], "invalid_request", ""),
    ],
)
def test_bad_batches_name_the_problem(doc: object, code: str, where: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_batch(doc, max_items=3)
    assert info.value.code == code and info.value.message.startswith(where)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(url: str, **extra: object) -> UrlEntry:
    return UrlEntry(url=url, width=10, height=20, raw_width=10, raw_height=20, orientation=1, format="png",
                    fetched_at=extra.pop("fetched_at", 1000.0), **extra)  # type: ignore[arg-type]


def test_a_size_in_the_table_forgets_the_failure_and_a_late_older_failure_stays_forgotten() -> None:
    clock = Clock()
    memory = RememberedFailures(clock=clock)
    err = ErrorInfo(code="http_status", message="HTTP 404")
    memory.remember("u", err, 1300.0, at=999.0)
    assert memory.get("u") == err and memory.watches("u")
    memory.apply_entry("u", entry("u", fetched_at=1001.0))
    assert memory.get("u") is None and not memory.watches("u")
    memory.remember("u", err, 1300.0, at=1000.5)  # the old failure's update, arriving late
    assert memory.get("u") is None
    memory.remember("u", err, 1400.0, at=1002.0)  # a newer failure counts
    assert memory.get("u") == err


def test_a_failure_in_the_table_replaces_the_remembered_one_and_a_tombstone_forgets() -> None:
    memory = RememberedFailures(clock=Clock())
    memory.remember("u", ErrorInfo(code="timeout", message="t"), 1010.0)
    other = ErrorInfo(code="http_status", message="HTTP 410")
    memory.apply_entry("u", UrlEntry(url="u", width=0, height=0, raw_width=0, raw_height=0, orientation=1,
                                     format=None, fetched_at=1005.0, error=other, retry_at=1300.0))
    assert memory.get("u") == other
    memory.apply_entry("u", None)
    assert memory.get("u") is None


def test_apply_change_decodes_only_records_of_remembered_urls() -> None:
    memory = RememberedFailures(clock=Clock())
    memory.remember("https://e.com/a", ErrorInfo(code="timeout", message="t"), 2000.0)
    good = orjson.dumps(entry("https://e.com/a", fetched_at=1001.0).asdict())
    assert apply_change(memory, orjson.dumps("https://e.com/other"), b"not even json") is None
    assert apply_change(memory, b"\xff", good) is None and apply_change(memory, None, good) is None
    assert apply_change(memory, orjson.dumps("https://e.com/a"), b"{broken") is None
    assert memory.get("https://e.com/a") is not None  # an unreadable record changes nothing
    assert apply_change(memory, orjson.dumps("https://e.com/a"), good) == "forgot"
    assert memory.get("https://e.com/a") is None
