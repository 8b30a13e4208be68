"""The emulator's "model": a real, visible Pillow edit chosen from the prompt.

The real API has no edit-type field, so the edit is read from the prompt (English or
Chinese keywords, first match wins in the order of :data:`EDIT_KEYWORDS`); a prompt that
names none gets ``enhance``. Every function here is synchronous and CPU-bound: the app
runs them with ``asyncio.to_thread``.

The output is a function of (input pixels, prompt, seed, watermark, size) only, so the
same request always gives the same PNG bytes, and a different seed gives a (slightly)
different picture, as it would from the real model.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps, PngImagePlugin, UnidentifiedImageError

__all__ = [
    "EDIT_KEYWORDS",
    "EditedImage",
    "ImageDecodeError",
    "ImageTooBig",
    "apply_edit",
    "choose_edit",
    "decode_image",
    "edit_image_bytes",
]

#: Edit name → prompt keywords (matched case-insensitively as substrings).
EDIT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "grayscale": ("grayscale", "greyscale", "gray scale", "black and white", "黑白", "灰度"),
    "invert": ("invert", "negative image", "反色", "反相"),
    "blur": ("blur", "模糊"),
    "sharpen": ("sharpen", "锐化"),
    "enhance": ("enhance", "improve quality", "提升画质", "增强", "高清"),
}
DEFAULT_EDIT = "enhance"


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can read, or are truncated."""


class ImageTooBig(ValueError):
    """Too many pixels, or a side outside the accepted range."""


@dataclass(frozen=True)
class EditedImage:
    png: bytes
    width: int
    height: int
    edit: str


def choose_edit(prompt: str) -> str:
    """The edit a prompt asks for (``enhance`` when it names none)."""
    text = prompt.casefold()
    for edit, words in EDIT_KEYWORDS.items():
        if any(word in text for word in words):
            return edit
    return DEFAULT_EDIT


def decode_image(
    data: bytes, *, max_pixels: int, min_side: int = 1, max_side: int = 16384
) -> Image.Image:
    """Decode ``data`` (first frame of an animation) into an RGB or RGBA image.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    try:
        with warnings.catch_warnings():
            # Our own limit below is stricter; Pillow's bomb warning is only noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooBig(
                    f"The image has {width}x{height} pixels, more than the {max_pixels} allowed."
                )
            if not (min_side <= width <= max_side and min_side <= height <= max_side):
                raise ImageTooBig(
                    f"The image width and height must be within [{min_side}, {max_side}] "
                    f"pixels, got {width}x{height}."
                )
            image.seek(0)
            image.load()
    except (ImageTooBig, ImageDecodeError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooBig(str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"cannot decode image: {exc}") from None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    return image.convert("RGBA" if has_alpha else "RGB")


def _seed_jitter(seed: int | None, steps: int) -> int:
    """0..steps-1 from the seed (0 without one): the seed's small, visible effect."""
    return 0 if seed is None else seed % steps


def apply_edit(image: Image.Image, edit: str, *, seed: int | None = None) -> Image.Image:
    """Apply ``edit`` to an RGB/RGBA image; alpha is kept as it was."""
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = image.convert("RGB")
    jitter = _seed_jitter(seed, 5)
    if edit == "grayscale":
        out = ImageOps.grayscale(rgb).convert("RGB")
    elif edit == "invert":
        out = ImageOps.invert(rgb)
    elif edit == "blur":
        out = rgb.filter(ImageFilter.GaussianBlur(radius=2.0 + 0.5 * jitter))
    elif edit == "sharpen":
        out = rgb.filter(ImageFilter.UnsharpMask(radius=2, percent=150 + 10 * jitter, threshold=2))
    elif edit == "enhance":
        out = ImageOps.autocontrast(rgb, cutoff=1)
        out = out.filter(ImageFilter.SHARPEN)
        out = ImageEnhance.Color(out).enhance(1.2 + 0.02 * jitter)
    else:
        raise ValueError(f"unknown edit {edit!r}")
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _watermark(image: Image.Image) -> None:
    """A small opaque badge in the bottom-right corner (the real model's is a logo)."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    box_w, box_h = max(8, width // 6), max(6, height // 12)
    fill = (255, 255, 255, 255) if image.mode == "RGBA" else (255, 255, 255)
    draw.rectangle((width - box_w, height - box_h, width - 1, height - 1), fill=fill)
    draw.text((width - box_w + 2, height - box_h + 1), "AI", fill=(0, 0, 0))


def default_size(source: tuple[int, int], pixels: int) -> tuple[int, int]:
    """About ``pixels`` pixels with ``source``'s aspect, sides multiples of 16."""
    width, height = source
    scale = (pixels / (width * height)) ** 0.5
    return (max(16, round(width * scale / 16) * 16), max(16, round(height * scale / 16) * 16))


def edit_image_bytes(
    images: Sequence[bytes],
    prompt: str,
    *,
    seed: int | None = None,
    watermark: bool = False,
    size: tuple[int, int] | None = None,
    max_pixels: int = 40_000_000,
    min_side: int = 1,
    max_side: int = 16384,
    output: int = 0,
    default_pixels: int | None = None,
) -> EditedImage:
    """Decode, edit, encode.  The *last* image is edited (the output follows the last
    input, as the service's does); the others are decoded (validated).  Without
    ``size``, ``default_pixels`` (when given) sets the output's area, keeping the last
    input's aspect, sides rounded to multiples of 16.

    ``output`` is the output's place among the call's ``n``: the real service returns
    ``n`` different pictures, so each output carries its number in a PNG text chunk
    (its pixels may still coincide, e.g. for an edit the seed does not change).

    Raises :class:`ImageDecodeError` or :class:`ImageTooBig` for bad input.
    """
    decoded = [
        decode_image(data, max_pixels=max_pixels, min_side=min_side, max_side=max_side)
        for data in images
    ]
    edit = choose_edit(prompt)
    out = apply_edit(decoded[-1], edit, seed=seed)
    if size is None and default_pixels:
        size = default_size(out.size, default_pixels)
    if size is not None and size != out.size:
        out = out.resize(size, Image.Resampling.LANCZOS)
    if watermark:
        _watermark(out)
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("emulator-output", str(output))
    out.save(buffer, format="PNG", optimize=False, pnginfo=info)
    return EditedImage(png=buffer.getvalue(), width=out.width, height=out.height, edit=edit)
