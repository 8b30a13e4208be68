"""The dimension pipeline's pure logic (no broker)."""

from __future__ import annotations

import base64

import pytest

from streams.dimensions.models import DimensionUpdate, ErrorInfo, SceneSizes, UrlEntry, Waiter
from streams.dimensions.service import (
    ANOMALOUS_SIZE,
    PendingFetches,
    RecentSet,
    accept_update,
    anomaly,
    choose_placeholder,
    decode_base64,
    dimension_key,
    entry_from_update,
    parse_bool,
    parse_request,
    placeholder_result,
    record_size,
    result_from_update,
    scene_sizes_key,
    split_key,
    update_from_url_entry,
    url_entry_fresh,
)
from streams.errors import ImageTooLarge, InvalidRequest


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- keys ---------------------------------------------------------------------------
def test_key_is_the_plain_join_for_plain_parts() -> None:
    assert dimension_key("s1", "res", "1") == "s1|res|1"
    assert dimension_key("s1", "res", 1) == "s1|res|1"


def test_keys_of_distinct_triples_never_collide() -> None:
    triples = [("a|b", "c", "1"), ("a", "b|c", "1"), ("a\\", "|b", "1"), ("a\\|", "b", "1"), ("a", "b", "c|1")]
    keys = {dimension_key(*t) for t in triples}
    assert len(keys) == len(triples)


@pytest.mark.parametrize("triple", [("s", "r", "1"), ("a|b", "c\\", "|"), ("", "", ""), ("\\|\\", "x", "y")])
def test_split_key_inverts_dimension_key(triple: tuple[str, str, str]) -> None:
    assert split_key(dimension_key(*triple)) == triple


def test_split_key_refuses_other_shapes() -> None:
    with pytest.raises(ValueError):
        split_key("a|b")


def test_scene_sizes_key_per_partition() -> None:
    assert scene_sizes_key("1", 0) != scene_sizes_key("1", 1)
    assert scene_sizes_key("1|0", 0) != scene_sizes_key("1", 0)


# --- validation ---------------------------------------------------------------------
def test_parse_request_accepts_int_scene_and_query_strings() -> None:
    req = parse_request({"session_id": "s", "resource": "r", "scene": 1, "url": "https://x.test/a.png"}, now=5.0)
    assert req.scene == "1" and req.url == "https://x.test/a.png" and not req.refresh
    assert req.requested_at == 5.0
    req = parse_request({"session_id": "s", "resource": "r", "scene": "2", "url": "http://h/a", "refresh": "true"})
    assert req.refresh is True


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"resource": "r", "scene": "1", "url": "http://h/a"}, "missing_parameter"),
        ({"session_id": "", "resource": "r", "scene": "1", "url": "http://h/a"}, "missing_parameter"),
        ({"session_id": "s", "scene": "1", "url": "http://h/a"}, "missing_parameter"),
        ({"session_id": "s", "resource": "r", "url": "http://h/a"}, "missing_parameter"),
        ({"session_id": "s", "resource": "r", "scene": "1"}, "missing_parameter"),
        ({"session_id": 5, "resource": "r", "scene": "1", "url": "http://h/a"}, "invalid_parameter"),
        ({"session_id": "s", "resource": "r", "scene": True, "url": "http://h/a"}, "invalid_parameter"),
        ({"session_id": "s", "resource": "r", "scene": 1.5, "url": "http://h/a"}, "invalid_parameter"),
        ({"session_id": "s" * 600, "resource": "r", "scene": "1", "url": "http://h/a"}, "invalid_parameter"),
        ({"session_id": "s\n", "resource": "r", "scene": "1\x00", "url": "http://h/a"}, "invalid_parameter"),
        ({"session_id": "s", "resource": "r", "scene": "1", "url": "ftp://h/a"}, "invalid_url"),
        ({"session_id": "s", "resource": "r", "scene": "1", "url": "not a url"}, "invalid_url"),
        ({"session_id": "s", "resource": "r", "scene": "1", "url": "http:///nohost"}, "invalid_url"),
        ({"session_id": "s", "resource": "r", "scene": "1", "url": "http://h:99999/a"}, "invalid_url"),
        ({"session_id": "s", "resource": "r", "scene": "1", "data": 12}, "invalid_parameter"),
        ({"session_id": "s", "resource": "r", "scene": "1", "url": "http://h/a", "refresh": "maybe"},
         "invalid_parameter"),
        (["not", "a", "dict"], "invalid_request"),
    ],
)
def test_parse_request_refuses_with_specific_codes(obj: object, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(obj)
    assert info.value.code == code


def test_lookup_without_source_is_allowed_when_asked() -> None:
    req = parse_request({"session_id": "s", "resource": "r", "scene": "1"}, require_source=False)
    assert req.url is None and req.data is None


def test_parse_bool() -> None:
    assert parse_bool("1") and parse_bool("TRUE") and parse_bool(True)
    assert not parse_bool("0") and not parse_bool(None) and not parse_bool("false")


def test_decode_base64_plain_and_data_uri() -> None:
    raw = b"\x89PNG\r\n\x1a\n" + b"x" * 20
    text = base64.b64encode(raw).decode()
    assert decode_base64(text, max_bytes=100) == raw
    assert decode_base64("data:image/png;base64," + text, max_bytes=100) == raw
    assert decode_base64(text[:10] + "\n" + text[10:], max_bytes=100) == raw


@pytest.mark.parametrize("text", ["@@@", "abc", "data:image/png,abcd", ""])
def test_decode_base64_refuses_garbage(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_base64(text, max_bytes=100)
    assert info.value.code == "invalid_base64"


def test_decode_base64_caps_size() -> None:
    with pytest.raises(ImageTooLarge):
        decode_base64(base64.b64encode(b"x" * 1000).decode(), max_bytes=100)


# --- anomalies ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("w", "h", "flag"),
    [
        (1080, 1920, None),
        (1, 1, None),
        (50, 1, None),
        (51, 1, ANOMALOUS_SIZE),
        (1, 5000, ANOMALOUS_SIZE),
        (0, 100, ANOMALOUS_SIZE),
        (10_000, 10_000, None),
        (10_001, 10_000, ANOMALOUS_SIZE),
    ],
)
def test_anomaly(w: int, h: int, flag: str | None) -> None:
    assert anomaly(w, h) == flag


# --- latest wins ----------------------------------------------------------------------
def _update(url: str = "http://h/a", fetched_at: float = 10.0, requested_at: float = 10.0, w: int = 100,
            h: int = 50, **kw: object) -> DimensionUpdate:
    return DimensionUpdate(session_id="s", resource="r", scene="1", url=url, requested_at=requested_at,
                           source="fetched", fetched_at=fetched_at, width=w, height=h, raw_width=w, raw_height=h,
                           orientation=1, format="png", bytes_read=33, **kw)


def test_latest_fetch_wins_and_a_late_older_fetch_is_ignored() -> None:
    current = entry_from_update(_update(fetched_at=20.0, w=200))
    assert not accept_update(current, _update(fetched_at=10.0, w=100))  # older, finishing late
    assert accept_update(current, _update(fetched_at=30.0, w=300))
    assert accept_update(current, _update(fetched_at=20.0, w=200))  # replay: idempotent
    assert accept_update(None, _update())


def test_another_url_wins_by_request_time() -> None:
    current = entry_from_update(_update(url="http://h/a", fetched_at=20.0, requested_at=20.0))
    # b's size was prewarmed long ago, but the key was asked about b after it saw a
    assert accept_update(current, _update(url="http://h/b", fetched_at=1.0, requested_at=25.0))
    assert not accept_update(current, _update(url="http://h/b", fetched_at=30.0, requested_at=15.0))


def test_failures_and_flagged_sizes_are_never_written() -> None:
    assert not accept_update(None, _update(error=ErrorInfo(code="timeout", message="slow")))
    assert not accept_update(None, _update(flagged=ANOMALOUS_SIZE))
    assert not accept_update(None, _update(w=0))


# --- URL entries ----------------------------------------------------------------------
def _url_entry(fetched_at: float) -> UrlEntry:
    return UrlEntry(url="http://h/a", width=10, height=20, raw_width=20, raw_height=10, orientation=6, format="jpeg",
                    fetched_at=fetched_at, bytes_read=200, etag='"e1"', last_modified=None)


def test_url_entry_freshness() -> None:
    assert url_entry_fresh(_url_entry(100.0), now=150.0, ttl=60.0)
    assert not url_entry_fresh(_url_entry(100.0), now=161.0, ttl=60.0)
    assert not url_entry_fresh(None, now=0.0, ttl=60.0)
    assert url_entry_fresh(_url_entry(0.0), now=1e12, ttl=0)


def test_update_from_url_entry_keeps_orientation_and_raw_size() -> None:
    waiter = Waiter(session_id="s", resource="r", scene="1", requested_at=7.0)
    update = update_from_url_entry(_url_entry(100.0), waiter, source="cache")
    assert (update.width, update.height, update.raw_width, update.raw_height, update.orientation) == (10, 20, 20, 10, 6)
    assert update.requested_at == 7.0 and update.fetched_at == 100.0 and update.source == "cache"


def test_failed_update_result_keeps_placeholder_and_error() -> None:
    update = _update(error=ErrorInfo(code="http_status", message="404"), w=0, h=0)
    result = result_from_update(update, placeholder=(1080, 1920))
    assert (result.width, result.height, result.source) == (1080, 1920, "placeholder")
    assert result.error is not None and result.error.code == "http_status"


def test_placeholder_result_shape() -> None:
    req = parse_request({"session_id": "s", "resource": "r", "scene": 3, "url": "http://h/a"})
    result = placeholder_result(req, (640, 480)).asdict()
    assert result["source"] == "placeholder" and result["width"] == 640 and result["scene"] == "3"


# --- scene statistics -----------------------------------------------------------------
def test_smart_placeholder_is_the_most_common_size_after_enough_samples() -> None:
    stats: SceneSizes | None = None
    assert choose_placeholder([stats], (1080, 1920)) == (1080, 1920)
    for w, h in [(800, 600), (800, 600), (640, 480)]:
        stats = record_size(stats, w, h, now=1.0)
    assert choose_placeholder([stats], (1080, 1920)) == (800, 600)
    assert choose_placeholder([stats], (1080, 1920), min_samples=4) == (1080, 1920)


def test_smart_placeholder_merges_partitions() -> None:
    a = record_size(record_size(None, 1, 2, now=0), 1, 2, now=0)
    b = record_size(record_size(record_size(None, 3, 4, now=0), 3, 4, now=0), 3, 4, now=0)
    c = record_size(None, 1, 2, now=0)
    assert choose_placeholder([a, b, None], (9, 9)) == (3, 4)
    assert choose_placeholder([a, b, c, c], (9, 9)) == (1, 2)


def test_scene_sizes_stay_bounded_and_keep_the_heavy_hitter() -> None:
    stats = None
    for _ in range(50):
        stats = record_size(stats, 1080, 1920, now=0)
    for i in range(1, 200):
        stats = record_size(stats, i, i, now=0)
    assert stats is not None and len(stats.counts) <= 16 and stats.total == 249
    assert choose_placeholder([stats], (1, 1)) == (1080, 1920)


def test_record_size_does_not_mutate_its_input() -> None:
    first = record_size(None, 1, 1, now=0)
    second = record_size(first, 1, 1, now=0)
    assert first.counts == {"1x1": 1} and second.counts == {"1x1": 2}


# --- dedupe -----------------------------------------------------------------------------
def test_recent_set_claims_once_until_expiry_or_release() -> None:
    clock = Clock()
    seen = RecentSet[str](5.0, clock=clock)
    assert seen.claim("u")
    assert not seen.claim("u")
    assert "u" in seen
    clock.now += 4.9
    assert not seen.claim("u")
    clock.now += 0.2
    assert seen.claim("u")
    seen.release("u")
    assert seen.claim("u")


def test_recent_set_is_bounded() -> None:
    clock = Clock()
    seen = RecentSet[int](100.0, max_size=10, clock=clock)
    for i in range(50):
        assert seen.claim(i)
    assert len(seen) <= 10
    assert 49 in seen


def test_pending_fetches_start_once_and_gather_waiters() -> None:
    clock = Clock()
    pending = PendingFetches[str](stale_after=30.0, clock=clock)
    w1 = Waiter(session_id="s1", resource="r", scene="1", requested_at=1.0)
    w2 = Waiter(session_id="s2", resource="r", scene="1", requested_at=2.0)
    first = pending.join("u", [w1], "e1")
    assert first is not None
    assert pending.join("u", [w2, w1], "e2") is None
    assert pending.join("u", [], "e3") is None
    done = pending.finish("u", first)
    assert sorted(done.waiters) == ["s1|r|1", "s2|r|1"] and done.holds == ["e1", "e2", "e3"]
    assert "u" not in pending
    assert pending.join("u", [w1], "e4") is not None  # after the end, the next job fetches again


def test_pending_fetches_replace_a_stale_entry_safely() -> None:
    clock = Clock()
    pending = PendingFetches[str](stale_after=30.0, clock=clock)
    old = pending.join("u", [], "e1")
    clock.now += 31
    new = pending.join("u", [], "e2")
    assert old is not None and new is not None and new is not old
    pending.finish("u", old)  # the old task ending late does not drop the new entry
    assert "u" in pending
    assert pending.finish("u", new).holds == ["e2"]
