"""The dimension pipeline's negative cache and revalidation decisions (no broker)."""

from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError
from streams.dimensions.models import DimensionUpdate, ErrorInfo, UrlEntry, Waiter
from streams.dimensions.service import (
    CACHED,
    FAILED,
    FETCH,
    REVALIDATE,
    RememberedFailures,
    failed_update,
    failure_is_permanent,
    failure_ttl,
    flagged_entry,
    plan_fetch,
    remember_failure,
    result_from_update,
    revalidated_entry,
    update_from_url_entry,
    url_entry_failed,
    url_entry_fresh,
)

URL = "http://h/a.png"
TTL = 3600.0
NOT_FOUND = ErrorInfo(code="http_status", message="HTTP 404 from http://h/a.png")
TIMEOUT = ErrorInfo(code="timeout", message="no size within 10s")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sized(fetched_at: float, *, etag: str | None = '"v1"', last_modified: str | None = None) -> UrlEntry:
    return UrlEntry(url=URL, width=10, height=20, raw_width=20, raw_height=10, orientation=6, format="jpeg",
                    fetched_at=fetched_at, bytes_read=180, etag=etag, last_modified=last_modified)


def remember(previous: UrlEntry | None, error: ErrorInfo, status: int | None, *, now: float = 1000.0,
             permanent: float = 300.0, transient: float = 15.0, retry_after: float | None = None) -> UrlEntry | None:
    return remember_failure(previous, URL, error, http_status=status, now=now, permanent_ttl=permanent,
                            transient_ttl=transient, url_ttl=TTL, retry_after=retry_after)


# ------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    ("code", "status", "permanent"),
    [
        ("http_status", 404, True),
        ("http_status", 410, True),
        ("http_status", 403, True),
        ("http_status", 400, True),
        ("http_status", 408, False),
        ("http_status", 429, False),
        ("http_status", 500, False),
        ("http_status", 503, False),
        ("http_status", None, False),
        ("unsupported_format", None, True),
        ("too_large", None, True),
        ("refused_address", None, True),
        ("too_many_redirects", None, True),
        ("invalid_url", None, True),
        ("timeout", None, False),
        ("connection", None, False),
        ("truncated", None, False),
        ("internal_error", None, False),
        ("something_new", None, False),
    ],
)
def test_failures_are_permanent_or_transient(code: str, status: int | None, permanent: bool) -> None:
    assert failure_is_permanent(code, status) is permanent
    expected = 300.0 if permanent else 15.0
    assert failure_ttl(code, status, permanent_ttl=300.0, transient_ttl=15.0) == expected


def test_negative_ttls_mean_not_remembered() -> None:
    assert failure_ttl("timeout", None, permanent_ttl=300.0, transient_ttl=-1.0) == 0.0


# ------------------------------------------------------------------ remember_failure
def test_a_404_is_remembered_for_the_permanent_ttl() -> None:
    entry = remember(None, NOT_FOUND, 404)
    assert entry is not None
    assert entry.error == NOT_FOUND and entry.retry_at == 1300.0 and entry.fetched_at == 1000.0
    assert (entry.width, entry.height, entry.etag) == (0, 0, None)
    assert url_entry_failed(entry, now=1299.9) and not url_entry_failed(entry, now=1300.0)
    assert not url_entry_fresh(entry, now=1000.0, ttl=TTL)  # a failure is never a size


def test_a_timeout_is_remembered_for_the_transient_ttl_or_not_at_all() -> None:
    entry = remember(None, TIMEOUT, None)
    assert entry is not None and entry.retry_at == 1015.0
    assert remember(None, TIMEOUT, None, transient=0.0) is None
    assert remember(None, NOT_FOUND, 404, permanent=0.0) is None


def test_a_transient_failure_does_not_erase_a_fresh_size_but_a_404_does() -> None:
    fresh = sized(fetched_at=900.0)
    assert remember(fresh, TIMEOUT, None) is None
    assert remember(fresh, ErrorInfo(code="http_status", message="HTTP 503"), 503) is None
    gone = remember(fresh, NOT_FOUND, 404)
    assert gone is not None and gone.error == NOT_FOUND
    expired = sized(fetched_at=1000.0 - TTL - 1)
    replaced = remember(expired, TIMEOUT, None)
    assert replaced is not None and replaced.error == TIMEOUT


# ------------------------------------------------------------------------ plan_fetch
def test_plan_fetch() -> None:
    now = 10_000.0
    failure = remember(None, NOT_FOUND, 404, now=now)
    assert failure is not None
    assert plan_fetch(None, refresh=False, now=now, ttl=TTL) == FETCH
    assert plan_fetch(sized(now - 1), refresh=False, now=now, ttl=TTL) == CACHED
    assert plan_fetch(sized(now - TTL - 1), refresh=False, now=now, ttl=TTL) == REVALIDATE
    no_validator = sized(now - TTL - 1, etag=None)
    assert plan_fetch(no_validator, refresh=False, now=now, ttl=TTL) == FETCH
    by_date = sized(now - TTL - 1, etag=None, last_modified="Wed, 21 Oct 2015 07:28:00 GMT")
    assert plan_fetch(by_date, refresh=False, now=now, ttl=TTL) == REVALIDATE
    assert plan_fetch(failure, refresh=False, now=now + 1, ttl=TTL) == FAILED
    assert plan_fetch(failure, refresh=False, now=failure.retry_at, ttl=TTL) == FETCH  # expired
    # refresh bypasses everything, and is never conditional
    for entry in (failure, sized(now - 1), sized(now - TTL - 1)):
        assert plan_fetch(entry, refresh=True, now=now, ttl=TTL) == FETCH


def test_ttl_zero_never_expires_a_size_but_failures_still_expire() -> None:
    failure = remember(None, NOT_FOUND, 404, now=0.0)
    assert failure is not None
    assert plan_fetch(sized(0.0), refresh=False, now=1e9, ttl=0) == CACHED
    assert plan_fetch(failure, refresh=False, now=1e9, ttl=0) == FETCH


def test_retry_after_stretches_a_transient_failure_within_bounds() -> None:
    def ttl(status: int, retry_after: float | None, transient: float = 15.0) -> float:
        return failure_ttl("http_status", status, permanent_ttl=300.0, transient_ttl=transient,
                           retry_after=retry_after)

    assert ttl(503, 120) == 120  # as the server asked
    assert ttl(429, 5) == 15  # never shorter than the transient TTL
    assert ttl(503, 86_400) == 300  # nor longer than the permanent one
    assert ttl(503, None) == 15
    assert ttl(503, 120, transient=0) == 0  # transient failures not remembered: stays off
    assert ttl(404, 5) == 300  # permanent failures ignore it
    entry = remember(None, ErrorInfo(code="http_status", message="HTTP 503"), 503, now=1000.0, retry_after=120)
    assert entry is not None and entry.retry_at == 1120.0


def test_a_flagged_size_is_answered_until_its_retry_time_then_fetched_again() -> None:
    now = 10_000.0
    flagged = flagged_entry(sized(now), "anomalous_size", ttl=300)
    assert (flagged.width, flagged.height, flagged.retry_at) == (10, 20, now + 300)
    assert plan_fetch(flagged, refresh=False, now=now + 299, ttl=TTL) == CACHED
    # shorter than the URL TTL, and never revalidated (a 304 would not re-check the size)
    assert plan_fetch(flagged, refresh=False, now=now + 300, ttl=TTL) == FETCH
    assert plan_fetch(flagged, refresh=True, now=now + 1, ttl=TTL) == FETCH
    assert not url_entry_fresh(flagged_entry(sized(now), "anomalous_size", ttl=0), now=now, ttl=TTL)
    waiter = Waiter(session_id="s", resource="r", scene="1", requested_at=now)
    update = update_from_url_entry(flagged, waiter, source="cache")
    assert update.flagged == "anomalous_size" and (update.width, update.height) == (10, 20)


# ------------------------------------------------------------------ revalidated_entry
def test_a_304_renews_the_size_and_keeps_or_updates_validators() -> None:
    old = sized(100.0, etag='"v1"', last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    same = revalidated_entry(old, fetched_at=5000.0, etag=None, last_modified=None)
    assert (same.width, same.height, same.raw_width, same.raw_height, same.orientation, same.format) == (
        10, 20, 20, 10, 6, "jpeg")
    assert same.fetched_at == 5000.0 and same.bytes_read == 0
    assert (same.etag, same.last_modified) == ('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")
    assert same.error is None and url_entry_fresh(same, now=5001.0, ttl=TTL)
    newer = revalidated_entry(old, fetched_at=5000.0, etag='"v2"', last_modified="Tue, 02 Jan 2024 00:00:00 GMT")
    assert (newer.etag, newer.last_modified) == ('"v2"', "Tue, 02 Jan 2024 00:00:00 GMT")


# ------------------------------------------------------------------- failed_update
def test_failed_update_carries_the_retry_time_and_round_trips() -> None:
    waiter = Waiter(session_id="s", resource="r", scene="1", requested_at=7.0)
    update = failed_update(URL, waiter, NOT_FOUND, at=1000.0, retry_at=1300.0)
    again = DimensionUpdate.loads(update.dumps())
    assert again.retry_at == 1300.0 and again.error == NOT_FOUND and again.url == URL
    result = result_from_update(again, placeholder=(1080, 1920))
    assert result.source == "placeholder" and result.error == NOT_FOUND
    # an update written before the field existed still loads (retry_at 0: not remembered)
    legacy = DimensionUpdate.loads(b'{"session_id":"s","resource":"r","scene":"1","url":"http://h/a",'
                                   b'"requested_at":1,"source":"fetched","error":{"code":"timeout","message":"x"}}')
    assert legacy.retry_at == 0.0


def test_url_entries_written_before_the_failure_fields_still_load() -> None:
    raw = (b'{"url":"http://h/a","width":1,"height":2,"raw_width":1,"raw_height":2,"orientation":1,'
           b'"format":"png","fetched_at":5.0,"bytes_read":24,"etag":"\\"x\\"","last_modified":null}')
    entry = UrlEntry.loads(raw)
    assert entry.error is None and entry.retry_at == 0.0
    failure = remember(None, NOT_FOUND, 404)
    assert failure is not None
    assert UrlEntry.loads(failure.dumps()).error == NOT_FOUND


# ------------------------------------------------------------- RememberedFailures
def test_remembered_failures_expire_and_can_be_forgotten() -> None:
    clock = Clock(1000.0)
    memo = RememberedFailures(clock=clock)
    memo.remember(URL, NOT_FOUND, until=1010.0)
    memo.remember("http://h/old", TIMEOUT, until=999.0)  # already over: not kept
    assert memo.get(URL) == NOT_FOUND and memo.get("http://h/old") is None and len(memo) == 1
    clock.now = 1010.0
    assert memo.get(URL) is None and len(memo) == 0
    memo.remember(URL, TIMEOUT, until=1020.0)
    memo.forget(URL)
    assert memo.get(URL) is None


def test_remembered_failures_are_bounded_oldest_first() -> None:
    memo = RememberedFailures(max_size=3, clock=Clock(0.0))
    for i in range(5):
        memo.remember(f"http://h/{i}", NOT_FOUND, until=100.0)
    assert len(memo) == 3
    assert memo.get("http://h/0") is None and memo.get("http://h/1") is None
    assert memo.get("http://h/4") == NOT_FOUND
    memo.remember("http://h/2", TIMEOUT, until=100.0)  # re-remembered: now the newest
    memo.remember("http://h/5", NOT_FOUND, until=100.0)
    assert memo.get("http://h/2") == TIMEOUT and memo.get("http://h/3") is None


# ------------------------------------------------------------------------ settings
def test_failure_ttl_settings_from_env() -> None:
    default = Settings.from_env({})
    assert (default.dimension_failure_ttl, default.dimension_transient_failure_ttl) == (300.0, 15.0)
    custom = Settings.from_env({"IMAGESTREAM_DIMENSION_FAILURE_TTL": "60",
                                "IMAGESTREAM_DIMENSION_TRANSIENT_FAILURE_TTL": "0"})
    assert (custom.dimension_failure_ttl, custom.dimension_transient_failure_ttl) == (60.0, 0.0)
    with pytest.raises(SettingsError):
        Settings.from_env({"IMAGESTREAM_DIMENSION_FAILURE_TTL": "-1"})
    with pytest.raises(SettingsError):
        Settings.from_env({"IMAGESTREAM_DIMENSION_TRANSIENT_FAILURE_TTL": "soon"})
