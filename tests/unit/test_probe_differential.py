"""The header parser against two independent readers: Pillow 13 (a decoder) and
``imagesize`` 2.0.1 (another header reader), on every real fixture and on images
Pillow writes in every format it can.

* Fixtures: ours equals the manifest (the truth asserted by probe-image-size);
  where a peer disagrees, the disagreement is one of those listed in
  :data:`KNOWN_PEER_ERRORS` (DESIGN.md §12), and nothing else.
* Generated images (sizes drawn by Hypothesis): ours equals the size Pillow wrote,
  and ``imagesize`` whenever it answers for that format.
* Formats we do not read (JPEG 2000, ICNS, TGA, PPM, QOI, PCX, DDS, ...): a clean
  :class:`UnsupportedFormat`, or, if a size comes out, Pillow's.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import imagesize
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from streams.dimensions.probe import probe_bytes
from streams.errors import InvalidImage, UnsupportedFormat

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "probe-image-size"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())

#: (peer, fixture): where that peer is wrong or gives no answer, with ours right.
KNOWN_PEER_ERRORS = {
    ("imagesize", "Rot3Mir1-1.5x.avif"),  # -1: irot/imir not read
    ("imagesize", "empty.psd"),  # -1: no PSD
    ("imagesize", "google.ico"),  # -1: no ICO
    ("imagesize", "google1.ico"),
    ("imagesize", "iojs_logo_header_v2.bmp"),  # BITMAPCOREHEADER read as v3: 12255599x1572865
    ("pillow", "MIAF002.heic"),  # no HEIF decoder
    ("pillow", "image4.heic"),
    ("pillow", "sample.svg"),  # not a raster format
    ("pillow", "google1.ico"),  # 16x16: the first entry, not the largest
}


def _pillow(data: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # noqa: BLE001 - "no answer" is a peer's answer too
        return None


def _imagesize(data: bytes) -> tuple[int, int] | None:
    try:
        width, height = imagesize.get(io.BytesIO(data))
    except Exception:  # noqa: BLE001
        return None
    if width <= 0 or height <= 0:
        return None
    return round(width), round(height)


def test_fixtures_ours_is_the_truth_and_peers_differ_only_where_known() -> None:
    disagreements: set[tuple[str, str]] = set()
    for name, expected in MANIFEST["images"].items():
        data = (FIXTURES / name).read_bytes()
        ours = probe_bytes(data)
        truth = (round(expected["width"]), round(expected["height"]))
        assert (ours.raw_width, ours.raw_height) == truth, name
        for peer, answer in (("pillow", _pillow(data)), ("imagesize", _imagesize(data))):
            if answer != truth:
                disagreements.add((peer, name))
    assert disagreements == KNOWN_PEER_ERRORS


@pytest.mark.parametrize("name", MANIFEST["not_images"])
def test_fixtures_that_are_not_images_are_refused_by_all(name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    with pytest.raises(UnsupportedFormat):
        probe_bytes(data)
    assert _pillow(data) is None and _imagesize(data) is None


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    return exif.tobytes()


#: name -> (Pillow format, save options, mode, does imagesize read it)
WRITERS: dict[str, tuple[str, dict[str, object], str, bool]] = {
    "png-rgb": ("PNG", {}, "RGB", True),
    "png-rgba": ("PNG", {}, "RGBA", True),
    "png-1bit": ("PNG", {}, "1", True),
    "png-16bit": ("PNG", {}, "I;16", True),
    "png-palette": ("PNG", {"optimize": True}, "P", True),
    "jpeg": ("JPEG", {"quality": 70}, "RGB", True),
    "jpeg-grey": ("JPEG", {}, "L", True),
    "jpeg-cmyk": ("JPEG", {}, "CMYK", True),
    "jpeg-progressive": ("JPEG", {"progressive": True}, "RGB", True),
    "jpeg-exif6": ("JPEG", {"exif": _exif(6)}, "RGB", True),  # imagesize answers the display size
    "gif": ("GIF", {}, "P", True),
    "bmp": ("BMP", {}, "RGB", True),
    "bmp-1bit": ("BMP", {}, "1", True),
    "webp-lossy": ("WEBP", {"quality": 40}, "RGB", True),
    "webp-lossless": ("WEBP", {"lossless": True}, "RGB", True),
    "webp-alpha": ("WEBP", {}, "RGBA", True),
    "webp-exif": ("WEBP", {"exif": _exif(8)}, "RGB", True),
    "tiff": ("TIFF", {}, "RGB", True),
    "tiff-lzw": ("TIFF", {"compression": "tiff_lzw"}, "RGB", True),
    "tiff-deflate-grey": ("TIFF", {"compression": "tiff_adobe_deflate"}, "L", True),
    "bigtiff": ("TIFF", {"big_tiff": True}, "RGB", False),
    "ico": ("ICO", {}, "RGBA", False),
}
if features.check("avif"):
    WRITERS["avif"] = ("AVIF", {"quality": 30}, "RGB", True)

sizes = st.tuples(st.integers(1, 640), st.integers(1, 640))


@settings(max_examples=len(WRITERS) * 4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(WRITERS)), size=sizes)
def test_generated_images_of_every_format_agree_with_pillow_and_imagesize(name: str, size: tuple[int, int]) -> None:
    fmt, options, mode, imagesize_reads = WRITERS[name]
    if fmt == "ICO":
        # At most 256 a side; Pillow fits other sizes into the image keeping its aspect.
        side = min(size[0], 256)
        size, options = (side, side), {"sizes": [(side, side)]}
    out = io.BytesIO()
    Image.new(mode, size).save(out, fmt, **options)
    data = out.getvalue()
    ours = probe_bytes(data)
    assert (ours.raw_width, ours.raw_height) == _pillow(data) == size, name
    if name == "jpeg-exif6":
        assert (ours.width, ours.height, ours.orientation) == (size[1], size[0], 6)
    if imagesize_reads:
        expected = (ours.width, ours.height) if name == "jpeg-exif6" else size
        assert _imagesize(data) == expected, name


UNSUPPORTED = ["JPEG2000", "ICNS", "TGA", "PPM", "QOI", "PCX", "DDS", "SGI", "IM", "SPIDER", "EPS", "PDF"]


@pytest.mark.parametrize("fmt", UNSUPPORTED)
def test_formats_we_do_not_read_are_refused_cleanly(fmt: str) -> None:
    out = io.BytesIO()
    try:
        Image.new("RGB", (48, 40), "red").save(out, fmt)
    except (OSError, KeyError, ValueError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    data = out.getvalue()
    try:
        ours = probe_bytes(data)
    except (UnsupportedFormat, InvalidImage):
        return
    assert (ours.raw_width, ours.raw_height) == (48, 40), f"{fmt}: a size that is not the image's"
