"""Cache keys by construction (DESIGN.md §5).

The old system missed its cache because the same image was hashed along different
paths and prompts differed only in whitespace.  Every piece of a key is therefore
produced here, by one function each:

* :func:`image_sha256` — THE hash of image bytes (the exact bytes sent upstream).
* :func:`pixel_hash` — a second identity over decoded pixels, so the same picture
  re-encoded (PNG re-compressed, metadata stripped, JPEG → lossless PNG) still hits.
* :func:`normalize_prompt` — NFKC + whitespace folding.
* :func:`canonical_params` — output-affecting params as canonical JSON.
* :func:`cache_key` — sha256 over a JSON array of all of the above, plus the model
  name and :data:`KEY_VERSION`.  A JSON array is unambiguous: no field can leak into
  its neighbour the way ``"a|b" + "|" + "c"`` can.

Decisions (and why):

* **Whitespace set.**  After NFKC (which already turns U+3000 ideographic space,
  NBSP and the other compatibility spaces into U+0020), every run of characters that
  Python's ``str.isspace`` accepts — space, ``\\t``, ``\\n``, ``\\r``, ``\\v``, ``\\f``,
  U+0085, U+00A0, U+1680, U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 and
  the C0 separators U+001C–U+001F — becomes one space; the result is stripped.
* **Zero-width characters.**  U+200B (zero-width space), U+2060 (word joiner) and
  U+FEFF (BOM / ZWNBSP) are *removed* (not turned into a space): they are invisible,
  arrive by copy-paste, and a user reading the prompt sees the text without them.
  U+200C/U+200D (ZWNJ/ZWJ) are *kept*: they change how emoji sequences and some
  scripts (Persian, Indic) render, so they can change meaning.
* **Case** is kept: a model may read "RED" and "red" differently.
* **Unknown params** are included in the key (canonically): they reach the upstream
  call and might change its output, and a missed hit costs one call while a wrong
  hit returns the wrong picture.  Only the names in :data:`NON_AFFECTING_PARAMS`
  (bookkeeping that never reaches the model) are dropped.  ``None`` values are
  dropped (same as absent); an empty ``negative_prompt`` is dropped too.
* **Defaults are not filled in**: ``{"watermark": false}`` and ``{}`` are different
  keys even if the upstream default is ``false``; the upstream may change defaults
  without changing the model name.
* **EXIF orientation** is *not* applied before :func:`pixel_hash`; instead the
  orientation tag (1 when absent) is part of the hash.  We cannot know whether the
  upstream honours the tag (it sees the raw file).  Transposing first would make a
  raw+tag image collide with a pre-rotated one (wrong hit if the upstream ignores
  the tag); ignoring the tag would make raw+tag collide with raw-without-tag (wrong
  hit if it honours it).  Hashing raw pixels *and* the tag is right in both cases
  and still hits for the common "metadata stripped, orientation 1" case.
* **ICC profiles** are not part of the pixel hash: model pipelines operate on decoded
  pixel values and DashScope documents no colour management; including the profile
  would defeat the "metadata stripped" case the pixel hash exists for.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image

__all__ = [
    "KEY_VERSION",
    "NON_AFFECTING_PARAMS",
    "OUTPUT_PARAMS",
    "cache_key",
    "cache_keys_for",
    "canonical_params",
    "image_sha256",
    "normalize_prompt",
    "pixel_hash",
]

#: Salt of every cache key; bump it to invalidate all entries at once.
KEY_VERSION = "v1"

#: Params the upstream documents as output-affecting (always part of the key).
OUTPUT_PARAMS = frozenset({"negative_prompt", "seed", "watermark", "prompt_extend", "size", "n"})

#: Params that never reach the model; dropped from the key.  ``prompt`` is keyed
#: separately (normalised) by :func:`cache_key`.
NON_AFFECTING_PARAMS = frozenset(
    {"prompt", "callback_url", "client_ref", "request_id", "reply_to", "task_id", "user", "tags"}
)

#: Invisible characters deleted from prompts (see module docstring).
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u2060\ufeff"))

_WHITESPACE_RUN = re.compile(r"\s+")

#: Pixel modes with more than 8 bits per sample: hashed in their own mode so that
#: converting to 8-bit RGB(A) cannot merge distinct images.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

#: Pixel modes that carry transparency.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

_EXIF_ORIENTATION = 0x0112


def normalize_prompt(text: str) -> str:
    """NFKC, drop zero-width characters, fold every whitespace run into one space, strip.

    >>> normalize_prompt(" 提升\\u3000画质\\t\\r\\n增强\\u00a0细节 ")
    '提升 画质 增强 细节'
    """
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH)
    return _WHITESPACE_RUN.sub(" ", text).strip()


def _canonical_value(name: str, value: Any) -> Any:
    """One param value in its canonical form (``None`` means: leave it out)."""
    if name == "negative_prompt" and isinstance(value, str):
        return normalize_prompt(value) or None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"param {name!r} is not a finite number: {value!r}")
    return value


def canonical_params(params: Mapping[str, Any]) -> str:
    """Output-affecting params as canonical JSON: sorted keys, no whitespace, no ``None``.

    >>> canonical_params({"seed": 7, "watermark": False, "client_ref": "x", "n": None})
    '{"seed":7,"watermark":false}'
    """
    kept: dict[str, Any] = {}
    for name, raw in params.items():
        if name in NON_AFFECTING_PARAMS or raw is None:
            continue
        value = _canonical_value(name, raw)
        if value is not None:
            kept[str(name)] = value
    return json.dumps(
        kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def image_sha256(data: bytes) -> str:
    """THE identity of image bytes: lower-case hex sha256 of exactly these bytes."""
    return hashlib.sha256(data).hexdigest()


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block must not break hashing
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)


def _canonical_pixels(image: Image.Image) -> Image.Image:
    """The image in the mode its pixels are hashed in.

    RGB, or RGBA when some pixel is not fully opaque; high-depth modes stay as they
    are.  Opaque RGBA and RGB of the same pixels therefore hash alike.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        return image
    try:
        if _has_alpha(image):
            rgba = image if image.mode == "RGBA" else image.convert("RGBA")
            if rgba.getchannel("A").getextrema() != (255, 255):
                return rgba
            return rgba.convert("RGB")
        return image if image.mode == "RGB" else image.convert("RGB")
    except ValueError:  # a mode without a direct conversion (e.g. La): hash it as it is
        return image


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded pixels of the current frame, in a canonical mode.

    8-bit images (``1``, ``L``, ``P``, ``CMYK``…) are converted to RGB, or to RGBA when
    some pixel is not fully opaque, so an RGB image and the same pixels as opaque
    RGBA, or a palette PNG and its RGB twin, hash alike.  High-depth modes keep their
    own mode.  The preimage starts with a
    header naming the size, the canonical mode and the EXIF orientation (see the
    module docstring for why orientation is included rather than applied).
    """
    canonical = _canonical_pixels(image)
    mode = canonical.mode
    width, height = canonical.size
    digest = hashlib.sha256(
        f"px1|{width}x{height}|{mode}|o{_orientation(image)}|".encode("ascii")
    )
    digest.update(canonical.tobytes())
    return digest.hexdigest()


def cache_key(
    *,
    model: str,
    edit_type: str,
    image_identity: str,
    prompt: str,
    params: Mapping[str, Any],
    version: str = KEY_VERSION,
) -> str:
    """sha256 of ``[version, model, edit_type, identity, normalized prompt, params]``.

    ``image_identity`` is :func:`pixel_hash` when the pixels were decoded, else
    :func:`image_sha256` of the bytes sent upstream.  The prompt is normalised and the
    params canonicalised here, so callers cannot forget to.
    """
    return cache_keys_for(model=model, edit_type=edit_type, prompt=prompt, params=params,
                          version=version)(image_identity)


def cache_keys_for(
    *,
    model: str,
    edit_type: str,
    prompt: str,
    params: Mapping[str, Any],
    version: str = KEY_VERSION,
) -> Callable[[str], str]:
    """:func:`cache_key` for many images of one edit: normalises the prompt and
    canonicalises the params once, returns ``image_identity -> key``."""
    head = [version, model, edit_type]
    tail = [normalize_prompt(prompt), canonical_params(params)]

    def key(image_identity: str) -> str:
        preimage = json.dumps([*head, image_identity, *tail], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(preimage.encode("utf-8")).hexdigest()

    return key
