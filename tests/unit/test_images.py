"""Safe image inspection: caps, bombs, truncation, formats, and the pixel-hash cost."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import pytest
from PIL import Image, ImageFile

from streams.errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from streams.image_edit.images import ImageInfo, inspect_image, inspect_image_in_thread
from streams.image_edit.keys import image_sha256

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000


def _inspect(data: bytes, **kw: int) -> ImageInfo:
    return inspect_image(data, max_bytes=kw.get("max_bytes", MAX_BYTES), max_pixels=kw.get("max_pixels", MAX_PIXELS))


def _encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _noise(size: tuple[int, int] = (120, 80)) -> Image.Image:
    return Image.merge("RGB", [Image.effect_noise(size, 60 + 10 * i).convert("L") for i in range(3)])


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(width: int, height: int, color_type: int = 0) -> bytes:
    """A valid-headed PNG claiming ``width x height`` with a tiny IDAT.

    ``color_type`` 0 is 1-bit greyscale, 6 is 8-bit RGBA (bit depth set to match).
    """
    depth = 1 if color_type == 0 else 8
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --- accepted formats -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "mime", "save"),
    [
        ("JPEG", "image/jpeg", {"quality": 90}),
        ("PNG", "image/png", {}),
        ("BMP", "image/bmp", {}),
        ("TIFF", "image/tiff", {}),
        ("WEBP", "image/webp", {"lossless": True}),
    ],
)
def test_accepted_formats_are_described(fmt: str, mime: str, save: dict[str, object]) -> None:
    data = _encode(_noise(), fmt, **save)
    info = _inspect(data)
    assert (info.format, info.mime, info.width, info.height, info.n_frames) == (fmt, mime, 120, 80, 1)
    assert info.sha256 == image_sha256(data)
    assert info.size_bytes == len(data)
    assert len(info.pixel_hash) == 64 and info.identity == info.pixel_hash


def test_same_pixels_in_two_formats_share_identity_not_sha() -> None:
    img = _noise()
    png, bmp = _inspect(_encode(img, "PNG")), _inspect(_encode(img, "BMP"))
    assert png.sha256 != bmp.sha256
    assert png.identity == bmp.identity


def test_gif_is_accepted_and_described_by_first_frame() -> None:
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    blue = Image.new("RGB", (40, 30), (0, 0, 255))
    gif = _encode(red, "GIF", save_all=True, append_images=[blue, red])
    info = _inspect(gif)
    assert (info.format, info.mime, info.n_frames, info.width, info.height) == ("GIF", "image/gif", 3, 40, 30)
    first_only = _inspect(_encode(red, "GIF"))
    assert info.pixel_hash == first_only.pixel_hash
    assert info.pixel_hash != _inspect(_encode(blue, "GIF")).pixel_hash


# --- refused --------------------------------------------------------------------------
def test_ico_is_unsupported() -> None:
    ico = _encode(Image.new("RGB", (32, 32), "red"), "ICO")
    with pytest.raises(UnsupportedFormat, match="ICO") as err:
        _inspect(ico)
    assert err.value.code == "unsupported_format"


def test_other_decodable_formats_are_unsupported() -> None:
    for fmt in ("PPM", "TGA", "PCX"):
        with pytest.raises(UnsupportedFormat):
            _inspect(_encode(_noise(), fmt))


def test_text_file_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormat):
        _inspect(b"hello, this is not an image at all\n" * 10)


def test_empty_bytes_are_invalid() -> None:
    with pytest.raises(InvalidImage, match="empty"):
        _inspect(b"")


def test_bytes_over_cap_are_too_large() -> None:
    data = _encode(_noise(), "PNG")
    with pytest.raises(ImageTooLarge) as err:
        _inspect(data, max_bytes=len(data) - 1)
    assert err.value.status == 413
    assert _inspect(data, max_bytes=len(data)).width == 120


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_png_is_invalid(fraction: float) -> None:
    data = _encode(_noise((300, 200)), "PNG")
    with pytest.raises(InvalidImage):
        _inspect(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_jpeg_is_invalid(cut: float) -> None:
    data = _encode(_noise((300, 200)), "JPEG", quality=90)
    with pytest.raises(InvalidImage):
        _inspect(data[: int(len(data) * cut)])


def test_header_only_fragments_are_invalid_not_unsupported() -> None:
    png = _encode(_noise(), "PNG")
    with pytest.raises(InvalidImage):
        _inspect(png[:20])
    with pytest.raises(InvalidImage):
        _inspect(b"\x89PNG\r\n\x1a\n")


def test_corrupt_png_crc_in_data_is_invalid() -> None:
    data = bytearray(_encode(_noise((300, 200)), "PNG"))
    idat = data.index(b"IDAT")
    for i in range(idat + 40, idat + 400):
        data[i] ^= 0xFF
    with pytest.raises(InvalidImage):
        _inspect(bytes(data))


# --- decompression bombs --------------------------------------------------------------
@pytest.mark.parametrize(("side", "color_type"), [(30000, 0), (7000, 6)])
def test_decompression_bomb_refused_fast_without_allocation(
    side: int, color_type: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30000² is over Pillow's own guard; 7000² RGBA (49 M px, 196 MB) only over ours (40 M).

    Pillow's pixel buffers are malloc'd outside tracemalloc's view, so the proof that
    nothing was decoded is a spy on ``ImageFile.load`` plus the tracemalloc peak for
    the Python side.
    """
    bomb = _bomb_png(side, side, color_type)
    assert len(bomb) < 200
    loads: list[object] = []
    original_load = ImageFile.ImageFile.load

    def spy(self: ImageFile.ImageFile) -> object:
        loads.append(self)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLarge, match="pixels|bomb"):
            _inspect(bomb)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loads == []  # refused from the header: no decode was even started
    # Decoding 400 MP would take many seconds; a header read takes milliseconds.  The
    # bound is loose for a loaded machine; the figure is in the message.
    assert elapsed < 2.0, f"refusing the bomb took {elapsed:.3f}s"
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"
    # the spy does see a normal decode, so the empty list above means something
    _inspect(_encode(_noise(), "PNG"))
    assert loads


def test_pixel_cap_is_exact() -> None:
    data = _encode(Image.new("L", (100, 50)), "PNG")
    assert _inspect(data, max_pixels=5000).pixels == 5000
    with pytest.raises(ImageTooLarge):
        _inspect(data, max_pixels=4999)


async def test_inspect_in_thread() -> None:
    data = _encode(_noise(), "PNG")
    info = await inspect_image_in_thread(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert info == _inspect(data)


# --- cost -----------------------------------------------------------------------------
def test_pixel_hash_cost_2048_photo(capsys: pytest.CaptureFixture[str]) -> None:
    """Measure inspect (decode + pixel hash) of a 2048x2048 photo-like JPEG; print it."""
    from streams.image_edit.keys import pixel_hash

    gradient = Image.linear_gradient("L").resize((2048, 2048))
    photo = Image.merge("RGB", [gradient, Image.effect_noise((2048, 2048), 30).convert("L"), gradient.rotate(90)])
    data = _encode(photo, "JPEG", quality=90)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    runs = 3
    started = time.perf_counter()
    for _ in range(runs):
        pixel_hash(decoded)
    hash_ms = (time.perf_counter() - started) / runs * 1000
    started = time.perf_counter()
    _inspect(data)
    inspect_ms = (time.perf_counter() - started) * 1000
    with capsys.disabled():
        print(f"\n[pixel_hash 2048x2048 RGB: {hash_ms:.1f} ms; full inspect_image of {len(data)} B JPEG: {inspect_ms:.1f} ms]")
    assert hash_ms < 2000


def test_mpo_travels_as_jpeg() -> None:
    red = Image.new("RGB", (64, 48), "red")
    mpo = _encode(red, "MPO", save_all=True, append_images=[Image.new("RGB", (64, 48), "blue")])
    info = _inspect(mpo)
    assert (info.format, info.mime, info.n_frames) == ("MPO", "image/jpeg", 2)


def test_animated_webp_is_described_by_first_frame() -> None:
    red, blue = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")
    animated = _inspect(_encode(red, "WEBP", save_all=True, append_images=[blue], lossless=True))
    assert animated.n_frames == 2
    assert animated.pixel_hash == _inspect(_encode(red, "PNG")).pixel_hash
