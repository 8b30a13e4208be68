"""Safe inspection of untrusted input images.

:func:`inspect_image` is CPU-bound (it decodes the whole first frame and hashes its
pixels): call it in a thread, e.g. through :func:`inspect_image_in_thread`, never on
the event loop.

Order of checks, cheapest first, nothing large allocated before the caps are known
to hold:

1. empty → :class:`~streams.errors.InvalidImage`; more than ``max_bytes`` →
   :class:`~streams.errors.ImageTooLarge`.
2. ``Image.open`` restricted to the accepted formats — it reads only the header, and
   other Pillow plugins (PSD, ICO, EPS, …) never run on untrusted bytes.  Bytes none
   of them recognise → :class:`~streams.errors.UnsupportedFormat`, unless they start
   with the signature of an accepted format (then they are a broken file of that
   format: :class:`~streams.errors.InvalidImage`).
3. ``width × height`` from the header against ``max_pixels`` →
   :class:`~streams.errors.ImageTooLarge`, before any pixel buffer exists.  Pillow's
   own bomb guard (``Image.MAX_IMAGE_PIXELS``, read-only here, never mutated) may
   refuse first for gigantic claims; that is mapped to the same error.
4. ``img.load()`` decodes the first frame completely; truncated or corrupt data →
   :class:`~streams.errors.InvalidImage`.  This relies on Pillow's default
   ``ImageFile.LOAD_TRUNCATED_IMAGES = False``; nothing in imagestream sets it.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from streams.errors import ImageTooLarge, InvalidImage, UnsupportedFormat
from streams.lru import LRU
from streams.image_edit.keys import image_sha256, pixel_hash

__all__ = [
    "ACCEPTED_FORMATS",
    "ImageInfo",
    "ImageInfoCache",
    "inspect_image",
    "inspect_image_in_thread",
    "recent_images",
]

#: Pillow format name → MIME type the upstream is told.  MPO is the multi-picture
#: JPEG many cameras write; it is a JPEG file and travels as one.
ACCEPTED_FORMATS: dict[str, str] = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}

#: Plugins ``Image.open`` may try (MPO is produced by the JPEG plugin).
_OPEN_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")

#: Signatures of the accepted formats: bytes that start like this but do not open
#: are a broken image, not a foreign format.
_ACCEPTED_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00",
    b"MM\x00+",
)

#: Signatures of some formats we refuse, only to name them in the error message.
_FOREIGN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
    (b"qoif", "QOI"),
)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What :func:`inspect_image` learnt about one input image."""

    format: str
    mime: str
    width: int
    height: int
    n_frames: int
    size_bytes: int
    #: :func:`~streams.image_edit.keys.image_sha256` of the bytes.
    sha256: str
    #: :func:`~streams.image_edit.keys.pixel_hash` of the first frame.
    pixel_hash: str

    @property
    def identity(self) -> str:
        """The image identity that goes into the cache key (the pixel hash)."""
        return self.pixel_hash

    @property
    def pixels(self) -> int:
        """``width × height``."""
        return self.width * self.height


def _sniff_foreign(data: bytes) -> str | None:
    """Name a refused format from its signature, for the error message."""
    head = data[:64].lstrip()
    for magic, name in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return name
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def _looks_accepted(data: bytes) -> bool:
    """Whether ``data`` starts with the signature of an accepted format."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data.startswith(_ACCEPTED_MAGIC)


def _check_bytes(data: bytes, max_bytes: int) -> None:
    if not data:
        raise InvalidImage("empty image (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image has {len(data)} bytes, more than the {max_bytes} allowed")


def _open(data: bytes) -> Image.Image:
    """Open (header only) with the accepted plugins; map failures to input errors."""
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image dimensions refused as a decompression bomb: {exc}") from None
    except Image.DecompressionBombWarning as exc:  # only when warnings are errors
        raise ImageTooLarge(f"image dimensions refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        if _looks_accepted(data):
            raise InvalidImage("image header is corrupt or truncated") from None
        name = _sniff_foreign(data) or "not a recognised image"
        accepted = ", ".join(_OPEN_FORMATS)
        raise UnsupportedFormat(f"unsupported image format ({name}); accepted: {accepted}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise InvalidImage(f"image header cannot be read: {exc}") from None


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image claims an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, "
            f"more than the {max_pixels} allowed"
        )


def _frame_count(img: Image.Image) -> int:
    """Number of frames (seeks headers only), leaving the image on frame 0."""
    try:
        count = int(getattr(img, "n_frames", 1))
        if img.tell() != 0:
            img.seek(0)
    except Exception as exc:
        raise InvalidImage(f"image frames cannot be read: {exc}") from None
    return count


def _decode(img: Image.Image) -> None:
    """Decode the first frame completely; truncated or corrupt data is an input error."""
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:
        raise InvalidImage(f"image data is corrupt or truncated: {exc}") from None


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Validate and describe one input image (blocking: run it in a thread).

    Raises :class:`~streams.errors.InvalidImage`, :class:`~streams.errors.ImageTooLarge`
    or :class:`~streams.errors.UnsupportedFormat`; never a Pillow exception.
    Multi-frame images (GIF, animated WebP, multi-page TIFF) are accepted and
    described by their first frame, which is what the upstream uses.
    """
    _check_bytes(data, max_bytes)
    with _open(data) as img:
        fmt = img.format or ""
        if fmt not in ACCEPTED_FORMATS:  # defensive: _OPEN_FORMATS should ensure it
            raise UnsupportedFormat(f"unsupported image format {fmt or 'unknown'}")
        _check_pixels(img, max_pixels)
        n_frames = _frame_count(img)
        _decode(img)
        width, height = img.size
        return ImageInfo(
            format=fmt,
            mime=ACCEPTED_FORMATS[fmt],
            width=width,
            height=height,
            n_frames=n_frames,
            size_bytes=len(data),
            sha256=image_sha256(data),
            pixel_hash=pixel_hash(img),
        )


async def inspect_image_in_thread(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """:func:`inspect_image` in the default executor, off the event loop."""
    return await asyncio.to_thread(inspect_image, data, max_bytes=max_bytes, max_pixels=max_pixels)


class ImageInfoCache:
    """sha256 → :class:`ImageInfo` of images inspected recently (LRU).

    Inspection decodes the whole image and hashes its pixels; the same bytes always
    give the same info, so a worker that has seen an image (uploaded through its API,
    or planned before) never decodes it again.  Keyed by the sha256 of the bytes,
    which for blob references is the blob's own name.
    """

    def __init__(self, size: int = 8192) -> None:
        self._items: LRU[str, ImageInfo] = LRU(size)

    def get(self, sha256: str) -> ImageInfo | None:
        return self._items.get(sha256)

    def put(self, info: ImageInfo) -> None:
        self._items.put(info.sha256, info)

    def __len__(self) -> int:
        return len(self._items)


#: The worker's cache of inspected images.
recent_images = ImageInfoCache()
