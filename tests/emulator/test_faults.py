"""Pure tests of the emulator's fault injection and edits (seeded RNG, no sockets)."""

from __future__ import annotations

import io
import random
import statistics
from collections import Counter

import pytest
from PIL import Image

from emulator import edits
from emulator.faults import (
    ERRORS,
    AccountRateLimiter,
    Decision,
    Fault,
    FaultConfig,
    FaultConfigError,
    Latency,
    decide,
)

# --------------------------------------------------------------------------- latency


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", Latency()),
        ("0", Latency()),
        ("fixed:0.5", Latency(kind="fixed", seconds=0.5)),
        ("0.25", Latency(kind="fixed", seconds=0.25)),
        ("lognormal:0.8,0.6", Latency(kind="lognormal", seconds=0.8, sigma=0.6)),
        (" LogNormal:1,0 ", Latency(kind="lognormal", seconds=1.0, sigma=0.0)),
    ],
)
def test_latency_parse(text: str, expected: Latency) -> None:
    assert Latency.parse(text) == expected


@pytest.mark.parametrize("text", ["fixed:", "fixed:-1", "lognormal:0,1", "gamma:1", "fast", "lognormal:1,-2"])
def test_latency_parse_rejects(text: str) -> None:
    with pytest.raises(FaultConfigError):
        Latency.parse(text)


def test_latency_str_round_trips() -> None:
    for text in ("none", "fixed:0.5", "lognormal:0.8,0.6"):
        assert str(Latency.parse(text)) == text


def test_fixed_latency_draws_nothing() -> None:
    rng = random.Random(1)
    state = rng.getstate()
    assert Latency(kind="fixed", seconds=0.3).sample(rng) == 0.3
    assert rng.getstate() == state


def test_lognormal_median_and_tail() -> None:
    rng = random.Random(42)
    latency = Latency(kind="lognormal", seconds=0.5, sigma=0.8)
    draws = [latency.sample(rng) for _ in range(4001)]
    assert statistics.median(draws) == pytest.approx(0.5, rel=0.1)
    assert max(draws) > 4 * 0.5  # heavy tail
    assert min(draws) > 0


def test_latency_is_capped() -> None:
    latency = Latency(kind="lognormal", seconds=10.0, sigma=3.0, cap=12.0)
    rng = random.Random(3)
    assert max(latency.sample(rng) for _ in range(500)) <= 12.0


# --------------------------------------------------------------------------- decide


def test_no_faults_by_default() -> None:
    rng = random.Random(0)
    config = FaultConfig(latency=Latency(kind="fixed", seconds=0.1))
    decisions = [decide(config, rng) for _ in range(200)]
    assert all(d.fault is None and d.latency == 0.1 for d in decisions)


def test_same_seed_same_sequence() -> None:
    config = FaultConfig(
        latency=Latency.parse("lognormal:0.2,0.5"), rate_429=0.2, rate_500=0.1, rate_drop=0.05
    )
    rng_a, rng_b = random.Random(7), random.Random(7)
    seq_a = [decide(config, rng_a) for _ in range(300)]
    seq_b = [decide(config, rng_b) for _ in range(300)]
    assert seq_a == seq_b
    assert len(set(seq_a)) > 1


def test_rates_are_respected() -> None:
    config = FaultConfig(rate_drop=0.1, rate_429=0.2, rate_500=0.3, rate_inspection=0.1)
    rng = random.Random(2024)
    n = 20_000
    counts = Counter(decide(config, rng).fault for _ in range(n))
    throttles = counts[Fault.THROTTLE_RATE] + counts[Fault.THROTTLE_BURST] + counts[Fault.QUOTA_EXCEEDED]
    assert counts[Fault.DROP] / n == pytest.approx(0.1, abs=0.01)
    assert throttles / n == pytest.approx(0.2, abs=0.01)
    assert counts[Fault.INTERNAL_ERROR] / n == pytest.approx(0.3, abs=0.01)
    assert counts[Fault.INSPECTION_FAILED] / n == pytest.approx(0.1, abs=0.01)
    assert counts[None] / n == pytest.approx(0.3, abs=0.01)


def test_429_messages_follow_weights_default_mostly_rate_limit() -> None:
    rng = random.Random(5)
    config = FaultConfig(rate_429=1.0)
    counts = Counter(decide(config, rng).fault for _ in range(10_000))
    assert counts[Fault.THROTTLE_RATE] / 10_000 == pytest.approx(0.85, abs=0.02)
    assert counts[Fault.THROTTLE_BURST] / 10_000 == pytest.approx(0.10, abs=0.02)
    assert counts[Fault.QUOTA_EXCEEDED] / 10_000 == pytest.approx(0.05, abs=0.01)


@pytest.mark.parametrize(
    ("weights", "fault"),
    [
        ((1, 0, 0), Fault.THROTTLE_RATE),
        ((0, 1, 0), Fault.THROTTLE_BURST),
        ((0, 0, 1), Fault.QUOTA_EXCEEDED),
    ],
)
def test_429_weights_can_force_one_message(weights: tuple[float, float, float], fault: Fault) -> None:
    rng = random.Random(9)
    config = FaultConfig(rate_429=1.0, weights_429=weights, latency=Latency.parse("fixed:1"))
    decisions = {decide(config, rng) for _ in range(50)}
    # Throttling answers at once, whatever the latency setting.
    assert decisions == {Decision(fault, 0.0)}


def test_error_bodies_are_the_documented_ones() -> None:
    assert ERRORS[Fault.THROTTLE_RATE].status == 429
    assert ERRORS[Fault.THROTTLE_RATE].message.startswith("Requests rate limit exceeded")
    assert "increased too quickly" in ERRORS[Fault.THROTTLE_BURST].message
    assert ERRORS[Fault.QUOTA_EXCEEDED].message.startswith("Allocated quota exceeded")
    assert (ERRORS[Fault.INTERNAL_ERROR].status, ERRORS[Fault.INTERNAL_ERROR].code) == (500, "InternalError")
    assert (ERRORS[Fault.INSPECTION_FAILED].status, ERRORS[Fault.INSPECTION_FAILED].code) == (
        400,
        "DataInspectionFailed",
    )
    assert Fault.DROP not in ERRORS  # no body at all


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate_429": 1.5},
        {"rate_500": -0.1},
        {"rate_429": 0.6, "rate_500": 0.6},
        {"weights_429": (0, 0, 0)},
        {"weights_429": (1, -1, 0)},
    ],
)
def test_fault_config_validation(kwargs: dict) -> None:
    with pytest.raises(FaultConfigError):
        FaultConfig(**kwargs)


def test_fault_config_updated_from_json() -> None:
    config = FaultConfig().updated(
        {"latency": "fixed:0.2", "rate_429": 1, "weights_429": {"rate": 0, "burst": 1}}
    )
    assert config.latency == Latency(kind="fixed", seconds=0.2)
    assert config.rate_429 == 1.0
    assert config.weights_429 == (0.0, 1.0, 0.0)
    again = config.updated({"latency": {"kind": "lognormal", "median": 0.3, "sigma": 0.4}})
    assert again.latency == Latency(kind="lognormal", seconds=0.3, sigma=0.4)
    assert again.rate_429 == 1.0
    assert FaultConfig().updated({"weights_429": [1, 2, 3]}).weights_429 == (1.0, 2.0, 3.0)


@pytest.mark.parametrize(
    "changes",
    [{"rate_42": 1}, {"rate_429": "lots"}, {"rate_429": True}, {"latency": [1]}, {"rate_500": 2}],
)
def test_fault_config_updated_rejects(changes: dict) -> None:
    with pytest.raises(FaultConfigError):
        FaultConfig().updated(changes)


def test_to_json_round_trip() -> None:
    config = FaultConfig(latency=Latency.parse("lognormal:0.5,0.3"), rate_drop=0.05, weights_429=(1, 2, 3))
    assert FaultConfig().updated(config.to_json()) == config


# --------------------------------------------------------------------------- rate limiter


def test_account_rate_limiter_token_bucket() -> None:
    limiter = AccountRateLimiter(2.0, now=100.0)
    assert [limiter.allow(100.0), limiter.allow(100.0), limiter.allow(100.0)] == [True, True, False]
    assert limiter.allow(100.4) is False  # 0.8 of a token
    assert limiter.allow(100.5) is True  # refilled to 1
    assert limiter.allow(100.5) is False
    assert [limiter.allow(110.0) for _ in range(3)] == [True, True, False]  # burst is capped


def test_account_rate_limiter_sub_one_rps() -> None:
    limiter = AccountRateLimiter(0.5, now=0.0)
    assert limiter.allow(0.0) is True
    assert limiter.allow(1.0) is False
    assert limiter.allow(2.0) is True


def test_account_rate_limiter_ignores_clock_going_back() -> None:
    limiter = AccountRateLimiter(1.0, now=10.0)
    assert limiter.allow(10.0)
    assert not limiter.allow(5.0)
    assert limiter.allow(11.0)


@pytest.mark.parametrize("rps", [0, -1, float("nan"), float("inf")])
def test_account_rate_limiter_rejects_bad_rps(rps: float) -> None:
    with pytest.raises(FaultConfigError):
        AccountRateLimiter(rps)


# --------------------------------------------------------------------------- edits


@pytest.mark.parametrize(
    ("prompt", "edit"),
    [
        ("Make it GRAYSCALE please", "grayscale"),
        ("把图片变成黑白", "grayscale"),
        ("blur the background", "blur"),
        ("背景模糊", "blur"),
        ("invert the colours", "invert"),
        ("sharpen the details", "sharpen"),
        ("提升画质", "enhance"),
        ("增强细节", "enhance"),
        ("add a hat to the cat", "enhance"),
    ],
)
def test_choose_edit(prompt: str, edit: str) -> None:
    assert edits.choose_edit(prompt) == edit


def _png(size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size)
    image.putdata(
        [
            (x * 6 % 256, y * 8 % 256, (x * y) % 256, 200)[: len(mode)]
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _pixels(png: bytes) -> list[tuple[int, ...]]:
    with Image.open(io.BytesIO(png)) as image:
        return list(image.get_flattened_data())


def test_edits_are_deterministic_and_seed_sensitive() -> None:
    source = _png()
    a = edits.edit_image_bytes([source], "blur it", seed=1)
    b = edits.edit_image_bytes([source], "blur it", seed=1)
    c = edits.edit_image_bytes([source], "blur it", seed=2)
    assert a.png == b.png
    assert a.png != c.png
    assert (a.width, a.height, a.edit) == (40, 30, "blur")


def test_grayscale_and_invert_are_exact() -> None:
    source = _png()
    gray = _pixels(edits.edit_image_bytes([source], "grayscale").png)
    assert all(r == g == b for r, g, b in gray)
    inverted = _pixels(edits.edit_image_bytes([source], "invert").png)
    assert inverted == [tuple(255 - v for v in px) for px in _pixels(source)]


def test_alpha_is_kept() -> None:
    out = edits.edit_image_bytes([_png(mode="RGBA")], "enhance")
    with Image.open(io.BytesIO(out.png)) as image:
        assert image.mode == "RGBA"
        assert image.getchannel("A").getextrema() == (200, 200)


def test_output_is_png_and_size_param_resizes() -> None:
    out = edits.edit_image_bytes([_png()], "sharpen", size=(64, 48))
    assert out.png.startswith(b"\x89PNG\r\n\x1a\n")
    assert (out.width, out.height) == (64, 48)


def test_watermark_changes_the_corner_only() -> None:
    source = _png((60, 60))
    plain = edits.edit_image_bytes([source], "invert")
    marked = edits.edit_image_bytes([source], "invert", watermark=True)
    p, m = _pixels(plain.png), _pixels(marked.png)
    assert p[0] == m[0] and p[-1] != m[-1]


def test_non_image_is_a_decode_error() -> None:
    with pytest.raises(edits.ImageDecodeError):
        edits.edit_image_bytes([b"definitely not an image"], "enhance")


def test_truncated_image_is_a_decode_error() -> None:
    with pytest.raises(edits.ImageDecodeError):
        edits.edit_image_bytes([_png()[:60]], "enhance")


def test_pixel_limit_checked_before_decoding() -> None:
    with pytest.raises(edits.ImageTooBig):
        edits.edit_image_bytes([_png((40, 30))], "enhance", max_pixels=1000)
    with pytest.raises(edits.ImageTooBig):
        edits.edit_image_bytes([_png((40, 30))], "enhance", min_side=384)
