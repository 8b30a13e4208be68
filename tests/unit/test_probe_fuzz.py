"""No input can hang the header parser: every input ends, within a byte and a time
budget, in a size or a clean error (:class:`UnsupportedFormat` / :class:`InvalidImage`).

* A Hypothesis fuzz test mutates real headers (every fixture and Pillow-written
  images: bit flips, 32-bit fields set to 0 / 1 / 0xFFFFFFFF, inserted and deleted
  runs, truncation) and feeds them in random chunk sizes.  In CI it runs
  ``IMAGESTREAM_FUZZ_EXAMPLES`` examples (default 300, a few seconds); a long run::

      IMAGESTREAM_FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest tests/unit/test_probe_fuzz.py -k test_fuzz

* The hostile shapes other parsers hung or crashed on, each as its own test:
  ISO BMFF boxes of size 0 and 1 with a zero 64-bit size (npm image-size,
  GHSA-m5qc-5hw7-8vg7), a zero-length ICNS entry (GHSA-w3rx-r6r6-pgpr), icon
  directories with zero-length entries, PNG with zero width, JPEG segments of
  length 0, TIFF IFD chains that loop, SVG with entity expansion, WebP/RIFF with
  lying sizes, an iloc box whose zero-size fields ask for billions of loop turns,
  and markup trickled a byte at a time.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from streams.dimensions.probe import MAX_META_BOX, HeaderParser, ProbeResult
from streams.errors import InvalidImage, UnsupportedFormat

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "probe-image-size"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

#: Seconds one input may take (a few ms in practice; generous on a shared 2-core box).
TIME_BUDGET = 0.5
#: Bytes the parser may hold at once: its largest buffered structure (an ISO BMFF
#: meta box) plus one chunk.
BUFFER_BUDGET = MAX_META_BOX + 64 * 1024
#: Bytes fed from an endless hostile stream before giving up on it (the fetcher's
#: own cap is IMAGESTREAM_DIMENSION_MAX_BYTES, 4 MiB).
STREAM_BUDGET = 4 * 1024 * 1024
EXAMPLES = int(os.environ.get("IMAGESTREAM_FUZZ_EXAMPLES", "300"))


def drive(chunks: Iterable[bytes], *, byte_budget: int = STREAM_BUDGET) -> ProbeResult | Exception:
    """Feed ``chunks`` until a size, an error, their end or the byte budget; checks
    the time and buffer budgets.  Returns the size or the (clean) error."""
    parser = HeaderParser()
    started = time.perf_counter()
    fed = 0
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            fed += len(chunk)
            assert len(parser._buf) <= BUFFER_BUDGET, "the parser buffers too much"  # noqa: SLF001
            if result is not None:
                break
            if fed >= byte_budget:
                break
        else:
            result = parser.finish()
        if result is None:
            result = parser.finish()
        outcome: ProbeResult | Exception = result
    except (UnsupportedFormat, InvalidImage) as exc:
        outcome = exc
    elapsed = time.perf_counter() - started
    assert elapsed < TIME_BUDGET, f"took {elapsed:.3f}s"
    if isinstance(outcome, ProbeResult):
        assert outcome.width >= 1 and outcome.height >= 1 and outcome.mime.startswith("image/")
        assert 1 <= outcome.orientation <= 8
    return outcome


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


# -------------------------------------------------------------------------- fuzzing
def _pillow(fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (37, 23), "green").save(out, fmt, **options)
    return out.getvalue()


SEEDS: list[bytes] = [(FIXTURES / name).read_bytes()[:8192] for name in sorted(MANIFEST["images"])]
SEEDS += [_pillow("PNG"), _pillow("JPEG"), _pillow("GIF"), _pillow("BMP"), _pillow("WEBP"),
          _pillow("WEBP", lossless=True), _pillow("TIFF"), _pillow("TIFF", big_tiff=True), _pillow("ICO")]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, int]:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "field", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "field" and len(data) >= 4:
            at = min(at, len(data) - 4)
            value = draw(st.sampled_from([0, 1, 2, 8, 16, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFF]))
            data[at:at + 4] = struct.pack(draw(st.sampled_from([">I", "<I"])), value)
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data), draw(st.sampled_from([1, 3, 16, 512, 4096, 16384]))


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated())
def test_fuzz_mutated_real_headers_end_in_a_size_or_a_clean_error(case: tuple[bytes, int]) -> None:
    data, chunk = case
    drive(pieces(data, chunk))


@settings(max_examples=max(EXAMPLES // 3, 50), deadline=None, database=None)
@given(data=st.binary(max_size=2048), chunk=st.sampled_from([1, 7, 4096]))
def test_fuzz_random_bytes_end_in_a_size_or_a_clean_error(data: bytes, chunk: int) -> None:
    drive(pieces(data, chunk))


# ------------------------------------------------------------------ hostile shapes
def box(kind: bytes, body: bytes = b"", *, size: int | None = None) -> bytes:
    return struct.pack(">I", 8 + len(body) if size is None else size) + kind + body


FTYP = box(b"ftyp", b"avif\0\0\0\0avifmif1")


def clean_error(outcome: object, kind: type[Exception] = Exception) -> Exception:
    assert isinstance(outcome, kind), outcome
    assert isinstance(outcome, Exception)
    return outcome


@pytest.mark.parametrize("chunk", [1, 4096])
def test_bmff_top_level_box_of_size_0_and_of_size_1_with_a_zero_64_bit_size(chunk: int) -> None:
    for hostile in (box(b"free", size=0), struct.pack(">I", 1) + b"free" + bytes(8),
                    struct.pack(">I", 1) + b"meta" + struct.pack(">Q", 8)):
        clean_error(drive(pieces(FTYP + hostile + bytes(64), chunk)), InvalidImage)


def test_bmff_boxes_of_size_0_and_1_inside_meta() -> None:
    for inner in (box(b"iprp", size=0) + bytes(16), struct.pack(">I", 1) + b"iprp" + bytes(8),
                  box(b"iprp", box(b"ipco", size=1) + bytes(8))):
        meta = box(b"meta", bytes(4) + inner)
        outcome = drive([FTYP + meta])
        clean_error(outcome, InvalidImage)


def test_bmff_iloc_with_zero_size_fields_and_huge_counts_is_refused_at_once() -> None:
    # version 2: 32-bit item count; offset/length/base/index sizes 0: nothing to read
    # per extent, 65535 extents per item, 2^32-1 items.
    items = (struct.pack(">IHH", 1, 0, 0) + struct.pack(">H", 0xFFFF)) * 200
    iloc = box(b"iloc", bytes([2, 0, 0, 0]) + bytes([0, 0]) + struct.pack(">I", 0xFFFFFFFF) + items)
    outcome = drive([FTYP + box(b"meta", bytes(4) + iloc)])
    assert "extents" in str(clean_error(outcome, InvalidImage))


def test_icns_with_a_zero_length_entry_is_not_read() -> None:
    icns = b"icns" + struct.pack(">I", 16) + b"ic08" + struct.pack(">I", 0)
    clean_error(drive([icns]), UnsupportedFormat)


@pytest.mark.parametrize("count", [1, 5, 1024])
def test_icon_directories_with_zero_length_entries(count: int) -> None:
    ico = struct.pack("<HHH", 0, 1, count) + bytes(16) * count  # every entry: 0x0, 0 bytes at 0
    outcome = drive([ico])
    assert isinstance(outcome, ProbeResult) and (outcome.width, outcome.height) == (256, 256)  # 0 means 256
    clean_error(drive([struct.pack("<HHH", 0, 1, 0) + bytes(16)]), UnsupportedFormat)  # no entries
    clean_error(drive([struct.pack("<HHH", 0, 1, 0xFFFF) + bytes(64)]), UnsupportedFormat)


def test_png_with_zero_width() -> None:
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 0, 100) + bytes(9)
    clean_error(drive([png]), InvalidImage)


@pytest.mark.parametrize("length", [0, 1])
def test_jpeg_segments_of_length_0_and_1(length: int) -> None:
    jpeg = b"\xff\xd8\xff\xe1" + struct.pack(">H", length) + bytes(32)
    clean_error(drive(pieces(jpeg, 1)), InvalidImage)


def test_an_endless_jpeg_stream_stays_within_the_buffer_and_ends_at_the_byte_budget() -> None:
    def endless() -> Iterable[bytes]:
        yield b"\xff\xd8"
        while True:
            yield b"\xff\xe2\xff\xff" + bytes(65533)  # APP2 segments forever, no frame header

    outcome = drive(endless(), byte_budget=2 * 1024 * 1024)
    assert is_truncated_error(outcome)


def is_truncated_error(outcome: object) -> bool:
    return isinstance(outcome, InvalidImage) and outcome.code == "truncated"


def tiff(order: str, ifd_at: int, entries: list[tuple[int, int, int]], next_ifd: int) -> bytes:
    e = "<" if order == "II" else ">"
    head = order.encode() + struct.pack(e + "HI", 42, ifd_at)
    body = bytearray(head.ljust(ifd_at, b"\0"))
    body += struct.pack(e + "H", len(entries))
    for tag, kind, value in entries:
        body += struct.pack(e + "HHI", tag, kind, 1) + (struct.pack(e + "HH", value, 0) if kind == 3
                                                        else struct.pack(e + "I", value))
    return bytes(body + struct.pack(e + "I", next_ifd))


@pytest.mark.parametrize("order", ["II", "MM"])
def test_tiff_ifd_chains_that_loop(order: str) -> None:
    # IFD0's next-IFD offset points at IFD0 itself, and a second chain loops back to the header.
    looping = tiff(order, 8, [(256, 4, 40), (257, 4, 30)], next_ifd=8)
    outcome = drive([looping])
    assert isinstance(outcome, ProbeResult) and (outcome.width, outcome.height) == (40, 30)
    backwards = tiff(order, 8, [(258, 3, 8)], next_ifd=0)  # no size in IFD0, chain ends
    clean_error(drive([backwards]), InvalidImage)
    into_header = (order.encode() + struct.pack(("<" if order == "II" else ">") + "HI", 42, 4))
    clean_error(drive([into_header + bytes(32)]), InvalidImage)
    # The same loop inside a JPEG's EXIF block.
    exif = b"Exif\0\0" + tiff(order, 8, [(274, 3, 6)], next_ifd=8)
    jpeg = (b"\xff\xd8\xff\xe1" + struct.pack(">H", 2 + len(exif)) + exif
            + b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 30, 40, 1) + bytes(3))
    outcome = drive(pieces(jpeg, 3))
    assert isinstance(outcome, ProbeResult) and (outcome.width, outcome.height, outcome.orientation) == (30, 40, 6)


def test_svg_with_entity_expansion_is_never_expanded() -> None:
    laughs = b'<?xml version="1.0"?>\n<!DOCTYPE svg [\n<!ENTITY lol "lol">\n' + b"".join(
        b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i else b"&lol;") * 10) for i in range(10)
    ) + b"]>\n"
    sized = drive(pieces(laughs + b'<svg width="12" height="34">&lol9;</svg>', 5))
    assert isinstance(sized, ProbeResult) and (sized.width, sized.height) == (12, 34)
    by_entity = laughs + b'<svg width="&lol9;" height="&lol9;"><g/></svg>'
    clean_error(drive([by_entity]), UnsupportedFormat)  # no usable size: not expanded to get one
    external = b'<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg width="&x;" height="1">'
    clean_error(drive([external]), UnsupportedFormat)


def test_markup_trickled_a_byte_at_a_time_stays_cheap() -> None:
    for data in (b"<svg " + b'a="b" ' * 8000 + b'width="3" height="4">',
                 b" " * 60_000 + b"<svg width='3' height='4'>",
                 b"<!-- " + b"x" * 60_000):
        outcome = drive(pieces(data, 1))
        assert isinstance(outcome, (ProbeResult, UnsupportedFormat, InvalidImage))


def vp8x(flags: int, chunk_size: int = 10) -> bytes:
    return b"VP8X" + struct.pack("<I", chunk_size) + bytes([flags, 0, 0, 0]) + (99).to_bytes(3, "little") \
        + (49).to_bytes(3, "little")


@pytest.mark.parametrize("riff_size", [0, 4, 0xFFFFFFFF])
def test_webp_riff_with_lying_sizes(riff_size: int) -> None:
    head = b"RIFF" + struct.pack("<I", riff_size) + b"WEBP"
    plain = drive([head + vp8x(0)])
    assert isinstance(plain, ProbeResult) and (plain.width, plain.height) == (100, 50)
    # EXIF flag set, VP8X chunk claiming 4 GiB: the size stands, the orientation is not chased forever.
    huge = drive(pieces(head + vp8x(0x08, 0xFFFFFFF0) + bytes(256), 64))
    assert isinstance(huge, ProbeResult) and (huge.width, huge.height) == (100, 50)
    # An EXIF chunk that claims 4 GiB after a short bitstream chunk.
    lying_exif = head + vp8x(0x08) + b"VP8L" + struct.pack("<I", 2) + b"\0\0" \
        + b"EXIF" + struct.pack("<I", 0xFFFFFFFF) + b"MM\0*" + struct.pack(">I", 0xFFFFFF00)
    outcome = drive(pieces(lying_exif, 7))
    assert isinstance(outcome, ProbeResult) and outcome.orientation == 1
    clean_error(drive([head + vp8x(0, chunk_size=4)]), InvalidImage)  # VP8X shorter than its fields
    chunks = head + vp8x(0x08) + (b"JUNK" + struct.pack("<I", 0)) * 1000  # zero-length chunks forever
    assert isinstance(drive([chunks]), ProbeResult)


def test_bigtiff_ifd_far_away_is_skipped_not_buffered() -> None:
    big = b"II+\0" + struct.pack("<HHQ", 8, 0, 1 << 62)
    outcome = drive(pieces(big + bytes(1 << 20), 65536))
    assert is_truncated_error(outcome)
