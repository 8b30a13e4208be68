"""How many bytes the dimension fetcher reads per format, measured in one run.

Generates large images of each format with Pillow (plus the AVIF/HEIC fixtures),
serves them from a local aiohttp server and fetches each with
``fetch_dimensions``; prints format, file size, bytes read, ratio and time.

    python bench/bench_dimension_bytes.py
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiohttp import web  # noqa: E402
from PIL import Image, features  # noqa: E402

from config.settings import Settings  # noqa: E402
from streams.dimensions.fetch import fetch_dimensions, make_session  # noqa: E402
from tests.support import serve_app, tiff_ifd_at_end  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "probe-image-size"


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def images() -> dict[str, bytes]:
    noise = Image.frombytes("RGB", (2000, 1500), os.urandom(2000 * 1500 * 3))
    small = noise.resize((1000, 750))
    exif6 = Image.Exif()
    exif6[274] = 6
    big_exif = Image.Exif()
    big_exif[274] = 6
    big_exif[0x010E] = "x" * 60_000
    made = {
        "png": _encode(noise, "PNG", compress_level=1),
        "jpeg baseline": _encode(noise, "JPEG", quality=90),
        "jpeg progressive": _encode(noise, "JPEG", quality=90, progressive=True),
        "jpeg + 60 KB EXIF": _encode(noise, "JPEG", quality=90, exif=big_exif.tobytes()),
        "gif": _encode(small.convert("P"), "GIF"),
        "bmp": _encode(noise, "BMP"),
        "webp lossy (VP8)": _encode(noise, "WEBP", quality=90, method=0),
        "webp lossless (VP8L)": _encode(small, "WEBP", lossless=True, method=0, quality=0),
        "webp VP8X + EXIF": _encode(noise, "WEBP", quality=90, method=0, exif=exif6.tobytes()),
        "tiff IFD at end": tiff_ifd_at_end(3000, 1000),
        "tiff IFD at end, no Range": b"",  # same file, Range refused (filled below)
        "ico": _encode(noise.resize((256, 256)), "ICO", sizes=[(16, 16), (64, 64), (256, 256)]),
    }
    made["tiff IFD at end, no Range"] = made["tiff IFD at end"]
    if features.check("avif"):
        made["avif (Pillow)"] = _encode(noise, "AVIF", quality=60, speed=10, exif=exif6.tobytes())
    for name in ("iojs_logo.avif", "Rot3Mir1-1.5x.avif", "Exif5-1.5x.avif", "image4.heic", "MIAF002.heic",
                 "empty.psd", "sample.svg", "google.ico"):
        made[f"fixture {name}"] = (FIXTURES / name).read_bytes()
    return made


async def main() -> None:
    files = images()
    keys = {f"f{i}": name for i, name in enumerate(files)}

    async def serve(request: web.Request) -> web.StreamResponse:
        name = keys[request.match_info["key"]]
        data = files[name]
        no_range = "no Range" in name
        headers = {"Accept-Ranges": "none" if no_range else "bytes", "Content-Type": "application/octet-stream"}
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range", ""))
        if match and not no_range:
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        try:
            await response.prepare(request)
            for i in range(0, len(data), 64 * 1024):
                await response.write(data[i : i + 64 * 1024])
        except ConnectionError:
            pass  # the fetcher closed early: that is the point
        return response

    app = web.Application()
    app.router.add_get("/{key}", serve)
    settings = Settings(fetch_allowlist=(ipaddress.ip_network("127.0.0.1/32"),), dimension_max_bytes=64 * 1024 * 1024)

    print(
        f"{'format':<27} {'size':>11} {'file bytes':>11} {'bytes_read':>11} {'ratio':>8} "
        f"{'hdr end':>9} {'ranges':>6} {'ms':>6}"
    )
    async with serve_app(app) as port, make_session(settings) as session:
        for key, name in keys.items():
            started = time.perf_counter()
            outcome = await fetch_dimensions(session, f"http://127.0.0.1:{port}/{key}", settings=settings)
            ms = (time.perf_counter() - started) * 1000
            size = len(files[name])
            dims = f"{outcome.width}x{outcome.height}" + ("" if outcome.orientation == 1 else f"@{outcome.orientation}")
            print(
                f"{name:<27} {dims:>11} {size:>11,} {outcome.bytes_read:>11,} "
                f"{outcome.bytes_read / size:>8.2%} {outcome.header_bytes:>9,} {outcome.range_requests:>6} {ms:>6.1f}"
            )
    print("bytes_read: body bytes pulled (16 KiB chunks); hdr end: end offset of the last byte the parser needed (past a Range jump for TIFF/WebP EXIF).")


if __name__ == "__main__":
    asyncio.run(main())
