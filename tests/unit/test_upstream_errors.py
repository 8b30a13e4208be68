"""translate() / translate_exception(): DashScope answers and transport failures → our errors."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from dashscope.common.error import AuthenticationError, InvalidInput

from emulator.faults import ERRORS, Fault
from streams.errors import (
    UpstreamAccountError,
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from streams.upstream import translate, translate_exception


def test_rate_limit_exceeded_is_retriable_rate_limit() -> None:
    err = translate(
        429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later.", "r1"
    )
    assert type(err) is UpstreamRateLimited
    assert err.retriable and not err.burst
    assert err.code == "rate_limited"
    assert err.http_status == 429 and err.request_id == "r1"
    assert "Requests rate limit exceeded" in err.message


def test_burst_refusal_is_rate_limit_with_burst_flag() -> None:
    err = translate(
        429, "Throttling.RateQuota", "Request rate increased too quickly, please slow down.", "r2"
    )
    assert type(err) is UpstreamRateLimited
    assert err.burst and err.retriable


@pytest.mark.parametrize("code", ["Throttling.RateQuota", "Throttling.AllocationQuota", None])
def test_allocated_quota_exceeded_is_the_per_minute_limit_retried_after_a_minute(code: str | None) -> None:
    # The rate-limit page: "Allocated quota exceeded" is the per-minute limit and
    # "typically recovers automatically within one minute".
    err = translate(429, code, "Allocated quota exceeded, please increase your quota limit.", "r3")
    assert type(err) is UpstreamRateLimited
    assert err.retriable and err.retry_after == 60.0
    assert err.code == "rate_limited"


def test_free_allocated_quota_exceeded_is_quota_exhausted_and_an_account_error() -> None:
    err = translate(429, "Throttling.AllocationQuota", "Free allocated quota exceeded.", None)
    assert isinstance(err, UpstreamQuotaExhausted) and isinstance(err, UpstreamAccountError)
    assert err.code == "quota_exhausted" and not err.retriable


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "Arrearage", "account_in_arrears"),
        (400, "PrepaidBillOverdue", "account_in_arrears"),
        (403, "PostpaidBillOverdue", "account_in_arrears"),
        (403, "AccessDenied.Unpurchased", "model_not_purchased"),
        (403, "Model.AccessDenied", "model_not_purchased"),
        (400, "CommodityNotPurchased", "model_not_purchased"),
    ],
)
def test_account_state_errors_have_their_own_codes(status: int, code: str, expected: str) -> None:
    err = translate(status, code, "Access denied, please make sure your account is in good standing.", "r9")
    assert type(err) is UpstreamAccountError
    assert err.code == expected and not err.retriable and err.http_status == status


def test_other_429_is_plain_rate_limit() -> None:
    err = translate(429, "Throttling", "Requests throttling triggered.", "r4")
    assert type(err) is UpstreamRateLimited and not err.burst


@pytest.mark.parametrize("fault", [Fault.THROTTLE_RATE, Fault.THROTTLE_BURST, Fault.QUOTA_EXCEEDED])
def test_emulator_429_bodies_map_as_intended(fault: Fault) -> None:
    spec = ERRORS[fault]
    err = translate(spec.status, spec.code, spec.message, "rid")
    expected = {
        Fault.THROTTLE_RATE: (UpstreamRateLimited, False),
        Fault.THROTTLE_BURST: (UpstreamRateLimited, True),
        Fault.QUOTA_EXCEEDED: (UpstreamRateLimited, False),  # the per-minute limit
    }[fault]
    assert type(err) is expected[0]
    if expected[1] is not None:
        assert err.burst is expected[1]  # type: ignore[attr-defined]


def test_401_is_rejected_invalid_api_key() -> None:
    err = translate(401, "InvalidApiKey", "Invalid API-key provided.", "r5")
    assert type(err) is UpstreamRejected
    assert err.code == "InvalidApiKey" and not err.retriable and err.http_status == 401


def test_401_without_code_defaults_to_invalid_api_key() -> None:
    assert translate(401, None, None, None).code == "InvalidApiKey"


def test_403_keeps_upstream_code() -> None:
    err = translate(403, "AccessDenied", "Access denied.", "r6")
    assert type(err) is UpstreamRejected and err.code == "AccessDenied"


@pytest.mark.parametrize(
    "code", ["DataInspectionFailed", "InvalidParameter", "InvalidURL"]
)
def test_other_4xx_rejected_with_upstream_code(code: str) -> None:
    err = translate(400, code, "something about the input", "r7")
    assert type(err) is UpstreamRejected
    assert err.code == code and not err.retriable and err.http_status == 400


def test_4xx_without_code_gets_a_stable_one() -> None:
    assert translate(413, None, "Payload Too Large", None).code == "http_413"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_unavailable_and_retriable(status: int) -> None:
    err = translate(status, "InternalError", "An internal error has occured", "r8")
    assert type(err) is UpstreamUnavailable
    assert err.retriable and err.code == "upstream_unavailable" and err.http_status == status


def test_missing_status_is_unavailable() -> None:
    assert type(translate(None, None, None, None)) is UpstreamUnavailable


def test_empty_request_id_becomes_none() -> None:
    assert translate(500, "InternalError", "x", "").request_id is None


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        asyncio.TimeoutError(),
        aiohttp.ServerTimeoutError("read timeout"),
        aiohttp.ConnectionTimeoutError("connect timeout"),
    ],
)
def test_timeouts(exc: BaseException) -> None:
    err = translate_exception(exc)
    assert type(err) is UpstreamUnavailable and err.code == "timeout" and err.retriable


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("reset"),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("truncated"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionRefusedError(111, "refused"),
    ],
)
def test_connection_failures(exc: BaseException) -> None:
    err = translate_exception(exc)
    assert type(err) is UpstreamUnavailable and err.code == "connection_error" and err.retriable


def test_unreadable_response_is_bad_response() -> None:
    exc = aiohttp.ContentTypeError(None, (), status=200, message="not json")  # type: ignore[arg-type]
    err = translate_exception(exc)
    assert type(err) is UpstreamUnavailable and err.code == "bad_response"


def test_sdk_without_api_key_is_rejected_invalid_api_key() -> None:
    err = translate_exception(AuthenticationError("No api key provided."))
    assert type(err) is UpstreamRejected and err.code == "InvalidApiKey"


def test_other_sdk_errors_are_rejected_not_retried() -> None:
    err = translate_exception(InvalidInput("The file: x is not exists!"))
    assert type(err) is UpstreamRejected and not err.retriable


def test_unknown_exception_is_unavailable() -> None:
    err = translate_exception(TypeError("'NoneType' object is not a mapping"))
    assert type(err) is UpstreamUnavailable and err.code == "bad_response"


def test_already_translated_passes_through() -> None:
    original = UpstreamRateLimited("x")
    assert translate_exception(original) is original


def test_region_endpoints_follow_the_reference_and_the_sdk() -> None:
    from config.catalogue import load_catalogue
    from streams.upstream import region_base_url

    catalogue = load_catalogue()
    beijing = catalogue.region("cn-beijing").base_url
    singapore = catalogue.region("ap-southeast-1").base_url
    assert region_base_url("cn-beijing", catalogue_url=beijing, workspace_id=None) == \
        "https://dashscope.aliyuncs.com/api/v1"
    assert region_base_url("ap-southeast-1", catalogue_url=singapore, workspace_id=None) == \
        "https://dashscope-intl.aliyuncs.com/api/v1"
    # With a workspace the SDK's own MaaS endpoint of the region (dashscope.common.env).
    assert region_base_url("ap-southeast-1", catalogue_url=singapore, workspace_id="ws-1") == \
        "https://ws-1.ap-southeast-1.maas.aliyuncs.com/api/v1"
    with pytest.raises(ValueError):
        region_base_url("ap-southeast-1", catalogue_url=singapore, workspace_id="bad host/x")
