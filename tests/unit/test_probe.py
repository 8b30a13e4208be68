"""The incremental header parser: every fixture, Pillow-made images, bad inputs."""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, features

from streams.dimensions.probe import HeaderParser, ProbeResult, is_truncated, probe_bytes
from streams.errors import InvalidImage, UnsupportedFormat

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "probe-image-size"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())


def parse_whole(data: bytes) -> tuple[ProbeResult, HeaderParser]:
    parser = HeaderParser()
    result = parser.feed(data)
    return (result if result is not None else parser.finish()), parser


def parse_chunked(data: bytes, size: int) -> tuple[ProbeResult, HeaderParser]:
    parser = HeaderParser()
    for start in range(0, len(data), size):
        result = parser.feed(data[start : start + size])
        if result is not None:
            return result, parser
    return parser.finish(), parser


def parse_both(data: bytes) -> tuple[ProbeResult, int]:
    """Whole, byte by byte and in 7-byte chunks: the same answer and prefix."""
    whole, parser = parse_whole(data)
    for size in (1, 7):
        chunked, other = parse_chunked(data, size)
        assert chunked == whole
        assert other.bytes_used == parser.bytes_used
    return whole, parser.bytes_used


# ----------------------------------------------------------------- manifest fixtures
#: Most bytes a fixture may need: the format's real prefix, far below the file size.
#: TIFF files keep IFD0 where the writer put it (near the end for iojs_logo*.tiff):
#: the parser skips to it without buffering and a fetcher seeks there (Range).
PREFIX_LIMIT = {
    "png": 24, "gif": 10, "bmp": 26, "jpeg": 256, "ico": 6 + 16 * 8, "psd": 22,
    "svg": 1024, "avif": 512, "heic": 4096, "heif": 1024, "webp": 30,
}
EXIF_WEBP = {"Exif5-1.5x.webp"}  # VP8X with the EXIF flag: EXIF chunk after the bitstream


def tiff_ifd0_end(data: bytes) -> int:
    """End offset of a TIFF's first directory (its entries, not the next-IFD link), read
    here independently of the parser."""
    order = "<" if data[:2] == b"II" else ">"
    if struct.unpack(order + "H", data[2:4])[0] == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        offset = struct.unpack(order + "Q", data[8:16])[0]
        return offset + 8 + 20 * struct.unpack(order + "Q", data[offset:offset + 8])[0]
    offset = struct.unpack(order + "I", data[4:8])[0]
    return offset + 2 + 12 * struct.unpack(order + "H", data[offset:offset + 2])[0]


def riff_chunk_end(data: bytes, fourcc: bytes) -> int:
    """End offset of the first ``fourcc`` chunk of a RIFF (WebP) file."""
    pos = 12
    while pos + 8 <= len(data):
        size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if data[pos:pos + 4] == fourcc:
            return pos + 8 + size
        pos += 8 + size + (size & 1)
    raise AssertionError(f"no {fourcc!r} chunk")


@pytest.mark.parametrize("name", sorted(MANIFEST["images"]))
def test_manifest_image(name: str) -> None:
    expected = MANIFEST["images"][name]
    data = (FIXTURES / name).read_bytes()
    result, used = parse_both(data)

    assert result.format == expected["type"]
    assert (result.raw_width, result.raw_height) == (round(expected["width"]), round(expected["height"]))
    assert result.orientation == expected.get("orientation", 1)
    assert result.mime.startswith("image/")
    assert 0 < used <= len(data)
    if result.format == "tiff":
        limit = tiff_ifd0_end(data)  # the directory is the header, wherever the writer put it
    elif name in EXIF_WEBP:
        limit = riff_chunk_end(data, b"EXIF")  # the orientation lives in that chunk
    else:
        limit = PREFIX_LIMIT[result.format]
    if result.format == "avif" and name.startswith("Exif5"):
        limit = 448  # no irot/imir: the Exif item (at 343..443) is read for the orientation
    assert used <= limit, f"{name}: needed {used} bytes of {len(data)}"


@pytest.mark.parametrize("name", MANIFEST["not_images"])
def test_manifest_not_image(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    with pytest.raises(UnsupportedFormat) as info:
        parse_whole(data)
    assert info.value.code == "unsupported_format"


def test_not_image_is_refused_from_the_first_bytes() -> None:
    parser = HeaderParser()
    with pytest.raises(UnsupportedFormat):
        parser.feed(b"th")  # no format starts with "t"
    assert parser.bytes_used <= 2


def test_tiff_with_ifd_at_end_can_be_reached_by_seek() -> None:
    data = (FIXTURES / "iojs_logo.tiff").read_bytes()
    parser = HeaderParser()
    assert parser.feed(data[:64]) is None
    target = parser.next_needed
    assert target > parser.position  # it wants IFD0, far ahead
    parser.seek(target)
    result = parser.feed(data[target:])
    assert result is not None and (result.width, result.height) == (367, 187)
    with pytest.raises(ValueError):
        HeaderParser().seek(10)


# ------------------------------------------------------------------- Pillow-made images
def pillow(fmt: str, size: tuple[int, int] = (300, 200), mode: str = "RGB", **params: object) -> bytes:
    image = Image.new(mode, size, "red")
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def exif_block(orientation: int, padding: int = 0, endian: str = ">") -> bytes:
    """APP1-style EXIF ("Exif\\0\\0" + TIFF), big-endian (MM) unless told."""
    exif = Image.Exif()
    exif.endian = endian
    exif[274] = orientation
    if padding:
        exif[0x010E] = "x" * padding  # ImageDescription, stored after IFD0
    return exif.tobytes()


SYNTHETIC: dict[str, tuple[Callable[[], bytes], tuple[str, int, int, int], int]] = {
    # name: (make, (format, display width, display height, orientation), max prefix)
    "png": (lambda: pillow("PNG"), ("png", 300, 200, 1), 24),
    "jpeg": (lambda: pillow("JPEG"), ("jpeg", 300, 200, 1), 256),
    "jpeg-progressive": (lambda: pillow("JPEG", progressive=True), ("jpeg", 300, 200, 1), 256),
    "jpeg-exif6": (lambda: pillow("JPEG", exif=exif_block(6)), ("jpeg", 200, 300, 6), 512),
    "jpeg-exif6-60k": (
        lambda: pillow("JPEG", exif=exif_block(6, 60_000)),
        ("jpeg", 200, 300, 6),
        61_000,
    ),
    "jpeg-exif8-le": (
        lambda: pillow("JPEG", exif=exif_block(8, endian="<")),
        ("jpeg", 200, 300, 8),
        512,
    ),
    "gif": (lambda: pillow("GIF"), ("gif", 300, 200, 1), 10),
    "bmp": (lambda: pillow("BMP"), ("bmp", 300, 200, 1), 26),
    "webp-lossy": (lambda: pillow("WEBP", quality=50), ("webp", 300, 200, 1), 30),
    "webp-lossless": (lambda: pillow("WEBP", lossless=True), ("webp", 300, 200, 1), 25),
    "webp-alpha": (lambda: pillow("WEBP", mode="RGBA"), ("webp", 300, 200, 1), 30),
    "webp-exif3": (lambda: pillow("WEBP", exif=exif_block(3)), ("webp", 300, 200, 3), 10_000),
    "tiff": (lambda: pillow("TIFF"), ("tiff", 300, 200, 1), 512),
    "tiff-orientation6": (lambda: pillow("TIFF", tiffinfo={274: 6}), ("tiff", 200, 300, 6), 512),
    "bigtiff": (lambda: pillow("TIFF", big_tiff=True), ("tiff", 300, 200, 1), 1024),
    "ico": (lambda: pillow("ICO", size=(64, 64), sizes=[(16, 16), (48, 48)]), ("ico", 48, 48, 1), 38),
}
if features.check("avif"):
    SYNTHETIC["avif-exif6"] = (
        lambda: pillow("AVIF", exif=exif_block(6)),  # Pillow turns it into irot/imir
        ("avif", 200, 300, 6),
        512,
    )


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_pillow_image(name: str) -> None:
    make, (fmt, width, height, orientation), limit = SYNTHETIC[name]
    data = make()
    result, used = parse_both(data)
    assert (result.format, result.width, result.height, result.orientation) == (fmt, width, height, orientation)
    assert used <= limit
    with Image.open(io.BytesIO(data)) as image:  # Pillow decodes the same size
        assert sorted(image.size) == sorted((result.raw_width, result.raw_height))


def tiff_ifd_at_end(width: int, height: int, order: str, orientation: int = 1) -> bytes:
    """An uncompressed greyscale TIFF whose only IFD follows the pixel data."""
    e = "<" if order == "II" else ">"
    pixels = bytes(range(256)) * (width * height // 256) + bytes(width * height % 256)
    ifd_offset = 8 + len(pixels)
    tags = [
        (256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
        (273, 4, 8), (274, 3, orientation), (277, 3, 1), (278, 4, height), (279, 4, len(pixels)),
    ]
    entries = b"".join(
        struct.pack(e + "HHI", tag, kind, 1)
        + (struct.pack(e + "HH", value, 0) if kind == 3 else struct.pack(e + "I", value))
        for tag, kind, value in tags
    )
    header = order.encode() + struct.pack(e + "HI", 42, ifd_offset)
    return header + pixels + struct.pack(e + "H", len(tags)) + entries + b"\0\0\0\0"


@pytest.mark.parametrize("order", ["II", "MM"])
def test_tiff_both_byte_orders_with_ifd_at_end(order: str) -> None:
    data = tiff_ifd_at_end(640, 480, order, orientation=8)
    with Image.open(io.BytesIO(data)) as image:  # a valid TIFF (Pillow applies 274 itself)
        assert sorted(image.size) == [480, 640]
    result, used = parse_both(data)
    assert (result.width, result.height, result.orientation) == (480, 640, 8)
    assert used == len(data) - 4  # IFD0 ends 4 bytes (next-IFD offset) before EOF
    parser = HeaderParser()
    parser.feed(data[:100])
    assert parser.next_needed == 8 + 640 * 480  # skipped, not buffered


def psd(width: int, height: int, version: int = 1) -> bytes:
    return b"8BPS" + struct.pack(">H6xHIIHH", version, 3, height, width, 8, 3) + b"\0" * 64


def bmp_core(width: int, height: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 26 + 3 * width * height, 0, 0, 26) + struct.pack("<IHHHH", 12, width, height, 1, 24)


def bmp_top_down(width: int, height: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHH", 40, width, -height, 1, 24) + b"\0" * 24


def cur(entries: list[tuple[int, int]]) -> bytes:
    head = struct.pack("<HHH", 0, 2, len(entries))
    return head + b"".join(struct.pack("<BBBBHHII", w, h, 0, 0, 1, 1, 40, 0) for w, h in entries)


HAND_BUILT = {
    "psd": (psd(640, 400), ("psd", 640, 400)),
    "psb": (psd(40_000, 30_000, version=2), ("psd", 40_000, 30_000)),
    "bmp-core": (bmp_core(367, 187), ("bmp", 367, 187)),
    "bmp-top-down": (bmp_top_down(120, 80), ("bmp", 120, 80)),
    "cur-256": (cur([(32, 32), (0, 0)]), ("cur", 256, 256)),
    "svg-viewbox": (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 120 60"><g/></svg>', ("svg", 120, 60)),
    "svg-px": (b"\xef\xbb\xbf\n<svg width='30px' height=\"20.4\">", ("svg", 30, 20)),
    "svg-percent": (b'<svg width="100%" height="50" viewBox="0,0,300,150">', ("svg", 100, 50)),
    "svg-prolog": (
        b'<?xml version="1.0"?>\n<!-- c > d -->\n<!DOCTYPE svg [ <!ENTITY a "b"> ]>\n'
        b'<svg:svg xmlns:svg="http://www.w3.org/2000/svg" width="7" height="9" title="a>b">',
        ("svg", 7, 9),
    ),
}


@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built(name: str) -> None:
    data, (fmt, width, height) = HAND_BUILT[name]
    result, _ = parse_both(data)
    assert (result.format, result.width, result.height) == (fmt, width, height)


# ------------------------------------------------------------------------- bad input
def cut_points(data: bytes) -> list[int]:
    _, parser = parse_whole(data)
    used = parser.bytes_used
    return sorted({1, used // 2, used - 1})


TRUNCATABLE = ["iojs_logo.png", "iojs_logo.jpeg", "iojs_logo.gif", "iojs_logo.bmp", "iojs_logo.tiff",
               "webp-vp8l.webp", "iojs_logo.avif", "MIAF002.heic", "google.ico", "empty.psd", "sample.svg"]


@pytest.mark.parametrize("name", TRUNCATABLE)
def test_truncated_header_raises_truncated(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    for cut in cut_points(data):
        parser = HeaderParser()
        assert parser.feed(data[:cut]) is None
        with pytest.raises(InvalidImage) as info:
            parser.finish()
        assert is_truncated(info.value), (name, cut, info.value)
        assert info.value.code == "truncated"
        with pytest.raises(InvalidImage):  # the error sticks
            parser.finish()


def test_size_known_but_orientation_cut_off_keeps_size() -> None:
    data = (FIXTURES / "Exif5-1.5x.webp").read_bytes()
    parser = HeaderParser()
    assert parser.feed(data[:100]) is None
    assert parser.provisional is not None and parser.provisional.width == 192
    result = parser.finish()
    assert (result.width, result.orientation) == (192, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        os.urandom(0) + b"\x00\x01\x02garbage",
        b"<html><body>not an image</body></html>",
        b"<!DOCTYPE html><html>",
        b"   plain text",
        b"%PDF-1.7\n",
        b"\0\0\0\x18ftypisom\0\0\0\0isommp41",  # an MP4 video
        b'<svg width="10em" height="2em">',  # no usable size
        b"{\"json\": true}",
    ],
)
def test_not_images(data: bytes) -> None:
    with pytest.raises(UnsupportedFormat):
        probe_bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff\xda\x00\x02",  # scan before frame header
        b"\xff\xd8\xff\xe0\x00\x10JFIF\0\1\1\0\0\1\0\1\0\0" + b"\x12" * 8,  # no marker after APP0
        b"\x89PNG\r\n\x1a\n\0\0\0\x0dIDAT" + b"\0" * 16,  # first chunk is not IHDR
        b"GIF89a\0\0\0\0",  # zero size
        b"II*\0\x04\0\0\0",  # IFD0 inside the header
    ],
)
def test_corrupt_headers_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage) as info:
        probe_bytes(data)
    assert not is_truncated(info.value)


def test_random_bytes_are_refused_quickly() -> None:
    for seed in range(50):
        data = bytes((seed * 7919 + i * 104729) % 251 for i in range(4096))
        parser = HeaderParser()
        with pytest.raises((UnsupportedFormat, InvalidImage)):
            if parser.feed(data) is None:
                parser.finish()


def test_endless_jpeg_segments_are_skipped_without_buffering() -> None:
    parser = HeaderParser()
    parser.feed(b"\xff\xd8")
    segment = b"\xff\xe2\xff\xff" + b"\0" * 65533
    for _ in range(100):
        assert parser.feed(segment) is None
    assert len(parser._buf) < 16  # noqa: SLF001 - skips never buffer
    assert parser.position == 2 + 100 * len(segment)


def test_result_is_frozen_and_feed_after_result_is_harmless() -> None:
    data = (FIXTURES / "iojs_logo.png").read_bytes()
    parser = HeaderParser()
    result = parser.feed(data)
    assert result is not None
    assert parser.feed(b"more") is result
    with pytest.raises(AttributeError):
        result.width = 1  # type: ignore[misc]
