"""The DashScope emulator: an aiohttp app speaking DashScope's multimodal-generation API.

The real ``dashscope`` SDK works against it unchanged when ``DASHSCOPE_HTTP_BASE_URL`` (or
``dashscope.base_http_api_url``, or the per-call ``base_address``) is
``http://HOST:PORT/api/v1``.

Routes::

    POST /api/v1/services/aigc/multimodal-generation/generation   the model call
    GET  /results/{id}.png?Expires=<unix>&Signature=<hmac>          signed, expiring result
    GET  /_emulator/stats        counters (requests, in flight, max in flight, per model...)
    GET  /_emulator/latencies    injected latencies since the last reset, in draw order, and
                                 every finished call's wall-clock [started, finished]
    POST /_emulator/reset        zero the counters
    GET  /_emulator/config       the fault settings in force
    POST /_emulator/config       change them: {"latency": "fixed:0.2", "rate_429": 1.0, ...}

A model call goes: Bearer key check (401 InvalidApiKey) → request validation like the real
service (400 InvalidParameter / BadRequest.*) → emulated account rate limit (429) → fault
draw (429 at once; otherwise latency, then maybe a dropped connection, 500 InternalError)
→ images fetched / decoded / checked (400 InvalidParameter) → maybe 400
DataInspectionFailed → a real Pillow edit (:mod:`emulator.edits`) in a thread → the PNG is
kept in memory (LRU, bounded) and served from a signed URL that expires after
``result_ttl`` seconds (real: 24 h).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import random
import re
import secrets
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape as xml_escape

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from config.catalogue import ModelSpec, load_catalogue
from emulator import edits
from emulator.faults import (
    ACCOUNT_ERRORS,
    ERRORS,
    AccountRateLimiter,
    Decision,
    Fault,
    FaultConfig,
    FaultConfigError,
    decide,
)

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_MODELS",
    "GENERATION_PATH",
    "EmulatorConfig",
    "SafeAccessLogger",
    "create_app",
    "running_emulator",
]

log = logging.getLogger("imagestream.emulator")

DEFAULT_API_KEY = "sk-emulator"
GENERATION_PATH = "/api/v1/services/aigc/multimodal-generation/generation"

#: The models the emulator serves, as ``config/models.toml`` describes them (what each
#: takes, and its account rate limit).
DEFAULT_MODELS: Mapping[str, ModelSpec] = load_catalogue().models

#: Output pixels when a call gives no ``size``: "the aspect ratio of the (last) input
#: image, with a resolution close to 1024*1024" (the API reference).
DEFAULT_OUTPUT_PIXELS = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """Everything an emulator instance needs; faults can change at runtime."""

    api_keys: tuple[str, ...] = field(default=(DEFAULT_API_KEY,), repr=False)
    faults: FaultConfig = FaultConfig()
    #: Seed of the fault RNG (None: random).
    seed: int | None = None
    #: Seconds a result URL stays valid; 0 or negative gives URLs that are already expired.
    result_ttl: float = 24 * 3600.0
    #: Per-model account limits of the catalogue (requests per second or minute, summed
    #: over all keys, as the real service counts them).  On by default, like the real
    #: service; tests and benchmarks that are not about limits turn them off.
    account_limits: bool = True
    #: One limit for every model (requests/second over all keys) instead; None: the
    #: catalogue's (or none, with ``account_limits`` off).
    account_rps: float | None = None
    models: Mapping[str, ModelSpec] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    #: "1mp": outputs of about 1024*1024 pixels keeping the last input's aspect (what the
    #: real service returns); "input": the last input's own size (pixel-exact checks,
    #: cheap benchmarks).
    output_size: str = "1mp"
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500
    max_images: int = 3
    max_image_bytes: int = 10 * 1024 * 1024
    #: Per-side bounds. The real service documents 384..3072; the lower bound is relaxed
    #: by default so tests can use tiny images (set min_side=384 for the strict check).
    min_side: int = 1
    max_side: int = 3072
    max_pixels: int = 3072 * 3072
    #: Bounds of the in-memory result store (least recently used go first).
    results_max_bytes: int = 256 * 1024 * 1024
    results_max_count: int = 10_000
    #: Base of result URLs; default: scheme and host the request came in on.
    public_url: str | None = None
    #: Whole deadline for fetching an http(s) input image.
    fetch_timeout: float = 10.0
    #: HMAC key for result URLs; default: a random one per instance.
    signing_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.api_keys or any(not key for key in self.api_keys):
            raise ValueError("at least one non-empty API key is required")
        if self.account_rps is not None and self.account_rps <= 0:
            raise ValueError("account_rps must be > 0 when set")
        if self.output_size not in ("1mp", "input"):
            raise ValueError("output_size must be '1mp' or 'input'")


# --------------------------------------------------------------------------- stats


@dataclass
class _Counters:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    by_status: Counter[str] = field(default_factory=Counter)

    def enter(self) -> None:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self, status: str) -> None:
        self.in_flight -= 1
        self.by_status[status] += 1

    def reset(self) -> None:
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.by_status.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": dict(sorted(self.by_status.items())),
        }


@dataclass
class Stats:
    """Counters of model calls; ``reset`` keeps what is in flight now."""

    total: _Counters = field(default_factory=_Counters)
    per_model: dict[str, _Counters] = field(default_factory=dict)
    by_code: Counter[str] = field(default_factory=Counter)
    results_served: int = 0
    results_denied: int = 0
    started_at: float = field(default_factory=time.time)
    #: Injected latencies in the order calls drew them (benchmarks compare against them).
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    #: Calls in flight now (their start times tell how long they have been running).
    calls: set[_Call] = field(default_factory=set)
    #: (started, finished) wall-clock times of finished calls, in finishing order: lets a
    #: benchmark see how long a client kept a slot idle between one call and the next.
    timeline: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=100_000))

    def reset(self) -> None:
        self.latencies.clear()
        self.timeline.clear()
        self.total.reset()
        for counters in self.per_model.values():
            counters.reset()
        self.by_code.clear()
        self.results_served = 0
        self.results_denied = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "total_requests": self.total.requests,
            "in_flight": self.total.in_flight,
            "max_in_flight": self.total.max_in_flight,
            "by_status": dict(sorted(self.total.by_status.items())),
            "by_code": dict(sorted(self.by_code.items())),
            "per_model": {name: c.to_json() for name, c in sorted(self.per_model.items())},
            "results_served": self.results_served,
            "results_denied": self.results_denied,
            "latency_count": len(self.latencies),
            # Age of the youngest call in flight: how long ago the last call started.
            "in_flight_min_age_s": round(time.monotonic() - max(c.started for c in self.calls), 3)
            if self.calls else None,
            "latency_sum_s": round(sum(self.latencies), 6),
            "uptime_s": round(time.time() - self.started_at, 3),
        }


class _Call:
    """Bookkeeping for one model call: in flight overall from entry, per model once known."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._model: _Counters | None = None
        self.status = "500"
        self.code: str | None = None
        self.started = time.monotonic()
        self.started_wall = time.time()
        stats.total.enter()
        stats.calls.add(self)

    def model(self, name: str) -> None:
        counters = self._stats.per_model.setdefault(name, _Counters())
        counters.enter()
        self._model = counters

    def finish(self) -> None:
        self._stats.timeline.append((self.started_wall, time.time()))
        self._stats.calls.discard(self)
        self._stats.total.leave(self.status)
        if self._model is not None:
            self._model.leave(self.status)
        if self.code:
            self._stats.by_code[self.code] += 1


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class _Stored:
    png: bytes
    expires_at: float


class ResultStore:
    """Result PNGs in memory, least recently used evicted beyond the bounds."""

    def __init__(self, *, max_bytes: int, max_count: int) -> None:
        self._items: OrderedDict[str, _Stored] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.max_count = max_count

    def __len__(self) -> int:
        return len(self._items)

    def put(self, png: bytes, *, expires_at: float) -> str:
        result_id = uuid.uuid4().hex
        self._items[result_id] = _Stored(png, expires_at)
        self._bytes += len(png)
        while self._items and (
            self._bytes > self.max_bytes or len(self._items) > self.max_count
        ):
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old.png)
        return result_id

    def get(self, result_id: str) -> bytes | None:
        item = self._items.get(result_id)
        if item is None:
            return None
        self._items.move_to_end(result_id)
        return item.png

    def sweep(self, now: float) -> int:
        """Forget results whose URLs have expired; returns how many."""
        dead = [key for key, item in self._items.items() if item.expires_at <= now]
        for key in dead:
            self._bytes -= len(self._items.pop(key).png)
        return len(dead)


def _signature(secret: bytes, result_id: str, expires: int) -> str:
    digest = hmac.new(secret, f"GET\n{result_id}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --------------------------------------------------------------------------- state


@dataclass
class EmulatorState:
    config: EmulatorConfig
    faults: FaultConfig
    result_ttl: float
    rng: random.Random
    limiter: AccountRateLimiter | None
    secret: bytes
    account_limits: bool = True
    #: The catalogue limit of each model, created at its first call.
    model_limiters: dict[str, AccountRateLimiter] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    results: ResultStore = field(init=False)
    http: aiohttp.ClientSession | None = None
    #: Model (or "*": every model) → an ACCOUNT_ERRORS name, switched at run time.
    account_errors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.results = ResultStore(
            max_bytes=self.config.results_max_bytes, max_count=self.config.results_max_count
        )

    def settings_json(self) -> dict[str, Any]:
        return {
            **self.faults.to_json(),
            "account_rps": self.limiter.rps if self.limiter else None,
            "account_limits": self.account_limits,
            "result_ttl": self.result_ttl,
            "account_error": dict(self.account_errors),
        }


STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)


# --------------------------------------------------------------------------- errors


class _ApiError(Exception):
    """An error answer in DashScope's shape: HTTP status + {request_id, code, message}."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _invalid(message: str) -> _ApiError:
    return _ApiError(400, "InvalidParameter", message)


def _error_response(error: _ApiError, request_id: str) -> web.Response:
    return web.json_response(
        {"request_id": request_id, "code": error.code, "message": error.message},
        status=error.status,
        headers={"X-Request-Id": request_id},
    )


def _oss_error(
    status: int, code: str, message: str, request_id: str, **extra: str
) -> web.Response:
    """An error page shaped like Alibaba Cloud OSS's XML errors."""
    fields = {"Code": code, "Message": message, "RequestId": request_id, **extra}
    body = "".join(f"  <{k}>{xml_escape(v)}</{k}>\n" for k, v in fields.items())
    return web.Response(
        status=status,
        text=f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n{body}</Error>\n',
        content_type="application/xml",
        headers={"x-oss-request-id": request_id},
    )


class _Dropped(Exception):
    """Raised after the connection was closed on purpose."""


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _EditRequest:
    model: str
    prompt: str
    images: tuple[str, ...]
    seed: int | None
    watermark: bool
    n: int
    size: tuple[int, int] | None


_DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.S)
_SIZE = re.compile(r"(\d+)\s*[*x×]\s*(\d+)")


def _parse_call(body: Any, config: EmulatorConfig) -> _EditRequest:
    """Validate a request body the way the real service does; raise :class:`_ApiError`."""
    if not isinstance(body, dict):
        raise _invalid("Request body must be a JSON object.")
    model = body.get("model")
    if not model:
        raise _ApiError(
            400, "BadRequest.EmptyModel", 'Required parameter "model" missing from request.'
        )
    if not isinstance(model, str) or model not in config.models:
        raise _invalid("Model not exist.")
    payload = body.get("input")
    if not isinstance(payload, dict) or not payload:
        raise _ApiError(
            400, "BadRequest.EmptyInput", "Required input parameter missing from request."
        )
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("Field required: input.messages")
    if len(messages) != 1 or not isinstance(messages[0], dict):
        raise _invalid("Exactly one user message is supported: input.messages")
    message = messages[0]
    if message.get("role") != "user":
        raise _invalid("The role of the message must be 'user'.")
    content = message.get("content")
    if not isinstance(content, list) or not content:
        raise _invalid("Field required: input.messages.0.content")
    texts: list[Any] = []
    images: list[Any] = []
    for item in content:
        if not isinstance(item, dict) or len(item) != 1:
            raise _invalid("Each content item must hold exactly one of 'image' or 'text'.")
        (kind, value), = item.items()
        if kind == "text":
            texts.append(value)
        elif kind == "image":
            images.append(value)
        else:
            raise _invalid(f"Unsupported content type '{kind}': only image and text are accepted.")
    if len(texts) != 1 or not isinstance(texts[0], str) or not texts[0].strip():
        raise _invalid("Exactly one non-empty text item is required in content.")
    spec = config.models[model]
    # The reference: prompt (800) and negative_prompt (500) beyond the limit "is
    # truncated automatically", not refused.
    prompt = texts[0][: spec.prompt_chars]
    max_images = min(config.max_images, spec.max_images)
    if not 1 <= len(images) <= max_images:
        raise _invalid(f"The number of input images must be between 1 and {max_images}.")
    if any(not isinstance(image, str) or not image for image in images):
        raise _invalid("Each image must be a non-empty string (URL or data URI).")

    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _invalid("Field 'parameters' must be an object.")
    negative = params.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _invalid("negative_prompt must be a string.")
    seed = params.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2_147_483_647
    ):
        raise _invalid("seed must be an integer within [0, 2147483647].")
    for flag in ("watermark", "prompt_extend"):
        if flag in params and not isinstance(params[flag], bool):
            raise _invalid(f"{flag} must be a boolean.")
    if "prompt_extend" in params and not spec.prompt_extend:
        raise _invalid(f"The parameter prompt_extend is not supported by model {model}.")
    n = params.get("n", 1)
    max_n = spec.n_max
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_n:
        raise _invalid(f"n must be an integer within [1, {max_n}] for model {model}.")
    size = None
    if params.get("size") is not None:
        if not spec.size:
            raise _invalid(f"The parameter size is not supported by model {model}.")
        match = _SIZE.fullmatch(str(params["size"]).strip())
        if not match:
            raise _invalid("size must look like '1024*1024'.")
        size = (int(match[1]), int(match[2]))
        problem = spec.size_problem(*size)
        if problem:
            raise _invalid(f"Invalid size: {problem}.")
    return _EditRequest(
        model=model,
        prompt=prompt,
        images=tuple(images),
        seed=seed,
        watermark=bool(params.get("watermark", False)),
        n=n,
        size=size,
    )


def _decode_data_uri(uri: str, max_bytes: int) -> bytes:
    match = _DATA_URI.fullmatch(uri)
    if not match or "base64" not in match["params"].lower().split(";"):
        raise _invalid("The data URI of the image is invalid: expected data:<mime>;base64,<data>.")
    data = match["data"]
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise _invalid(f"The image size exceeds the limit of {max_bytes // (1024 * 1024)}MB.")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("The base64 data of the image is invalid.") from None
    if len(raw) > max_bytes:
        raise _invalid(f"The image size exceeds the limit of {max_bytes // (1024 * 1024)}MB.")
    return raw


async def _fetch_image(state: EmulatorState, url: str) -> bytes:
    config = state.config
    assert state.http is not None
    try:
        async with asyncio.timeout(config.fetch_timeout):
            async with state.http.get(url, allow_redirects=True, max_redirects=5) as response:
                if response.status != 200:
                    raise _invalid(
                        f"Failed to download the image from the provided URL "
                        f"(HTTP {response.status})."
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > config.max_image_bytes:
                        raise _invalid(
                            f"The image size exceeds the limit of "
                            f"{config.max_image_bytes // (1024 * 1024)}MB."
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
    except TimeoutError:
        raise _invalid(
            "Download the media resource timed out during the data inspection process."
        ) from None
    except aiohttp.ClientError as exc:
        raise _invalid(
            f"Failed to download the image from the provided URL: {type(exc).__name__}."
        ) from None


async def _load_image(state: EmulatorState, image: str) -> bytes:
    if image.startswith("data:"):
        return _decode_data_uri(image, state.config.max_image_bytes)
    if image.startswith(("http://", "https://")):
        return await _fetch_image(state, image)
    raise _ApiError(400, "InvalidURL", "Invalid URL provided in your request.")


# --------------------------------------------------------------------------- handlers


def _check_key(request: web.Request, config: EmulatorConfig) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _ApiError(401, "InvalidApiKey", "No API-key provided.")
    if not any(hmac.compare_digest(key.encode(), good.encode()) for good in config.api_keys):
        raise _ApiError(401, "InvalidApiKey", "Invalid API-key provided.")


def _drop(request: web.Request) -> None:
    """Close the connection without writing a response."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise _Dropped


def _result_base(request: web.Request, config: EmulatorConfig) -> str:
    if config.public_url:
        return config.public_url.rstrip("/")
    return f"{request.scheme}://{request.host}"


async def generation(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    request_id = str(uuid.uuid4())
    call = _Call(state.stats)
    try:
        response = await _generate(request, state, call, request_id)
        call.status = str(response.status)
        return response
    except _ApiError as error:
        call.status, call.code = str(error.status), error.code
        return _error_response(error, request_id)
    except _Dropped:
        call.status = "dropped"
        raise asyncio.CancelledError from None
    finally:
        call.finish()


def _allowed(state: EmulatorState, model: str) -> bool:
    """The account's rate limit for ``model``: one limit for all when ``account_rps`` is
    set, else the catalogue's per-model limit (unless limits are off)."""
    now = time.monotonic()
    if state.limiter is not None:
        return state.limiter.allow(now)
    if not state.account_limits:
        return True
    limiter = state.model_limiters.get(model)
    if limiter is None:
        spec = state.config.models[model]
        limiter = AccountRateLimiter(spec.requests_per_second, burst=max(1.0, spec.rate), now=now)
        state.model_limiters[model] = limiter
    return limiter.allow(now)


async def _generate(
    request: web.Request, state: EmulatorState, call: _Call, request_id: str
) -> web.Response:
    config = state.config
    _check_key(request, config)
    try:
        body = await request.json()
    except web.HTTPRequestEntityTooLarge:
        raise _ApiError(413, "BadRequest.TooLarge", "Payload Too Large") from None
    except ValueError:
        raise _invalid("The request body is not valid JSON.") from None
    parsed = _parse_call(body, config)
    call.model(parsed.model)

    account = state.account_errors.get(parsed.model) or state.account_errors.get("*")
    if account is not None:
        spec = ACCOUNT_ERRORS[account]
        raise _ApiError(spec.status, spec.code, spec.message)
    if not _allowed(state, parsed.model):
        spec = ERRORS[Fault.THROTTLE_RATE]
        raise _ApiError(spec.status, spec.code, spec.message)
    decision: Decision = decide(state.faults, state.rng)
    if decision.fault in (Fault.THROTTLE_RATE, Fault.THROTTLE_BURST, Fault.QUOTA_EXCEEDED):
        spec = ERRORS[decision.fault]
        raise _ApiError(spec.status, spec.code, spec.message)
    # The drawn latency is the call's whole service time, as a client sees it from
    # the real service: the emulator's own image work counts towards it.
    service_started = time.monotonic()
    if decision.latency > 0:
        state.stats.latencies.append(decision.latency)
    if decision.fault in (Fault.DROP, Fault.INTERNAL_ERROR, Fault.REQUEST_TIMEOUT, Fault.UNAVAILABLE):
        await asyncio.sleep(decision.latency)
    if decision.fault is Fault.DROP:
        _drop(request)
    if decision.fault in (Fault.INTERNAL_ERROR, Fault.REQUEST_TIMEOUT, Fault.UNAVAILABLE):
        spec = ERRORS[decision.fault]
        raise _ApiError(spec.status, spec.code, spec.message)

    sources = [await _load_image(state, image) for image in parsed.images]
    outputs: list[edits.EditedImage] = []
    try:
        for index in range(parsed.n):
            seed = None if parsed.seed is None else (parsed.seed + index) % 2_147_483_648
            outputs.append(
                await asyncio.to_thread(
                    edits.edit_image_bytes,
                    sources,
                    parsed.prompt,
                    seed=seed,
                    watermark=parsed.watermark,
                    size=parsed.size,
                    max_pixels=config.max_pixels,
                    min_side=config.min_side,
                    max_side=config.max_side,
                    output=index,
                    default_pixels=DEFAULT_OUTPUT_PIXELS if config.output_size == "1mp" else None,
                )
            )
    except edits.ImageTooBig as exc:
        raise _invalid(str(exc)) from None
    except edits.ImageDecodeError:
        raise _invalid(
            "The image format is not supported or the image data is corrupted; supported "
            "formats: JPEG, PNG, BMP, TIFF, WEBP, GIF."
        ) from None
    remaining = decision.latency - (time.monotonic() - service_started)
    if remaining > 0:
        await asyncio.sleep(remaining)
    if decision.fault is Fault.INSPECTION_FAILED:
        spec = ERRORS[Fault.INSPECTION_FAILED]
        raise _ApiError(spec.status, spec.code, spec.message)

    expires = int(time.time() + state.result_ttl)
    base = _result_base(request, config)
    content = []
    for output in outputs:
        result_id = state.results.put(output.png, expires_at=float(expires))
        signature = _signature(state.secret, result_id, expires)
        content.append(
            {"image": f"{base}/results/{result_id}.png?Expires={expires}&Signature={signature}"}
        )
    first = outputs[0]
    return web.json_response(
        {
            "output": {
                "choices": [
                    {
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ]
            },
            "usage": {"width": first.width, "height": first.height, "image_count": len(outputs)},
            "request_id": request_id,
        },
        headers={"X-Request-Id": request_id},
    )


_RESULT_NAME = re.compile(r"([0-9a-f]{32})\.png")


async def get_result(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    request_id = uuid.uuid4().hex.upper()[:24]
    match = _RESULT_NAME.fullmatch(request.match_info["name"])
    expires_text = request.query.get("Expires", "")
    signature = request.query.get("Signature", "")
    if not match or not expires_text.isdigit() or not signature:
        state.stats.results_denied += 1
        return _oss_error(
            403,
            "AccessDenied",
            "You have no right to access this object because of bucket acl.",
            request_id,
        )
    result_id, expires = match[1], int(expires_text)
    if not hmac.compare_digest(signature, _signature(state.secret, result_id, expires)):
        state.stats.results_denied += 1
        return _oss_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method.",
            request_id,
        )
    now = time.time()
    if now >= expires:
        state.stats.results_denied += 1
        return _oss_error(
            403,
            "AccessDenied",
            "Request has expired.",
            request_id,
            Expires=datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            ServerTime=datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        )
    png = state.results.get(result_id)
    if png is None:
        return _oss_error(404, "NoSuchKey", "The specified key does not exist.", request_id)
    state.stats.results_served += 1
    return web.Response(
        body=png,
        content_type="image/png",
        headers={"x-oss-request-id": request_id, "Cache-Control": "private"},
    )


async def get_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({**state.stats.to_json(), "results_stored": len(state.results)})


async def get_latencies(request: web.Request) -> web.Response:
    """Injected latencies since the last reset, in the order calls drew them, and the
    wall-clock ``[started, finished]`` of every finished call."""
    state = request.app[STATE]
    return web.json_response(
        {"latencies_s": list(state.stats.latencies), "calls": [list(c) for c in state.stats.timeline]}
    )


async def post_reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.stats.reset()
    return web.json_response(state.stats.to_json())


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].settings_json())


async def post_config(request: web.Request) -> web.Response:
    """Change faults at runtime. Besides the :class:`FaultConfig` fields, accepts
    ``account_rps`` (number or null), ``result_ttl`` (seconds) and ``seed`` (reseeds)."""
    state = request.app[STATE]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise FaultConfigError("body must be a JSON object")
        changes = dict(body)
        rps = changes.pop("account_rps", ...)
        ttl = changes.pop("result_ttl", ...)
        seed = changes.pop("seed", ...)
        account = changes.pop("account_error", ...)
        limits = changes.pop("account_limits", ...)
        if limits is not ... and not isinstance(limits, bool):
            raise FaultConfigError("account_limits must be true or false")
        account_errors = state.account_errors
        if account is not ...:
            account_errors = _account_errors(account)
        faults = state.faults.updated(changes)
        limiter = state.limiter
        if rps is not ...:
            limiter = None if rps is None else AccountRateLimiter(float(rps), now=time.monotonic())
        if ttl is not ... and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise FaultConfigError("result_ttl must be a number of seconds")
        if seed is not ... and seed is not None and not isinstance(seed, int):
            raise FaultConfigError("seed must be an integer or null")
    except (ValueError, TypeError) as exc:
        return web.json_response(
            {"error": {"code": "invalid_config", "message": str(exc)}}, status=400
        )
    state.faults = faults
    state.limiter = limiter
    state.account_errors = account_errors
    if limits is not ...:
        state.account_limits = limits
        state.model_limiters.clear()
    if ttl is not ...:
        state.result_ttl = float(ttl)
    if seed is not ...:
        state.rng.seed(seed)
    return web.json_response(state.settings_json())


def _account_errors(value: Any) -> dict[str, str]:
    """``account_error``: null (none), a name (every model) or ``{model: name|null}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = {"*": value}
    if not isinstance(value, dict):
        raise FaultConfigError("account_error must be null, a name or {model: name}")
    out = {}
    for model, name in value.items():
        if name is None:
            continue
        if name not in ACCOUNT_ERRORS:
            raise FaultConfigError(f"account_error {name!r}: expected one of {sorted(ACCOUNT_ERRORS)}")
        out[str(model)] = name
    return out


# --------------------------------------------------------------------------- app


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=state.config.fetch_timeout),
        headers={"User-Agent": "imagestream-dashscope-emulator"},
    ) as session:
        state.http = session
        yield
        state.http = None


async def _sweep_results(app: web.Application) -> AsyncIterator[None]:
    """Background task: forget results whose URLs have expired, once a minute."""
    state = app[STATE]

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(60.0)
            state.results.sweep(time.time())

    task = asyncio.create_task(sweep_forever(), name="emulator-result-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(config: EmulatorConfig | None = None) -> web.Application:
    """Build the emulator app. Its state is ``app[emulator.app.STATE]``."""
    config = config or EmulatorConfig()
    # Three 10 MiB images in base64 plus JSON overhead.
    app = web.Application(client_max_size=config.max_images * config.max_image_bytes * 2)
    app[STATE] = EmulatorState(
        config=config,
        faults=config.faults,
        result_ttl=config.result_ttl,
        rng=random.Random(config.seed),
        limiter=(
            AccountRateLimiter(config.account_rps, now=time.monotonic())
            if config.account_rps
            else None
        ),
        secret=config.signing_secret or secrets.token_bytes(32),
        account_limits=config.account_limits,
    )
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_sweep_results)
    app.router.add_post(GENERATION_PATH, generation)
    app.router.add_get("/results/{name}", get_result)
    app.router.add_get("/_emulator/stats", get_stats)
    app.router.add_get("/_emulator/latencies", get_latencies)
    app.router.add_post("/_emulator/reset", post_reset)
    app.router.add_get("/_emulator/config", get_config)
    app.router.add_post("/_emulator/config", post_config)
    return app


class SafeAccessLogger(AbstractAccessLogger):
    """Access log without query strings (result URL signatures) or headers (API keys)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s %.1fms", request.method, request.path, response.status, time * 1000
        )


@contextlib.asynccontextmanager
async def running_emulator(
    config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Run an emulator on ``host`` (a free port by default); yields ``http://HOST:PORT``.

    The SDK's base URL is the yielded URL + ``/api/v1``.
    """
    runner = web.AppRunner(create_app(config), access_log_class=SafeAccessLogger)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
