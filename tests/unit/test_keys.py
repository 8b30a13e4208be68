"""Cache keys: prompt normalisation, canonical params, hashing, key composition."""

from __future__ import annotations

import re

import io

import pytest
from PIL import Image

from streams.image_edit.keys import (
    KEY_VERSION,
    cache_key,
    canonical_params,
    image_sha256,
    normalize_prompt,
    pixel_hash,
)


# --- normalize_prompt -----------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        "提升画质 增强细节",
        "  提升画质 增强细节  ",
        "提升画质\t增强细节",
        "提升画质\r\n增强细节",
        "提升画质\n\n\n增强细节\n",
        "提升画质\u3000增强细节",  # full-width (ideographic) space
        "提升画质\u00a0增强细节",  # NBSP
        "提升画质\u2003\u2009增强细节",  # em space + thin space
        "提升画质\u2028增强细节",  # line separator
        "\ufeff提升画质 增强\u200b细节",  # BOM, zero-width space removed
    ],
)
def test_normalize_prompt_folds_whitespace_variants(raw: str) -> None:
    assert normalize_prompt(raw) == "提升画质 增强细节"


def test_normalize_prompt_nfkc_folds_fullwidth_forms() -> None:
    assert normalize_prompt("ＡＢＣ１２３，ok") == "ABC123,ok"
    # composed and decomposed é are one prompt
    assert normalize_prompt("caf\u00e9") == normalize_prompt("cafe\u0301")


def test_normalize_prompt_keeps_case_and_joiners() -> None:
    assert normalize_prompt("Red") != normalize_prompt("red")
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert normalize_prompt(family) == family  # ZWJ kept: it changes the emoji


def test_normalize_prompt_is_idempotent_and_empty_safe() -> None:
    once = normalize_prompt(" a \t b\u3000")
    assert normalize_prompt(once) == once == "a b"
    assert normalize_prompt(" \t\u3000\n") == ""


# --- canonical_params -----------------------------------------------------------------
def test_canonical_params_ignores_key_order() -> None:
    a = canonical_params({"seed": 1, "watermark": False, "size": "1024*1024"})
    b = canonical_params({"size": "1024*1024", "watermark": False, "seed": 1})
    assert a == b == '{"seed":1,"size":"1024*1024","watermark":false}'


def test_canonical_params_drops_none_and_bookkeeping() -> None:
    assert canonical_params({"seed": None, "client_ref": "r1", "callback_url": "http://x"}) == "{}"
    assert canonical_params({"prompt": "ignored here, keyed separately"}) == "{}"


def test_canonical_params_normalises_negative_prompt() -> None:
    assert canonical_params({"negative_prompt": " blurry\u3000 text "}) == canonical_params(
        {"negative_prompt": "blurry text"}
    )
    assert canonical_params({"negative_prompt": " \t"}) == "{}"


def test_canonical_params_keeps_unknown_params_canonically() -> None:
    a = canonical_params({"strength": 0.7, "extra": {"b": 1, "a": [1, 2]}})
    b = canonical_params({"extra": {"a": [1, 2], "b": 1}, "strength": 0.7})
    assert a == b
    assert '"strength":0.7' in a
    assert canonical_params({"strength": 0.7}) != canonical_params({"strength": 0.8})


def test_canonical_params_distinguishes_types() -> None:
    assert canonical_params({"watermark": True}) != canonical_params({"watermark": 1})


def test_canonical_params_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_params({"strength": float("nan")})


# --- cache_key ------------------------------------------------------------------------
def _key(**overrides: object) -> str:
    args: dict[str, object] = {
        "model": "qwen-image-edit",
        "edit_type": "enhance",
        "image_identity": "a" * 64,
        "prompt": "提升画质 增强细节",
        "params": {"seed": 1},
    }
    args.update(overrides)
    return cache_key(**args)  # type: ignore[arg-type]


def test_cache_key_is_hex_sha256_and_stable() -> None:
    key = _key()
    assert re.fullmatch(r"[0-9a-f]{64}", key), key
    assert key == _key()
    assert key != _key(prompt="another prompt")  # the inputs matter


def test_cache_key_ignores_prompt_whitespace_and_param_order() -> None:
    assert _key(prompt="  提升画质\u3000\t增强细节\n") == _key()
    assert _key(params={"seed": 1, "client_ref": "x", "n": None}) == _key()
    assert _key(params={"watermark": False, "seed": 1}) == _key(params={"seed": 1, "watermark": False})


@pytest.mark.parametrize(
    "change",
    [
        {"model": "qwen-image-edit-plus"},
        {"edit_type": "colorize"},
        {"image_identity": "b" * 64},
        {"prompt": "提升画质"},
        {"params": {"seed": 2}},
        {"params": {"seed": 1, "watermark": True}},
        {"params": {"seed": 1, "negative_prompt": "blur"}},
        {"params": {"seed": 1, "prompt_extend": False}},
        {"params": {"seed": 1, "size": "1024*1024"}},
        {"params": {"seed": 1, "n": 2}},
        {"version": KEY_VERSION + "x"},
    ],
)
def test_cache_key_changes_with_every_output_affecting_field(change: dict[str, object]) -> None:
    assert _key(**change) != _key()


def test_cache_key_fields_cannot_leak_into_each_other() -> None:
    # With a naive "a|b" join these two would produce the same preimage.
    a = _key(edit_type="enhance|x", prompt="y")
    b = _key(edit_type="enhance", prompt="x|y")
    assert a != b
    assert _key(model="m|", edit_type="e") != _key(model="m", edit_type="|e")


# --- hashing --------------------------------------------------------------------------
def test_image_sha256_is_plain_sha256_of_bytes() -> None:
    assert image_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert image_sha256(b"abc") != image_sha256(b"abd")


def _photo(size: tuple[int, int] = (64, 48)) -> Image.Image:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    return Image.merge("RGB", (img.getchannel(0), Image.effect_noise(size, 40).convert("L"), img.getchannel(0)))


def _reopen(img: Image.Image, fmt: str, **save: object) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def test_pixel_hash_survives_reencoding_and_metadata_stripping() -> None:
    img = _photo()
    base = pixel_hash(img)
    assert pixel_hash(_reopen(img, "PNG", compress_level=1)) == base
    assert pixel_hash(_reopen(img, "PNG", compress_level=9, optimize=True)) == base
    assert pixel_hash(_reopen(img, "BMP")) == base
    assert pixel_hash(_reopen(img, "WEBP", lossless=True)) == base
    assert pixel_hash(img.convert("RGBA")) == base  # opaque alpha is the same picture


def test_pixel_hash_jpeg_to_lossless_png_hits() -> None:
    jpeg = _reopen(_photo(), "JPEG", quality=80)
    png = _reopen(jpeg, "PNG")
    assert pixel_hash(png) == pixel_hash(jpeg)


def test_pixel_hash_sees_pixel_and_size_changes() -> None:
    img = _photo()
    changed = img.copy()
    changed.putpixel((0, 0), (1, 2, 3))
    assert pixel_hash(changed) != pixel_hash(img)
    # same bytes, different shape
    flat = Image.frombytes("RGB", (48, 64), img.tobytes())
    assert pixel_hash(flat) != pixel_hash(img)


def test_pixel_hash_includes_exif_orientation_not_transposed() -> None:
    img = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_tag = _reopen(img, "JPEG", quality=95, exif=exif.tobytes())
    plain = _reopen(img, "JPEG", quality=95)
    assert rotated_tag.tobytes() == plain.tobytes()  # identical raw pixels...
    assert pixel_hash(rotated_tag) != pixel_hash(plain)  # ...but not the same picture upstream
    exif[0x0112] = 1
    upright_tag = _reopen(img, "JPEG", quality=95, exif=exif.tobytes())
    assert pixel_hash(upright_tag) == pixel_hash(plain)  # orientation 1 == no tag


def test_pixel_hash_high_depth_is_not_merged_by_rgba() -> None:
    a = Image.new("I;16", (4, 4), 1000)
    b = Image.new("I;16", (4, 4), 1001)
    assert pixel_hash(a) != pixel_hash(b)


def test_pixel_hash_palette_and_grey_match_their_rgb_twins() -> None:
    grey = Image.linear_gradient("L").resize((32, 32))
    assert pixel_hash(grey) == pixel_hash(grey.convert("RGB"))
    pal = _photo().quantize(16)
    assert pixel_hash(pal) == pixel_hash(pal.convert("RGB"))


def test_pixel_hash_transparency_matters() -> None:
    img = _photo().convert("RGBA")
    clear = img.copy()
    clear.putalpha(0)
    assert pixel_hash(clear) != pixel_hash(img)
    half = img.copy()
    half.putpixel((3, 3), (*img.getpixel((3, 3))[:3], 128))
    assert pixel_hash(half) != pixel_hash(img)
    # a palette image with a transparent index is not its opaque twin
    pal = _photo().quantize(8)
    transparent = pal.copy()
    transparent.info["transparency"] = pal.getpixel((0, 0))
    assert pixel_hash(transparent) != pixel_hash(pal)
