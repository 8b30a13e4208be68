"""Incremental image header parser: width, height and orientation from a prefix.

Pure (no I/O).  Feed it the bytes of an image as they arrive; it answers as soon
as the size is known and says how many bytes it needed::

    parser = HeaderParser()
    for chunk in chunks:
        if (result := parser.feed(chunk)) is not None:
            break                       # stop reading: the rest is not needed
    else:
        result = parser.finish()        # end of input

    result.width, result.height         # display size (EXIF orientation applied)
    parser.bytes_used                   # end offset of the last byte it looked at

Seeking.  Some formats keep what we need far from the start (a TIFF IFD at the end
of the file, the EXIF chunk of a WebP after its bitstream, the Exif item of an AVIF
or a box after ``mdat``).  The parser then *skips*: it drops incoming bytes without
buffering them until it reaches :attr:`HeaderParser.next_needed`.  A caller that can
seek (an HTTP Range request) may instead call :meth:`HeaderParser.seek` and feed the
bytes from the new offset; a caller that cannot just keeps feeding.

Errors (all from :mod:`streams.errors`):

* :class:`UnsupportedFormat` (``unsupported_format``) -- the first bytes rule out
  every format we know (raised as soon as they do), an empty input, an ISO BMFF file
  that is not AVIF/HEIF (a video), markup whose root is not ``<svg>``, or an SVG
  without a usable size.
* :class:`InvalidImage` with ``code == "truncated"`` -- the input ended (``finish()``)
  before the header was complete.  Check with :func:`is_truncated`.
* :class:`InvalidImage` (``invalid_image``) -- the format is recognised but the
  header is corrupt (zero width, a JPEG scan before any frame header, a TIFF IFD0
  without ImageWidth, ...).

Orientation.  ``orientation`` is the EXIF value 1..8 (1 when absent).  It comes from
the EXIF IFD0 tag 274 in JPEG (APP1), TIFF, WebP (``EXIF`` chunk, read only when the
VP8X flag says there is one) and AVIF/HEIF (``irot``/``imir`` properties of the
primary item; the ``Exif`` item only when there are none).  Values 5..8 swap
width and height: ``width``/``height`` are the display size, ``raw_width``/
``raw_height`` the stored one.

SVG sizes are CSS pixels and may be fractional; they are rounded to the nearest
integer (at least 1).  Only ``px`` or unit-less ``width``/``height`` are used;
otherwise the ``viewBox`` supplies the size (or the aspect ratio, when only one
of ``width``/``height`` is usable).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NamedTuple

from streams.errors import InvalidImage, UnsupportedFormat

__all__ = [
    "HeaderParser",
    "ProbeResult",
    "TRUNCATED",
    "is_truncated",
    "probe_bytes",
]

#: ``code`` of the :class:`InvalidImage` raised when the input ends too early.
TRUNCATED = "truncated"

#: How far into a file we look for the root element of an SVG.
DEFAULT_SVG_LIMIT = 64 * 1024
#: Largest ISO BMFF ``meta`` box we buffer (real ones are a few KiB).
MAX_META_BOX = 1024 * 1024
#: Largest ``ftyp`` box (a few dozen bytes in practice).
MAX_FTYP_BOX = 4096
#: Top-level ISO BMFF boxes we walk past before giving up on ``meta``.
MAX_TOP_LEVEL_BOXES = 64
#: WebP chunks we walk past looking for ``EXIF``.
MAX_WEBP_CHUNKS = 256
#: Entries in a TIFF IFD (real IFD0s have 10..40).
MAX_IFD_ENTRIES = 4096
#: Entries in an ICO directory.
MAX_ICO_ENTRIES = 1024
#: Extents an ``iloc`` box may list over all its items (real files: one per item,
#: a few hundred items for a tiled HEIC).  Fields of size 0 cost no bytes, so
#: without a cap a 1 KiB box could ask for billions of loop turns.
MAX_ILOC_EXTENTS = 16_384
#: Markup (SVG) and format detection look again at a growing prefix: one byte more
#: at a time up to this many bytes, then twice as many each time.  A server that
#: trickles its answer a byte per packet then costs O(n log n), not O(n²) (an
#: 18 KB SVG root tag fed byte by byte took 26 s of CPU before).
LINEAR_PEEK = 512


def _more(have: int, limit: int) -> int:
    """The prefix length to wait for next, having looked at ``have`` bytes."""
    return min(have + 1 if have < LINEAR_PEEK else have * 2, max(limit, have + 1))

_MIME = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "webp": "image/webp",
    "tiff": "image/tiff",
    "ico": "image/x-icon",
    "cur": "image/x-icon",
    "avif": "image/avif",
    "heic": "image/heic",
    "heif": "image/heif",
    "svg": "image/svg+xml",
    "psd": "image/vnd.adobe.photoshop",
}


# --------------------------------------------------------------------------- result
@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a header says about an image."""

    format: str
    #: Display size: after the EXIF orientation (5..8 swap the axes).
    width: int
    height: int
    #: Size as stored in the file.
    raw_width: int
    raw_height: int
    #: EXIF orientation 1..8; 1 when the file says nothing.
    orientation: int
    mime: str

    @classmethod
    def build(cls, fmt: str, raw_width: int, raw_height: int, orientation: int = 1) -> ProbeResult:
        """A result with the display size derived from ``orientation``."""
        if raw_width <= 0 or raw_height <= 0:
            raise InvalidImage(f"{fmt} header gives a size of {raw_width}x{raw_height}")
        if not 1 <= orientation <= 8:
            orientation = 1
        swap = orientation >= 5
        return cls(
            format=fmt,
            width=raw_height if swap else raw_width,
            height=raw_width if swap else raw_height,
            raw_width=raw_width,
            raw_height=raw_height,
            orientation=orientation,
            mime=_MIME[fmt],
        )

    def with_orientation(self, orientation: int | None) -> ProbeResult:
        """The same image with another orientation (``None`` or invalid: unchanged)."""
        if orientation is None or not 1 <= orientation <= 8:
            return self
        return ProbeResult.build(self.format, self.raw_width, self.raw_height, orientation)


def is_truncated(exc: BaseException) -> bool:
    """True for the error :meth:`HeaderParser.finish` raises on a cut-off header."""
    return isinstance(exc, InvalidImage) and exc.code == TRUNCATED


def _truncated(what: str) -> InvalidImage:
    return InvalidImage(f"input ended inside the {what} header", code=TRUNCATED)


# ----------------------------------------------------------------- parser requests
# Format parsers are generators.  They yield one of these requests and receive
# the answer (bytes, or None); the driver (HeaderParser) satisfies requests from
# what has been fed so far and suspends the generator until enough has arrived.
class _Read(NamedTuple):
    """Exactly ``n`` bytes at the current position (consumed)."""

    n: int


class _Peek(NamedTuple):
    """Everything buffered at the current position, once at least ``n`` bytes are
    there (fewer only at end of input).  Nothing is consumed."""

    n: int


class _Skip(NamedTuple):
    """Advance ``n`` bytes without looking at them (a seek for the caller)."""

    n: int


class _Found(NamedTuple):
    """The size is known; the parser reads on only for the orientation."""

    result: ProbeResult


_Request = _Read | _Peek | _Skip | _Found
_Parser = Generator[_Request, Any, ProbeResult]


# --------------------------------------------------------------------------- driver
class HeaderParser:
    """Incremental header parser.  See the module docstring."""

    def __init__(self, *, svg_limit: int = DEFAULT_SVG_LIMIT) -> None:
        self._format = "image"
        self._gen: _Parser = _probe(svg_limit, self._set_format)
        self._buf = bytearray()
        #: Absolute offset of ``_buf[0]`` (== the generator's position).
        self._buf_start = 0
        #: Absolute offset just past the last byte fed.
        self._fed_end = 0
        #: Incoming bytes still to drop (a pending skip); ``_buf`` is empty then.
        self._skip = 0
        self._used = 0
        self._eof = False
        self._result: ProbeResult | None = None
        self._provisional: ProbeResult | None = None
        self._error: BaseException | None = None
        self._request: _Request = next(self._gen)

    # ------------------------------------------------------------------ public
    @property
    def result(self) -> ProbeResult | None:
        """The final result, once known."""
        return self._result

    @property
    def provisional(self) -> ProbeResult | None:
        """The size, once known, while the parser still reads for the orientation."""
        return self._result or self._provisional

    @property
    def position(self) -> int:
        """Absolute offset of the next byte :meth:`feed` expects."""
        return self._fed_end

    @property
    def next_needed(self) -> int:
        """Absolute offset of the first byte the parser still needs.

        Greater than :attr:`position` while it skips; a caller that can seek may
        jump there with :meth:`seek`.
        """
        return self._fed_end + self._skip

    @property
    def bytes_used(self) -> int:
        """End offset of the last byte the parser looked at (the prefix it needed)."""
        return self._used

    def seek(self, offset: int) -> None:
        """The next :meth:`feed` starts at absolute ``offset`` (a forward jump).

        ``offset`` must lie between :attr:`position` and :attr:`next_needed`.
        """
        if not self._fed_end <= offset <= self.next_needed:
            raise ValueError(
                f"cannot seek to {offset}: position {self._fed_end}, next needed {self.next_needed}"
            )
        self._skip -= offset - self._fed_end
        self._fed_end = offset

    def feed(self, chunk: bytes | bytearray | memoryview) -> ProbeResult | None:
        """Take the next bytes; return the result once the size is known."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        if self._eof:
            raise ValueError("feed() after finish()")
        view = memoryview(chunk).cast("B")
        self._fed_end += len(view)
        if self._skip:
            if len(view) <= self._skip:
                self._skip -= len(view)
                return None
            view = view[self._skip :]
            self._skip = 0
        self._buf += view
        return self._run()

    def finish(self) -> ProbeResult:
        """End of input: the result, or raise (see the module docstring)."""
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        self._eof = True
        result = self._run()
        assert result is not None
        return result

    # ----------------------------------------------------------------- driving
    def _run(self) -> ProbeResult | None:
        try:
            return self._step()
        except BaseException as exc:
            self._error = exc
            self._gen.close()
            raise

    def _step(self) -> ProbeResult | None:
        while True:
            request = self._request
            answer: bytes | None = None
            if isinstance(request, _Read):
                if len(self._buf) < request.n:
                    return self._starved()
                answer = bytes(self._buf[: request.n])
                del self._buf[: request.n]
                self._buf_start += request.n
                self._used = max(self._used, self._buf_start)
            elif isinstance(request, _Peek):
                if len(self._buf) < request.n and not self._eof:
                    return None
                # Not counted in bytes_used: a peek may ask for more than the format
                # needs (the prefix grows by doubling); what it needs it then reads.
                answer = bytes(self._buf)
            elif isinstance(request, _Skip):
                if request.n < 0:
                    raise InvalidImage("header points backwards")
                take = min(request.n, len(self._buf))
                del self._buf[:take]
                self._skip = request.n - take
                self._buf_start += request.n
                if self._skip and self._eof:
                    return self._starved()
            elif isinstance(request, _Found):
                self._provisional = request.result
            try:
                self._request = self._gen.send(answer)
            except StopIteration as stop:
                self._result = stop.value
                return self._result

    def _starved(self) -> ProbeResult | None:
        """Not enough data for the current request."""
        if not self._eof:
            return None
        if self._provisional is not None:
            # The size is known; the orientation data never came.  Keep the size.
            self._result = self._provisional
            return self._result
        raise _truncated(self._format)

    def _set_format(self, fmt: str) -> None:
        self._format = fmt


def probe_bytes(data: bytes | bytearray | memoryview) -> ProbeResult:
    """Parse a complete image held in memory (e.g. a base64 inline image)."""
    parser = HeaderParser()
    result = parser.feed(data)
    return result if result is not None else parser.finish()


# ------------------------------------------------------------------------ helpers
def _u16be(b: bytes, i: int = 0) -> int:
    return int.from_bytes(b[i : i + 2], "big")


def _u32be(b: bytes, i: int = 0) -> int:
    return int.from_bytes(b[i : i + 4], "big")


def _u16le(b: bytes, i: int = 0) -> int:
    return int.from_bytes(b[i : i + 2], "little")


def _u24le(b: bytes, i: int = 0) -> int:
    return int.from_bytes(b[i : i + 3], "little")


def _u32le(b: bytes, i: int = 0) -> int:
    return int.from_bytes(b[i : i + 4], "little")


# ----------------------------------------------------------------------- detection
def _prefix(data: bytes, sig: bytes) -> bool | None:
    """True: ``data`` starts with ``sig``; None: too short to say; False: no."""
    n = min(len(data), len(sig))
    if data[:n] != sig[:n]:
        return False
    return True if len(data) >= len(sig) else None


def _any_prefix(data: bytes, *sigs: bytes) -> bool | None:
    verdicts = [_prefix(data, sig) for sig in sigs]
    if True in verdicts:
        return True
    return None if None in verdicts else False


def _is_webp(d: bytes) -> bool | None:
    if _prefix(d, b"RIFF") is False:
        return False
    return _prefix(d[8:], b"WEBP") if len(d) > 8 else None


def _is_bmff(d: bytes) -> bool | None:
    # A 32-bit big-endian box size first: an ftyp box is never 64 KiB or more.
    if _prefix(d, b"\0\0") is False:
        return False
    return _prefix(d[4:], b"ftyp") if len(d) > 4 else None


_BMP_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})


def _is_bmp(d: bytes) -> bool | None:
    if _prefix(d, b"BM") is False:
        return False
    return _u32le(d, 14) in _BMP_HEADER_SIZES if len(d) >= 18 else None


def _is_ico(d: bytes) -> bool | None:
    if _any_prefix(d, b"\0\0\1\0", b"\0\0\2\0") is False:
        return False
    if len(d) < 8:
        return None
    return d[4:8] != b"ftyp" and 0 < _u16le(d, 4) <= MAX_ICO_ENTRIES


def _is_psd(d: bytes) -> bool | None:
    return _any_prefix(d, b"8BPS\0\1", b"8BPS\0\2")


_XML_SPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def _is_svg(d: bytes) -> bool | None:
    if _prefix(d, _BOM) is None:
        return None
    if d.startswith(_BOM):
        d = d[len(_BOM) :]
    d = d.lstrip(_XML_SPACE)
    if not d:
        return None
    return d[:1] == b"<"


#: (format, matcher) in the order they are tried.
_MATCHERS: tuple[tuple[str, Callable[[bytes], bool | None]], ...] = (
    ("png", lambda d: _prefix(d, b"\x89PNG\r\n\x1a\n")),
    ("jpeg", lambda d: _prefix(d, b"\xff\xd8\xff")),
    ("gif", lambda d: _any_prefix(d, b"GIF87a", b"GIF89a")),
    ("webp", _is_webp),
    ("bmff", _is_bmff),
    ("tiff", lambda d: _any_prefix(d, b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")),
    ("psd", _is_psd),
    ("bmp", _is_bmp),
    ("ico", _is_ico),
    ("svg", _is_svg),
)


def _detect(svg_limit: int) -> Generator[_Request, Any, str]:
    need = 1
    while True:
        data: bytes = yield _Peek(need)
        verdicts = [(fmt, match(data)) for fmt, match in _MATCHERS]
        for fmt, verdict in verdicts:
            if verdict:
                return fmt
        undecided = any(verdict is None for _, verdict in verdicts)
        if not undecided:
            raise UnsupportedFormat(f"not an image: first bytes {bytes(data[:8])!r}")
        if len(data) < need:  # end of input
            if not data:
                raise UnsupportedFormat("empty input is not an image")
            raise _truncated("image")
        if len(data) >= svg_limit:
            raise UnsupportedFormat(f"no markup in the first {svg_limit} bytes")
        need = _more(len(data), svg_limit)


def _probe(svg_limit: int, on_format: Callable[[str], None]) -> _Parser:
    fmt = yield from _detect(svg_limit)
    on_format(fmt)
    if fmt == "svg":
        return (yield from _parse_svg(svg_limit))
    return (yield from _PARSERS[fmt]())


# ---------------------------------------------------------------------- TIFF / EXIF
_TAG_WIDTH, _TAG_HEIGHT, _TAG_ORIENTATION = 256, 257, 274
_WANTED_TAGS = frozenset({_TAG_WIDTH, _TAG_HEIGHT, _TAG_ORIENTATION})


def _tiff_tags(limit: int | None) -> Generator[_Request, Any, tuple[dict[int, int] | None, int]]:
    """Read IFD0 of a TIFF structure starting at the current position.

    ``limit``: bytes available to the structure (an EXIF block), None for a whole
    TIFF file.  Returns ``(tags, consumed)``; tags holds the wanted integer tags,
    or is None when the structure is not TIFF or IFD0 lies outside ``limit``.
    Only moves forward: IFD0 always lies after the header.
    """
    if limit is not None and limit < 8:
        return None, 0
    head: bytes = yield _Read(8)
    order = {b"II": "little", b"MM": "big"}.get(head[:2])
    if order is None:
        return None, 8

    def uint(b: bytes) -> int:
        return int.from_bytes(b, order)  # type: ignore[arg-type]

    magic = uint(head[2:4])
    if magic == 42:
        pos, ifd, count_size, entry_size = 8, uint(head[4:8]), 2, 12
    elif magic == 43 and uint(head[4:6]) == 8:  # BigTIFF
        pos, ifd, count_size, entry_size = 16, uint((yield _Read(8))), 8, 20
    else:
        return None, 8
    if ifd < pos or (limit is not None and ifd + count_size > limit):
        return None, pos
    yield _Skip(ifd - pos)
    pos = ifd
    count = uint((yield _Read(count_size)))
    pos += count_size
    if not 0 < count <= MAX_IFD_ENTRIES:
        return None, pos
    if limit is not None and pos + count * entry_size > limit:
        return None, pos
    entries: bytes = yield _Read(count * entry_size)
    pos += count * entry_size
    tags: dict[int, int] = {}
    value_at = 8 if entry_size == 12 else 12
    for i in range(0, len(entries), entry_size):
        tag = uint(entries[i : i + 2])
        if tag not in _WANTED_TAGS or tag in tags:
            continue
        kind = uint(entries[i + 2 : i + 4])
        value = entries[i + value_at : i + entry_size]
        width = {3: 2, 4: 4, 16: 8}.get(kind)  # SHORT, LONG, LONG8
        if width is not None:
            tags[tag] = uint(value[:width])
    return tags, pos


def _parse_tiff() -> _Parser:
    fmt = "tiff"
    tags, _ = yield from _tiff_tags(None)
    if tags is None:
        raise InvalidImage("TIFF header or IFD0 offset is corrupt")
    if _TAG_WIDTH not in tags or _TAG_HEIGHT not in tags:
        raise InvalidImage(f"{fmt} IFD0 has no ImageWidth/ImageLength")
    return ProbeResult.build(fmt, tags[_TAG_WIDTH], tags[_TAG_HEIGHT], tags.get(_TAG_ORIENTATION, 1))


def _run_sync(gen: Generator[_Request, Any, Any], data: bytes) -> Any:
    """Drive a parser generator over bytes already in memory (None if they run out)."""
    pos = 0
    try:
        request = next(gen)
        while True:
            if isinstance(request, _Read):
                if pos + request.n > len(data):
                    return None
                answer: bytes | None = data[pos : pos + request.n]
                pos += request.n
            elif isinstance(request, _Peek):
                answer = data[pos:]
            elif isinstance(request, _Skip):
                pos += request.n
                answer = None
            else:
                answer = None
            request = gen.send(answer)
    except StopIteration as stop:
        return stop.value
    finally:
        gen.close()


# ------------------------------------------------------------------- simple formats
def _parse_png() -> _Parser:
    fmt = "png"
    head: bytes = yield _Read(16)
    length, kind = _u32be(head, 8), head[12:16]
    if kind == b"CgBI":  # Apple's "optimised" PNG: one extra chunk before IHDR
        yield _Skip(length + 4)
        chunk: bytes = yield _Read(8)
        kind = chunk[4:8]
    if kind != b"IHDR":
        raise InvalidImage(f"{fmt}: first chunk is {kind!r}, not IHDR")
    size: bytes = yield _Read(8)
    return ProbeResult.build(fmt, _u32be(size, 0), _u32be(size, 4))


def _parse_gif() -> _Parser:
    fmt = "gif"
    head: bytes = yield _Read(10)
    return ProbeResult.build(fmt, _u16le(head, 6), _u16le(head, 8))


def _parse_bmp() -> _Parser:
    fmt = "bmp"
    head: bytes = yield _Read(18)
    if _u32le(head, 14) == 12:  # BITMAPCOREHEADER (OS/2 v1, "v2"): 16-bit sizes
        dims: bytes = yield _Read(4)
        return ProbeResult.build(fmt, _u16le(dims, 0), _u16le(dims, 2))
    dims = yield _Read(8)
    width, height = struct.unpack("<ii", dims)
    return ProbeResult.build(fmt, width, abs(height))  # negative height: top-down rows


def _parse_psd() -> _Parser:
    fmt = "psd"
    head: bytes = yield _Read(22)
    return ProbeResult.build(fmt, _u32be(head, 18), _u32be(head, 14))


def _parse_ico() -> _Parser:
    head: bytes = yield _Read(6)
    fmt = "ico" if head[2] == 1 else "cur"
    count = _u16le(head, 4)
    entries: bytes = yield _Read(16 * count)
    best = (0, 0)
    for i in range(0, len(entries), 16):
        width, height = entries[i] or 256, entries[i + 1] or 256
        if width * height > best[0] * best[1]:
            best = (width, height)
    return ProbeResult.build(fmt, *best)


# --------------------------------------------------------------------------- JPEG
#: Start-of-frame markers: baseline, extended, progressive, lossless, arithmetic.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _parse_jpeg() -> _Parser:
    fmt = "jpeg"
    yield _Read(2)  # SOI
    orientation: int | None = None
    while True:
        if (yield _Read(1)) != b"\xff":
            raise InvalidImage(f"{fmt}: expected a marker")
        marker = 0xFF
        while marker == 0xFF:  # fill bytes
            marker = (yield _Read(1))[0]
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            continue
        if marker in (0xD8, 0xD9, 0xDA):
            raise InvalidImage(f"{fmt}: marker {marker:#04x} before any frame header")
        length = _u16be((yield _Read(2)))
        if length < 2:
            raise InvalidImage(f"{fmt}: segment length {length}")
        body = length - 2
        if marker in _SOF_MARKERS:
            if body < 5:
                raise InvalidImage(f"{fmt}: short frame header")
            frame: bytes = yield _Read(5)
            return ProbeResult.build(fmt, _u16be(frame, 3), _u16be(frame, 1), orientation or 1)
        if marker == 0xE1 and orientation is None and body >= 14:
            ident: bytes = yield _Read(6)
            body -= 6
            if ident == b"Exif\0\0":
                tags, used = yield from _tiff_tags(body)
                orientation = (tags or {}).get(_TAG_ORIENTATION, 1)
                body -= used
        yield _Skip(body)


# --------------------------------------------------------------------------- WebP
def _parse_webp() -> _Parser:
    fmt = "webp"
    yield _Read(12)  # RIFF, size, WEBP
    chunk: bytes = yield _Read(8)
    kind, size = chunk[:4], _u32le(chunk, 4)
    if kind == b"VP8 ":
        frame: bytes = yield _Read(10)
        if frame[3:6] != b"\x9d\x01\x2a":
            raise InvalidImage(f"{fmt}: VP8 start code missing (not a key frame)")
        return ProbeResult.build(fmt, _u16le(frame, 6) & 0x3FFF, _u16le(frame, 8) & 0x3FFF)
    if kind == b"VP8L":
        head: bytes = yield _Read(5)
        if head[0] != 0x2F:
            raise InvalidImage(f"{fmt}: VP8L signature missing")
        bits = _u32le(head, 1)
        return ProbeResult.build(fmt, (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind != b"VP8X" or size < 10:
        raise InvalidImage(f"{fmt}: unexpected first chunk {kind!r}")
    head = yield _Read(10)
    result = ProbeResult.build(fmt, _u24le(head, 4) + 1, _u24le(head, 7) + 1)
    if not head[0] & 0x08:  # no EXIF flag: nothing more to learn
        return result
    # The EXIF chunk comes after the bitstream: walk the chunk headers, skipping
    # (or, for a caller that can, seeking over) everything else.
    yield _Found(result)
    yield _Skip(size - 10 + (size & 1))
    for _ in range(MAX_WEBP_CHUNKS):
        chunk = yield _Read(8)
        kind, size = chunk[:4], _u32le(chunk, 4)
        if kind == b"EXIF":
            lead: bytes = yield _Peek(6)
            if lead[:6] == b"Exif\0\0":  # some writers keep the JPEG APP1 prefix
                yield _Read(6)
                size -= 6
            tags, _ = yield from _tiff_tags(size)
            return result.with_orientation((tags or {}).get(_TAG_ORIENTATION))
        yield _Skip(size + (size & 1))
    return result


# ---------------------------------------------------------------------------- SVG
_ROOT_NAME = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
_ATTRIBUTE = re.compile(r"""([A-Za-z_:][\w.:-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_LENGTH = re.compile(r"\s*([+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(px)?\s*$")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


_OPENERS = ("<?", "<!--", "<!DOCTYPE")


class _NeedMore(Exception):
    pass


def _svg_root_tag(text: str) -> tuple[str, int]:
    """Find the root element's opening tag; returns (tag text, end index)."""
    i = 3 if text.startswith("\xef\xbb\xbf") else 0  # UTF-8 BOM, read as latin-1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i >= n:
            raise _NeedMore
        if text[i] != "<":
            raise UnsupportedFormat("not an image: text that is not XML")
        if text.startswith("<?", i):
            end = text.find("?>", i + 2)
            if end < 0:
                raise _NeedMore
            i = end + 2
        elif text.startswith("<!--", i):
            end = text.find("-->", i + 4)
            if end < 0:
                raise _NeedMore
            i = end + 3
        elif text[i : i + 9].upper() == "<!DOCTYPE":
            close = text.find(">", i)
            subset = text.find("[", i)
            if 0 <= subset < close:  # internal subset: [...]>
                subset_end = text.find("]", subset)
                close = text.find(">", subset_end) if subset_end >= 0 else -1
            if close < 0:
                raise _NeedMore
            i = close + 1
        elif any(n - i < len(o) and o.startswith(text[i:].upper()) for o in _OPENERS):
            raise _NeedMore
        elif text.startswith("<!", i):
            raise UnsupportedFormat("not an image: markup without a root element")
        else:
            break
    match = _ROOT_NAME.match(text, i)
    if match is None:
        if n - i == 1:
            raise _NeedMore
        raise UnsupportedFormat("not an image: malformed markup")
    if match.end() >= n:
        raise _NeedMore
    if match.group(1) != "svg":
        raise UnsupportedFormat(f"not an image: markup with root <{match.group(1)}>")
    quote = ""
    for j in range(match.end(), n):
        char = text[j]
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == ">":
            return text[i : j + 1], j + 1
    raise _NeedMore


def _svg_size(tag: str) -> tuple[int, int]:
    attrs = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _ATTRIBUTE.finditer(tag)}

    def length(name: str) -> float | None:
        match = _LENGTH.match(attrs.get(name, ""))
        value = float(match.group(1)) if match else None
        return value if value else None  # 0 and unusable units alike

    width, height = length("width"), length("height")
    box = [float(x) for x in _NUMBER.findall(attrs.get("viewBox", ""))]
    ratio = box[2] / box[3] if len(box) == 4 and box[2] > 0 and box[3] > 0 else None
    if width is None and height is None and ratio is not None:
        width, height = box[2], box[3]
    elif width is None and height is not None and ratio is not None:
        width = height * ratio
    elif height is None and width is not None and ratio is not None:
        height = width / ratio
    if width is None or height is None:
        raise UnsupportedFormat("SVG root has no usable width/height or viewBox")
    return max(1, int(width + 0.5)), max(1, int(height + 0.5))


def _parse_svg(limit: int) -> _Parser:
    fmt = "svg"
    need = 1
    while True:
        data: bytes = yield _Peek(need)
        window = data[:limit]
        try:
            # latin-1: one character per byte, so indices are byte offsets; the
            # markup and the attributes we read are ASCII.
            tag, end = _svg_root_tag(window.decode("latin-1"))
        except _NeedMore:
            if len(data) < need:
                raise _truncated(fmt) from None
            if len(data) >= limit:
                raise UnsupportedFormat(f"no <svg> root tag within the first {limit} bytes") from None
            need = _more(len(data), limit)
            continue
        break
    yield _Read(end)
    return ProbeResult.build(fmt, *_svg_size(tag))


# ------------------------------------------------------------- ISO BMFF (AVIF/HEIF)
def _classify_brands(ftyp: bytes) -> str:
    major = ftyp[:4]
    brands = {major} | {ftyp[i : i + 4] for i in range(8, len(ftyp) - 3, 4)}
    if major in (b"avif", b"avis"):
        return "avif"
    if major in (b"heic", b"heix", b"hevc", b"hevx"):
        return "heic"
    if brands & {b"avif", b"avis"}:
        return "avif"
    if brands & {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}:
        return "heif"
    raise UnsupportedFormat(f"ISO BMFF file with brands {sorted(b.decode('latin-1') for b in brands)} is not AVIF/HEIF")


def _boxes(data: bytes, start: int = 0) -> Generator[tuple[bytes, bytes], None, None]:
    """Child boxes (type, body) of an in-memory box body."""
    i = start
    while i + 8 <= len(data):
        size, kind, header = _u32be(data, i), data[i + 4 : i + 8], 8
        if size == 1:
            size, header = int.from_bytes(data[i + 8 : i + 16], "big"), 16
        elif size == 0:
            size = len(data) - i
        if size < header or i + size > len(data):
            raise InvalidImage(f"box {kind!r} overruns its parent")
        yield kind, data[i + header : i + size]
        i += size


class _Cursor:
    """Bounds-checked big-endian reads over a box body."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def uint(self, size: int) -> int:
        if size == 0:
            return 0
        if self.pos + size > len(self.data):
            raise InvalidImage("box shorter than its fields")
        value = int.from_bytes(self.data[self.pos : self.pos + size], "big")
        self.pos += size
        return value


class _Meta(NamedTuple):
    size: tuple[int, int] | None
    #: ('irot', angle) / ('imir', axis), in association order.
    transforms: list[tuple[bytes, int]]
    #: (absolute offset, length) of the Exif item, if one is stored in the file.
    exif: tuple[int, int] | None


def _parse_meta(meta: bytes) -> _Meta:
    primary: int | None = None
    item_types: dict[int, bytes] = {}
    locations: dict[int, tuple[int, int]] = {}
    properties: list[tuple[bytes, bytes]] = []
    associations: dict[int, list[int]] = {}
    for kind, body in _boxes(meta, 4):  # meta is a full box: skip version+flags
        cur = _Cursor(body)
        if kind == b"pitm":
            version = cur.uint(1)
            cur.uint(3)
            primary = cur.uint(2 if version == 0 else 4)
        elif kind == b"iinf":
            version = cur.uint(1)
            cur.uint(3)
            cur.uint(2 if version == 0 else 4)
            for child, infe in _boxes(body, cur.pos):
                if child != b"infe" or len(infe) < 4 or infe[0] < 2:
                    continue
                c = _Cursor(infe, 4)
                item_id = c.uint(2 if infe[0] == 2 else 4)
                c.uint(2)  # protection index
                item_types[item_id] = infe[c.pos : c.pos + 4]
        elif kind == b"iloc":
            version = cur.uint(1)
            cur.uint(3)
            sizes = cur.uint(1)
            offset_size, length_size = sizes >> 4, sizes & 15
            sizes = cur.uint(1)
            base_size, index_size = sizes >> 4, (sizes & 15 if version in (1, 2) else 0)
            budget = MAX_ILOC_EXTENTS
            for _ in range(cur.uint(4 if version == 2 else 2)):
                item_id = cur.uint(4 if version == 2 else 2)
                method = cur.uint(2) & 15 if version in (1, 2) else 0
                reference = cur.uint(2)
                base = cur.uint(base_size)
                extents = []
                count = cur.uint(2)
                budget -= count
                if budget < 0:
                    raise InvalidImage(f"iloc box lists more than {MAX_ILOC_EXTENTS} extents")
                for _ in range(count):
                    cur.uint(index_size)
                    extents.append((cur.uint(offset_size), cur.uint(length_size)))
                if method == 0 and reference == 0 and len(extents) == 1:
                    locations[item_id] = (base + extents[0][0], extents[0][1])
        elif kind == b"iprp":
            for child, child_body in _boxes(body):
                if child == b"ipco":
                    properties.extend(_boxes(child_body))
                elif child == b"ipma":
                    c = _Cursor(child_body)
                    version = c.uint(1)
                    flags = c.uint(3)
                    for _ in range(c.uint(4)):
                        item_id = c.uint(2 if version < 1 else 4)
                        indices = associations.setdefault(item_id, [])
                        for _ in range(c.uint(1)):
                            if flags & 1:
                                indices.append(c.uint(2) & 0x7FFF)
                            else:
                                indices.append(c.uint(1) & 0x7F)

    if primary is None and item_types:
        primary = min(item_types)
    if primary is not None and primary in associations:
        mine = [properties[i - 1] for i in associations[primary] if 0 < i <= len(properties)]
    else:  # no associations: every property is a candidate (as in simple files)
        mine = properties
    sizes = [(_u32be(body, 4), _u32be(body, 8)) for kind, body in mine if kind == b"ispe" and len(body) >= 12]
    if not sizes:  # the primary item has no ispe (odd): take the largest in the file
        sizes = [(_u32be(b, 4), _u32be(b, 8)) for k, b in properties if k == b"ispe" and len(b) >= 12]
    transforms = [
        (kind, body[0] & (3 if kind == b"irot" else 1))
        for kind, body in mine
        if kind in (b"irot", b"imir") and body
    ]
    exif = next((locations.get(i) for i, t in item_types.items() if t == b"Exif"), None)
    size = max(sizes, key=lambda s: (max(s), min(s))) if sizes else None
    return _Meta(size, transforms, exif)


# The eight EXIF orientations, as what each does to a stored 2x2 image [[a, b], [c, d]]
# to display it.  Used to turn HEIF irot/imir transforms into an orientation.
_IDENTITY = ("a", "b", "c", "d")
_ORIENTATION_OF = {
    ("a", "b", "c", "d"): 1,  # as stored
    ("b", "a", "d", "c"): 2,  # mirror left-right
    ("d", "c", "b", "a"): 3,  # rotate 180
    ("c", "d", "a", "b"): 4,  # mirror top-bottom
    ("a", "c", "b", "d"): 5,  # transpose
    ("c", "a", "d", "b"): 6,  # rotate 90 clockwise
    ("d", "b", "c", "a"): 7,  # transverse
    ("b", "d", "a", "c"): 8,  # rotate 90 anticlockwise
}


def _rotate_ccw(m: tuple[str, ...]) -> tuple[str, ...]:
    a, b, c, d = m
    return (b, d, a, c)


def _orientation_from_transforms(transforms: list[tuple[bytes, int]]) -> int:
    """irot (anticlockwise quarter turns) and imir (axis 0: top-bottom, 1: left-right
    mirror, as libavif reads it), applied in association order."""
    m = _IDENTITY
    for kind, value in transforms:
        if kind == b"irot":
            for _ in range(value):
                m = _rotate_ccw(m)
        elif value == 0:
            m = (m[2], m[3], m[0], m[1])
        else:
            m = (m[1], m[0], m[3], m[2])
    return _ORIENTATION_OF[m]


#: Largest Exif item we read for its orientation.
MAX_EXIF_ITEM = 256 * 1024


def _parse_bmff() -> _Parser:
    fmt = "heif"
    head: bytes = yield _Read(8)
    size = _u32be(head)
    if not 16 <= size <= MAX_FTYP_BOX:
        raise InvalidImage(f"ftyp box of {size} bytes")
    fmt = _classify_brands((yield _Read(size - 8)))
    pos = size
    meta = b""
    for _ in range(MAX_TOP_LEVEL_BOXES):
        head = yield _Read(8)
        size, kind, header = _u32be(head), head[4:8], 8
        if size == 1:
            size, header = int.from_bytes((yield _Read(8)), "big"), 16
        if size == 0 or size < header:  # "to end of file" or corrupt: no meta ahead
            raise InvalidImage(f"{fmt}: top-level box {kind!r} before meta has size {size}")
        if kind == b"meta":
            if size > MAX_META_BOX:
                raise InvalidImage(f"{fmt}: meta box of {size} bytes")
            meta = yield _Read(size - header)
            pos += size
            break
        yield _Skip(size - header)
        pos += size
    else:
        raise InvalidImage(f"{fmt}: no meta box among the first {MAX_TOP_LEVEL_BOXES} boxes")
    try:
        info = _parse_meta(meta)
    except (IndexError, struct.error) as exc:
        raise InvalidImage(f"{fmt}: corrupt meta box ({exc})") from None
    if info.size is None:
        raise InvalidImage(f"{fmt}: no ispe property (image size)")
    result = ProbeResult.build(fmt, *info.size, _orientation_from_transforms(info.transforms))
    if info.transforms or info.exif is None:
        return result
    # No irot/imir: the Exif item may carry an orientation (as in Exif5-1.5x.avif).
    offset, length = info.exif
    if length < 12 or length > MAX_EXIF_ITEM:
        return result
    if offset < pos:  # inside what we have read: only the meta box is kept
        meta_start = pos - len(meta)
        if offset < meta_start or offset + length > pos:
            return result
        item = meta[offset - meta_start : offset - meta_start + length]
        skip = _u32be(item)
        if skip >= length - 4:
            return result
        parsed = _run_sync(_tiff_tags(length - 4 - skip), item[4 + skip :])
        tags = parsed[0] if parsed is not None else None
        return result.with_orientation((tags or {}).get(_TAG_ORIENTATION))
    yield _Found(result)
    yield _Skip(offset - pos)
    skip = _u32be((yield _Read(4)))  # exif_tiff_header_offset
    if skip >= length - 4:
        return result
    yield _Skip(skip)
    found, _ = yield from _tiff_tags(length - 4 - skip)
    return result.with_orientation((found or {}).get(_TAG_ORIENTATION))


_PARSERS: dict[str, Callable[[], _Parser]] = {
    "png": _parse_png,
    "jpeg": _parse_jpeg,
    "gif": _parse_gif,
    "bmp": _parse_bmp,
    "webp": _parse_webp,
    "tiff": _parse_tiff,
    "psd": _parse_psd,
    "ico": _parse_ico,
    "bmff": _parse_bmff,
}
