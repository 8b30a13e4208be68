"""The real dashscope SDK against the emulator, over real sockets (no mocks).

Each test starts its own emulator on a free port (it takes milliseconds), so counters
and fault settings never leak between tests.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import dashscope
import pytest
from PIL import Image

from emulator.app import EmulatorConfig, running_emulator
from streams.errors import (
    UpstreamQuotaExhausted,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from streams.upstream import DashScopeEditor, EditOutcome

pytestmark = pytest.mark.timeout(30)

KEY = "sk-emulator"
MODEL = "qwen-image-edit"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


def make_png(size: tuple[int, int] = (48, 32)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 5) % 256, (y * 7) % 256, (x * y * 3) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def pixels(png: bytes) -> list[tuple[int, ...]]:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return list(image.convert("RGB").get_flattened_data())


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
async def emulator() -> AsyncIterator[str]:
    # Unlimited and at the input's size: these tests are about the API, not the account
    # limits (test_account_limit_is_on_by_default is), and compare pixels with the input.
    async with running_emulator(EmulatorConfig(seed=1234, account_limits=False, output_size="input")) as base:
        yield base


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def editor(emulator: str) -> AsyncIterator[DashScopeEditor]:
    async with DashScopeEditor(
        model=MODEL, api_key=KEY, base_url=f"{emulator}/api/v1", timeout=10
    ) as client:
        yield client


async def configure(http: aiohttp.ClientSession, base: str, **changes: Any) -> dict[str, Any]:
    async with http.post(f"{base}/_emulator/config", json=changes) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/_emulator/stats") as response:
        assert response.status == 200
        return await response.json()


async def download(http: aiohttp.ClientSession, url: str) -> tuple[int, str, bytes]:
    async with http.get(url) as response:
        return response.status, response.content_type, await response.read()


async def edit(editor: DashScopeEditor, prompt: str, **params: Any) -> EditOutcome:
    return await editor.edit(image=make_png(), mime="image/png", prompt=prompt, params=params)


# --------------------------------------------------------------------------- happy paths


async def test_grayscale_edit_through_editor(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    source = make_png()
    outcome = await editor.edit(
        image=source, mime="image/png", prompt="把图片变成黑白 (grayscale)", params={"seed": 7}
    )
    assert outcome.request_id
    assert (outcome.width, outcome.height) == (48, 32)
    assert outcome.usage["image_count"] == 1
    assert outcome.result_urls == (outcome.result_url,)
    assert outcome.result_url.startswith(f"{emulator}/results/")
    status, content_type, body = await download(http, outcome.result_url)
    assert (status, content_type) == (200, "image/png")
    out = pixels(body)
    assert all(r == g == b for r, g, b in out)
    assert out != pixels(source)


async def test_raw_sdk_call_with_runtime_base_url(
    emulator: str, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK reads ``dashscope.base_http_api_url`` at call time: set it at runtime."""
    monkeypatch.setattr(dashscope, "base_http_api_url", f"{emulator}/api/v1")
    source = make_png()
    response = await dashscope.AioMultiModalConversation.call(
        model=MODEL,
        messages=[{"role": "user", "content": [{"image": data_uri(source)}, {"text": "invert"}]}],
        api_key=KEY,
        negative_prompt="blurry",
        seed=42,
        watermark=False,
    )
    await dashscope.close_shared_aio_session()
    assert response.status_code == 200, response
    choice = response.output.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    url = choice.message.content[0]["image"]
    assert response.usage["width"] == 48 and response.usage["height"] == 32
    status, _, body = await download(http, url)
    assert status == 200
    assert pixels(body) == [tuple(255 - v for v in px) for px in pixels(source)]


async def test_unknown_prompt_enhances_and_is_deterministic(
    editor: DashScopeEditor, http: aiohttp.ClientSession
) -> None:
    first = await edit(editor, "add a small hat", seed=3)
    second = await edit(editor, "add a small hat", seed=3)
    other_seed = await edit(editor, "make it blurry", seed=3)
    blur_again = await edit(editor, "make it blurry", seed=4)
    assert first.result_url != second.result_url  # a new result object per call...
    bodies = [(await download(http, o.result_url))[2] for o in (first, second, other_seed, blur_again)]
    assert bodies[0] == bodies[1]  # ...with the same picture for the same (image, prompt, seed)
    assert pixels(bodies[0]) != pixels(make_png())
    assert bodies[2] != bodies[3]  # the seed matters


async def test_http_url_input_is_fetched(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    """Chain two edits: the second takes the first one's result URL as its input."""
    gray = await edit(editor, "grayscale")
    response = await dashscope.AioMultiModalConversation.call(
        model=MODEL,
        messages=[{"role": "user", "content": [{"image": gray.result_url}, {"text": "invert"}]}],
        api_key=KEY,
        base_address=f"{emulator}/api/v1",
    )
    await dashscope.close_shared_aio_session()
    assert response.status_code == 200
    gray_px = pixels((await download(http, gray.result_url))[2])
    inverted_px = pixels((await download(http, response.output.choices[0].message.content[0]["image"]))[2])
    assert inverted_px == [tuple(255 - v for v in px) for px in gray_px]


async def test_n_images_with_plus_model(emulator: str, http: aiohttp.ClientSession) -> None:
    async with DashScopeEditor(
        model="qwen-image-edit-plus", api_key=KEY, base_url=f"{emulator}/api/v1", timeout=10
    ) as plus:
        outcome = await edit(plus, "sharpen", n=2, seed=1)
    assert len(outcome.result_urls) == 2 and outcome.usage["image_count"] == 2
    bodies = [(await download(http, url))[2] for url in outcome.result_urls]
    assert bodies[0] != bodies[1]


async def test_prompt_naming_a_local_file_is_sent_as_text(
    editor: DashScopeEditor, tmp_path: Path, http: aiohttp.ClientSession, emulator: str
) -> None:
    """The stock SDK would try to upload this file to OSS; our editor sends the text."""
    path = tmp_path / "grayscale-notes.txt"
    path.write_text("secret local file")
    outcome = await edit(editor, str(path))
    assert all(r == g == b for r, g, b in pixels((await download(http, outcome.result_url))[2]))
    assert (await stats(http, emulator))["total_requests"] == 1


async def test_transport_kwargs_in_params_never_reach_the_sdk(editor: DashScopeEditor) -> None:
    outcome = await edit(
        editor,
        "invert",
        base_address="http://127.0.0.1:9/evil",
        headers={"X-Evil": "1"},
        stream=True,
        seed=None,
    )
    assert outcome.result_url


# --------------------------------------------------------------------------- errors


async def test_wrong_key_is_rejected_invalid_api_key(
    emulator: str, http: aiohttp.ClientSession
) -> None:
    async with DashScopeEditor(
        model=MODEL, api_key="sk-wrong", base_url=f"{emulator}/api/v1", timeout=10
    ) as bad:
        with pytest.raises(UpstreamRejected) as info:
            await edit(bad, "enhance")
    assert info.value.code == "InvalidApiKey"
    assert info.value.http_status == 401 and info.value.request_id
    assert not info.value.retriable
    assert (await stats(http, emulator))["by_status"] == {"401": 1}


@pytest.mark.parametrize(
    ("weights", "error_class", "burst"),
    [
        ({"rate": 1, "burst": 0, "quota": 0}, UpstreamRateLimited, False),
        ({"rate": 0, "burst": 1, "quota": 0}, UpstreamRateLimited, True),
        # "Allocated quota exceeded" is the per-minute limit: retried after the minute.
        ({"rate": 0, "burst": 0, "quota": 1}, UpstreamRateLimited, False),
    ],
)
async def test_forced_429s(
    editor: DashScopeEditor,
    emulator: str,
    http: aiohttp.ClientSession,
    weights: dict[str, int],
    error_class: type,
    burst: bool | None,
) -> None:
    await configure(http, emulator, rate_429=1.0, weights_429=weights)
    with pytest.raises(error_class) as info:
        await edit(editor, "enhance")
    assert type(info.value) is error_class
    assert info.value.http_status == 429
    if burst is not None:
        assert info.value.burst is burst
    assert (await stats(http, emulator))["by_status"] == {"429": 1}


async def test_forced_500_is_unavailable(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    await configure(http, emulator, rate_500=1.0)
    with pytest.raises(UpstreamUnavailable) as info:
        await edit(editor, "enhance")
    assert info.value.http_status == 500 and info.value.retriable
    assert "InternalError" in info.value.message


async def test_forced_inspection_failure_is_rejected(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    await configure(http, emulator, rate_inspection=1.0)
    with pytest.raises(UpstreamRejected) as info:
        await edit(editor, "enhance")
    assert info.value.code == "DataInspectionFailed" and not info.value.retriable
    assert (await stats(http, emulator))["by_code"] == {"DataInspectionFailed": 1}


async def test_dropped_connection_is_unavailable(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    await configure(http, emulator, rate_drop=1.0)
    with pytest.raises(UpstreamUnavailable) as info:
        await edit(editor, "enhance")
    assert info.value.code == "connection_error" and info.value.retriable
    # One request: the SDK's own hidden resend is turned off (our retry policy decides).
    assert (await stats(http, emulator))["by_status"] == {"dropped": 1}


async def test_slow_upstream_times_out(emulator: str, http: aiohttp.ClientSession) -> None:
    await configure(http, emulator, latency="fixed:1.0")
    async with DashScopeEditor(
        model=MODEL, api_key=KEY, base_url=f"{emulator}/api/v1", timeout=0.2
    ) as hasty:
        with pytest.raises(UpstreamUnavailable) as info:
            await edit(hasty, "enhance")
    assert info.value.code == "timeout"


async def test_non_image_data_is_invalid_parameter(editor: DashScopeEditor) -> None:
    with pytest.raises(UpstreamRejected) as info:
        await editor.edit(image=b"this is not an image", mime="image/png", prompt="x", params={})
    assert info.value.code == "InvalidParameter" and info.value.http_status == 400


async def test_account_rate_limit(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    await configure(http, emulator, account_rps=0.5)
    assert (await edit(editor, "enhance")).result_url
    with pytest.raises(UpstreamRateLimited) as info:
        await edit(editor, "enhance")
    assert not info.value.burst


async def _raw_call(
    http: aiohttp.ClientSession, base: str, body: Any, key: str | None = KEY
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.post(f"{base}{GENERATION}", json=body, headers=headers) as response:
        return response.status, await response.json()


def _body(content: list[dict[str, Any]], model: str = MODEL, **params: Any) -> dict[str, Any]:
    return {"model": model, "input": {"messages": [{"role": "user", "content": content}]}, "parameters": params}


async def test_request_validation(emulator: str, http: aiohttp.ClientSession) -> None:
    image = {"image": data_uri(make_png((8, 8)))}
    cases = [
        # (An 801-character prompt is truncated, as the reference says, not refused.)
        (_body([image, {"text": "enhance"}], negative_prompt=5), "InvalidParameter"),
        (_body([image, {"text": "enhance"}], model="qwen-image-edit-plus", size="1000*1000"), "InvalidParameter"),
        (_body([image] * 4 + [{"text": "enhance"}]), "InvalidParameter"),
        (_body([{"text": "enhance"}]), "InvalidParameter"),
        (_body([image, {"text": "a"}, {"text": "b"}]), "InvalidParameter"),
        (_body([image, {"text": "enhance"}], model="qwen-image-nope"), "InvalidParameter"),
        (_body([image, {"text": "enhance"}], seed=-1), "InvalidParameter"),
        (_body([image, {"text": "enhance"}], n=2), "InvalidParameter"),
        (_body([{"image": "file:///etc/passwd"}, {"text": "enhance"}]), "InvalidURL"),
        (_body([{"image": "data:image/png;base64,@@@"}, {"text": "enhance"}]), "InvalidParameter"),
        ({"input": {}}, "BadRequest.EmptyModel"),
        ({"model": MODEL}, "BadRequest.EmptyInput"),
    ]
    for body, code in cases:
        status, answer = await _raw_call(http, emulator, body)
        assert (status, answer["code"]) == (400, code), body
        assert answer["request_id"] and answer["message"]
    status, answer = await _raw_call(http, emulator, _body([image, {"text": "x" * 800}]))
    assert status == 200
    status, answer = await _raw_call(http, emulator, _body([image, {"text": "enhance"}]), key=None)
    assert (status, answer["code"], answer["message"]) == (401, "InvalidApiKey", "No API-key provided.")


# --------------------------------------------------------------------------- result URLs


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_result_url_signature_is_checked(
    editor: DashScopeEditor, http: aiohttp.ClientSession
) -> None:
    url = (await edit(editor, "enhance")).result_url
    query = dict(parse_qsl(urlsplit(url).query))
    assert set(query) == {"Expires", "Signature"}
    forged = _with_query(url, Signature=query["Signature"][:-2] + "AA")
    status, content_type, body = await download(http, forged)
    assert (status, content_type) == (403, "application/xml")
    assert b"<Code>SignatureDoesNotMatch</Code>" in body
    longer = _with_query(url, Expires=str(int(query["Expires"]) + 3600))
    assert (await download(http, longer))[0] == 403
    bare = urlunsplit(urlsplit(url)._replace(query=""))
    assert (await download(http, bare))[0] == 403
    assert (await download(http, url))[0] == 200


async def test_expired_result_url_is_forbidden(http: aiohttp.ClientSession) -> None:
    async with running_emulator(EmulatorConfig(result_ttl=0, account_limits=False, output_size="input")) as base:
        async with DashScopeEditor(
            model=MODEL, api_key=KEY, base_url=f"{base}/api/v1", timeout=10
        ) as client:
            url = (await edit(client, "enhance")).result_url
        status, content_type, body = await download(http, url)
        assert (status, content_type) == (403, "application/xml")
        assert b"<Code>AccessDenied</Code>" in body and b"Request has expired." in body
        assert (await stats(http, base))["results_denied"] == 1


async def test_result_ttl_can_change_at_runtime(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    await configure(http, emulator, result_ttl=-10)
    url = (await edit(editor, "enhance")).result_url
    assert (await download(http, url))[0] == 403


# --------------------------------------------------------------------------- stats


async def test_stats_count_concurrency(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    # Long enough that all five are sent before the first answer even on a loaded machine.
    await configure(http, emulator, latency="fixed:1.5")
    outcomes = await asyncio.gather(*(edit(editor, "sharpen") for _ in range(5)))
    assert len({o.result_url for o in outcomes}) == 5
    numbers = await stats(http, emulator)
    assert numbers["total_requests"] == 5
    async with http.get(f"{emulator}/_emulator/latencies") as resp:
        calls = (await resp.json())["calls"]
    overlap = max(sum(1 for s, f in calls if s <= start < f) for start, _ in calls)
    assert numbers["max_in_flight"] == overlap, (numbers, calls)  # counted as the timeline shows
    assert numbers["max_in_flight"] == 5, f"only {overlap} of 5 concurrent calls overlapped: {calls}"
    assert numbers["in_flight"] == 0
    assert numbers["by_status"] == {"200": 5}
    assert numbers["per_model"][MODEL] == {
        "requests": 5,
        "in_flight": 0,
        "max_in_flight": 5,
        "by_status": {"200": 5},
    }
    async with http.post(f"{emulator}/_emulator/reset") as response:
        assert response.status == 200
    numbers = await stats(http, emulator)
    assert numbers["total_requests"] == 0 and numbers["max_in_flight"] == 0
    assert numbers["per_model"][MODEL]["requests"] == 0


async def test_latencies_and_call_timeline(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession
) -> None:
    await configure(http, emulator, latency="fixed:0.15")
    before = time.time()
    await asyncio.gather(*(edit(editor, "sharpen") for _ in range(3)))
    after = time.time()
    async with http.get(f"{emulator}/_emulator/latencies") as response:
        drawn = await response.json()
    assert drawn["latencies_s"] == [0.15, 0.15, 0.15]
    assert len(drawn["calls"]) == 3
    for started, finished in drawn["calls"]:
        # The drawn latency is the whole service time, so every call lasted at least it.
        assert before <= started and started + 0.15 <= finished <= after
    async with http.post(f"{emulator}/_emulator/reset") as response:
        assert response.status == 200
    async with http.get(f"{emulator}/_emulator/latencies") as response:
        assert await response.json() == {"latencies_s": [], "calls": []}


async def test_config_endpoint_rejects_bad_values(emulator: str, http: aiohttp.ClientSession) -> None:
    for body in ({"rate_429": 2}, {"latency": "warp:9"}, {"bogus": 1}, [1, 2]):
        async with http.post(f"{emulator}/_emulator/config", json=body) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "invalid_config"
    async with http.get(f"{emulator}/_emulator/config") as response:
        current = await response.json()
    assert current["rate_429"] == 0 and current["latency"] == "none"


async def test_account_limit_is_on_by_default_per_model_summed_over_keys(http: aiohttp.ClientSession) -> None:
    """The default emulator applies the catalogue's per-model account limits (2 requests/s
    for qwen-image-edit), summed over every key, like the real service."""
    source = make_png()
    async with running_emulator(EmulatorConfig(api_keys=("k1", "k2"), output_size="input")) as base:
        outcomes = []
        for key in ("k1", "k2", "k1", "k2"):
            async with DashScopeEditor(model=MODEL, api_key=key, base_url=f"{base}/api/v1", timeout=10) as ed:
                try:
                    await ed.edit(image=source, mime="image/png", prompt="invert", params={})
                    outcomes.append("ok")
                except UpstreamRateLimited:
                    outcomes.append("429")
        assert outcomes[:2] == ["ok", "ok"] and "429" in outcomes[2:], outcomes
        # Another model has its own limit.
        async with DashScopeEditor(model="qwen-image-edit-plus", api_key="k1", base_url=f"{base}/api/v1",
                                   timeout=10) as ed:
            assert (await ed.edit(image=source, mime="image/png", prompt="invert", params={})).result_url
        async with http.get(f"{base}/_emulator/config") as resp:
            assert (await resp.json())["account_limits"] is True


async def test_default_output_is_about_one_megapixel_with_the_last_inputs_aspect() -> None:
    wide, tall = make_png(), make_png(size=(30, 60))
    async with running_emulator(EmulatorConfig(account_limits=False)) as base:
        async with DashScopeEditor(model="qwen-image-edit-plus", api_key=KEY, base_url=f"{base}/api/v1",
                                   timeout=30) as ed:
            out = await ed.edit(images=[(wide, "image/png"), (tall, "image/png")], prompt="enhance", params={})
    assert out.width is not None and out.height is not None
    assert abs(out.width * out.height - 1024 * 1024) < 0.05 * 1024 * 1024
    assert abs(out.height / out.width - 2) < 0.05  # 1:2, the last input's aspect
    assert out.width % 16 == 0 and out.height % 16 == 0


async def test_long_negative_prompt_is_truncated_and_model_rules_refused(emulator: str) -> None:
    source = make_png()
    async with DashScopeEditor(model=MODEL, api_key=KEY, base_url=f"{emulator}/api/v1", timeout=10) as ed:
        assert (await ed.edit(image=source, mime="image/png", prompt="invert",
                              params={"negative_prompt": "x" * 900})).result_url
        for params in ({"size": "1024*1024"}, {"prompt_extend": True}, {"n": 2}):
            with pytest.raises(UpstreamRejected):
                await ed.edit(image=source, mime="image/png", prompt="invert", params=params)


@pytest.mark.parametrize(("fault", "status"), [("rate_408", 408), ("rate_503", 503)])
async def test_408_and_503_are_retriable_unavailability(
    editor: DashScopeEditor, emulator: str, http: aiohttp.ClientSession, fault: str, status: int
) -> None:
    await configure(http, emulator, **{fault: 1.0})
    with pytest.raises(UpstreamUnavailable) as info:
        await edit(editor, "enhance")
    assert info.value.http_status == status and info.value.retriable
    assert (await stats(http, emulator))["by_status"] == {str(status): 1}
