"""Turning what a caller passes as "images" into what the service takes.

Pure functions (no network, no event loop), so they are unit-tested directly:

- :func:`load_images` — paths, bytes, ``(filename, bytes)`` pairs and http(s) URLs
  into :class:`ImageSource` values (files are read here);
- :func:`kafka_image_ref` / :func:`build_task_request` — the ``TaskRequest`` JSON
  for ``image-edit-requests``: URLs as ``url``, small images inline as base64
  ``data``; a large local image cannot travel over Kafka (see :func:`kafka_image_ref`);
- :func:`build_form` — the multipart body of ``POST /api/v1/image-edit/submit``;
- :func:`edit_params` — prompt + params into the ``edit_params`` object.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Union
from urllib.parse import unquote, urlsplit

import aiohttp

from producers.errors import InvalidInput

__all__ = [
    "ImageInput",
    "ImageSource",
    "build_form",
    "build_task_request",
    "edit_params",
    "extension_for",
    "is_url",
    "kafka_image_ref",
    "load_image",
    "load_images",
    "new_task_id",
]

#: What ``submit()`` accepts per image: a path, raw bytes, ``(filename, bytes)``, or
#: an ``http(s)://`` URL (as a ``str``).
ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, tuple[str, bytes]]

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def extension_for(head: bytes, default: str = ".bin") -> str:
    """A file extension for image bytes, from their signature (``.png``, ``.jpg``, ...)."""
    for signature, ext in _SIGNATURES:
        if head.startswith(signature):
            return ext
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return default


def is_url(value: object) -> bool:
    """True for an ``http://`` or ``https://`` URL given as a string."""
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def new_task_id() -> str:
    """A fresh task id (32 hex digits, like the HTTP API's)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class ImageSource:
    """One input image: local bytes, or a URL the worker fetches itself."""

    filename: str
    data: bytes | None = None
    url: str | None = None
    #: sha256 of the bytes once uploaded to the blob store (``POST /api/v1/blobs``).
    blob: str | None = None

    @property
    def size(self) -> int | None:
        return None if self.data is None else len(self.data)


def _url_filename(url: str, index: int) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name or f"image-{index}"


def load_image(item: ImageInput, index: int = 0) -> ImageSource:
    """One :data:`ImageInput` as an :class:`ImageSource` (reads files; blocking).

    Raises :class:`InvalidInput` (``file_not_found``, ``not_a_file``,
    ``unreadable_file``, ``empty_image``, ``invalid_image_input``)."""
    if isinstance(item, tuple):
        if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], (bytes, bytearray)):
            raise InvalidInput("an image tuple must be (filename, bytes)", code="invalid_image_input")
        filename, data = item[0], bytes(item[1])
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        filename = f"image-{index}{extension_for(data[:16])}"
    elif is_url(item):
        assert isinstance(item, str)
        return ImageSource(filename=_url_filename(item, index), url=item)
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidInput(f"no such file: {path}", code="file_not_found") from None
        except IsADirectoryError:
            raise InvalidInput(f"not a file: {path}", code="not_a_file") from None
        except OSError as exc:
            raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}", code="unreadable_file") from None
        filename = path.name
    else:
        raise InvalidInput(f"unsupported image input of type {type(item).__name__}; pass a path, bytes, "
                           "(filename, bytes) or an http(s) URL", code="invalid_image_input")
    if not data:
        raise InvalidInput(f"image {filename!r} is empty", code="empty_image")
    return ImageSource(filename=filename, data=data)


def load_images(items: ImageInput | Iterable[ImageInput]) -> list[ImageSource]:
    """Several images (a single path, bytes or URL is one image); at least one."""
    if isinstance(items, (str, bytes, bytearray, memoryview, tuple, os.PathLike)):
        items = [items]  # type: ignore[list-item]
    sources = [load_image(item, index) for index, item in enumerate(items)]  # type: ignore[union-attr]
    if not sources:
        raise InvalidInput("a task needs at least one image", code="no_images")
    return sources


def edit_params(prompt: str | None = None, params: Mapping[str, Any] | str | None = None) -> dict[str, Any]:
    """The ``edit_params`` object: ``params`` (a mapping or a JSON object string) with
    ``prompt`` set when given.  Without a prompt the edit type's preset template is used."""
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except ValueError as exc:
            raise InvalidInput(f"params are not valid JSON: {exc}", code="invalid_edit_params") from None
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidInput("params must be a JSON object", code="invalid_edit_params")
    out = dict(params)
    if prompt is not None:
        out["prompt"] = prompt
    return out


def kafka_image_ref(source: ImageSource, *, inline_limit: int) -> dict[str, str]:
    """The ``images[]`` entry of a TaskRequest for ``source``.

    A URL is passed as ``url`` (the worker fetches it); an uploaded image as ``blob``;
    local bytes up to ``inline_limit`` travel inline as base64 ``data``.  Larger local
    images must be uploaded first (the client does so: :meth:`ImageEditClient.submit`),
    else :class:`InvalidInput` (``upload_required``).
    """
    if source.url is not None:
        return {"filename": source.filename, "url": source.url}
    if source.blob is not None:
        return {"filename": source.filename, "blob": source.blob}
    assert source.data is not None
    if len(source.data) <= inline_limit:
        return {"filename": source.filename, "data": base64.b64encode(source.data).decode("ascii")}
    raise InvalidInput(
        f"{source.filename} is {len(source.data)} bytes, over the {inline_limit}-byte limit for images sent "
        f"inline over Kafka (IMAGESTREAM_INLINE_IMAGE_BYTES): upload it first (POST /api/v1/blobs)",
        code="upload_required",
    )


def build_task_request(
    *,
    task_id: str,
    edit_type: str,
    sources: Sequence[ImageSource],
    params: Mapping[str, Any],
    inline_limit: int,
    submitted_at: float | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The TaskRequest JSON object for ``image-edit-requests`` (key: ``task_id``)."""
    if not sources:
        raise InvalidInput("a task needs at least one image", code="no_images")
    request = {
        "task_id": task_id,
        "edit_type": edit_type,
        "edit_params": dict(params),
        "images": [kafka_image_ref(s, inline_limit=inline_limit) for s in sources],
        "submitted_at": time.time() if submitted_at is None else submitted_at,
    }
    if groups is not None:
        request["groups"] = [list(group) for group in groups]
    return request


def build_form(*, edit_type: str, sources: Sequence[ImageSource], params: Mapping[str, Any],
               groups: Sequence[Sequence[int]] | None = None) -> aiohttp.FormData:
    """The multipart body of ``POST /api/v1/image-edit/submit``: one ``images`` part
    per image, ``edit_type``, and ``edit_params`` as a JSON string (omitted when empty).

    Every source must carry bytes (URLs are fetched by the caller first)."""
    # Filenames as UTF-8 in the header (as browsers send them, RFC 7578 §4.2): with
    # aiohttp's default percent-encoding the server would see "%E5%9B%BE.png".
    form = aiohttp.FormData(quote_fields=False)
    for source in sources:
        if source.data is None:
            raise InvalidInput(f"{source.filename}: only local bytes can be uploaded", code="invalid_image_input")
        form.add_field("images", source.data, filename=source.filename, content_type="application/octet-stream")
    form.add_field("edit_type", edit_type)
    if params:
        form.add_field("edit_params", json.dumps(dict(params), ensure_ascii=False))
    if groups is not None:
        form.add_field("groups", json.dumps([list(group) for group in groups]))
    return form
