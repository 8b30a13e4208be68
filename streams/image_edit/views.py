"""HTTP API of the image-edit pipeline (DESIGN.md §8).

``POST /api/v1/image-edit/submit`` validates everything it can before anything is
enqueued (a bad task gets a 400 naming the problem and is never published), stores
the images in the blob store and publishes one ``TaskRequest``.  Reads of a task go
to the worker that owns its partition (``table_route``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import faust
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from streams.app import app, settings
from streams.blob_sharing import sharing
from streams.blobs import BlobError, BlobNotFound, is_sha256, sniff_mime
from streams.errors import ImageTooLarge, InputError, InvalidRequest
from streams.image_edit.images import inspect_image_in_thread, recent_images
from streams.image_edit.models import ImageJobBatch, ImageRef, TaskRequest
from streams.image_edit.presets import load_presets
from streams.publish import publish
from streams.routing import ROUTED_HEADER, forward, not_ready, owner_of
from streams.runtime import runtime
from streams.image_edit.tables import current_status, task_status
from config.catalogue import load_catalogue
from streams.image_edit.validation import validate_edit_request, validate_groups
from streams.stats import metrics
from streams.topics import image_edit_jobs_topic, image_edit_requests_topic
from streams.web import error_response, readiness

__all__ = ["Submission", "read_submission"]

#: Read uploads in pieces of this size (the cap is checked as they arrive).
_CHUNK = 256 * 1024
#: Images inspected (decoded, hashed) at once while a submission is checked.
_INSPECT_PARALLELISM = 4


@dataclass
class Submission:
    """The fields of a multipart submit request."""

    edit_type: str | None = None
    edit_params: str | None = None
    groups: str | None = None
    files: list[tuple[str, bytes]] = field(default_factory=list)


async def _read_part(part: BodyPartReader, limit: int, what: str) -> bytes:
    """A part's body, refused with 413 as soon as it grows past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(f"{what} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_submission(request: web.Request) -> Submission:
    """Stream the multipart body: ``images`` files, ``edit_type``, ``edit_params``."""
    length = request.content_length
    if length is not None and length > settings.max_request_bytes:
        raise ImageTooLarge(f"request body of {length} bytes is over the {settings.max_request_bytes} limit")
    submission = Submission()
    if request.content_type == "application/x-www-form-urlencoded":
        # A form without files (curl -d): fields only, so the error is about the images.
        form = await request.post()
        submission.edit_type = _form_text(form.get("edit_type"))
        submission.edit_params = _form_text(form.get("edit_params"))
        submission.groups = _form_text(form.get("groups"))
        return submission
    if not (request.content_type or "").startswith("multipart/"):
        raise InvalidRequest("expected multipart/form-data with images, edit_type, edit_params",
                             code="invalid_content_type")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("nested multipart is not supported", code="invalid_multipart")
            name = part.name
            if name in ("images", "image", "images[]"):
                filename = part.filename or f"image-{len(submission.files)}"
                if len(submission.files) >= settings.max_images_per_task:
                    raise InvalidRequest(f"more than {settings.max_images_per_task} images in one task",
                                         code="too_many_images")
                data = await _read_part(part, settings.max_image_bytes, f"image {filename!r}")
                submission.files.append((filename, data))
            elif name in ("edit_type", "edit_params", "groups"):
                text = (await _read_part(part, 64 * 1024, name)).decode("utf-8", errors="replace")
                setattr(submission, name, text)
            else:
                await _read_part(part, 64 * 1024, f"field {name!r}")  # read and ignore
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError) as exc:
        # aiohttp raises these for malformed boundaries and part headers.
        raise InvalidRequest(f"malformed multipart body: {exc}", code="invalid_multipart") from None
    return submission


def _form_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


async def _inspect_all(files: list[tuple[str, bytes]]) -> list[Any]:
    gate = asyncio.Semaphore(_INSPECT_PARALLELISM)

    async def inspect(filename: str, data: bytes) -> Any:
        async with gate:
            try:
                info = await inspect_image_in_thread(
                    data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
                )
            except InputError as exc:
                raise type(exc)(f"{filename}: {exc.message}", code=exc.code) from None
            recent_images.put(info)  # the plan agent of this worker will not decode it again
            return info

    return await asyncio.gather(*(inspect(name, data) for name, data in files))


@app.page("/api/v1/image-edit/submit")
class SubmitTask(faust.web.View):
    """Accept a task: 202 ``{task_id, status, total_images}``."""

    async def post(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        sharing.check_shared()  # an upload here must be readable by whichever worker edits it
        submission = await read_submission(request)
        edit = validate_edit_request(
            submission.edit_type,
            submission.edit_params,
            len(submission.files),
            settings,
            load_presets(),
        )
        groups = validate_groups(submission.groups, len(submission.files),
                                 load_catalogue().model(edit.model).max_images)
        infos = await _inspect_all(submission.files)
        blobs = runtime().blobs
        # Every image is validated before any is stored; then all are written at once.
        shas = await asyncio.gather(*(blobs.put(data, info.sha256)
                                      for (_, data), info in zip(submission.files, infos, strict=True)))
        refs = [ImageRef(filename=filename, blob=sha) for (filename, _), sha in zip(submission.files, shas, strict=True)]
        task_id = uuid.uuid4().hex
        task = TaskRequest(
            task_id=task_id,
            edit_type=edit.edit_type,
            edit_params={**edit.params, "prompt": edit.prompt, "model": edit.model},
            images=refs,
            submitted_at=time.time(),
            groups=groups,
        )
        # 202 only once the broker has the request (acks=all): a worker killed right
        # after answering must not lose an accepted task.  Costs one broker round trip.
        await (await image_edit_requests_topic.send(key=task_id, value=task))
        metrics.inc("tasks_submitted_total", source="http")
        metrics.inc("submit_seconds_total", time.perf_counter() - started)
        return self.json({"task_id": task_id, "status": "pending", "total_images": len(groups or refs)},
                         status=202)


@app.page("/api/v1/image-edit/task/{task_id}")
class TaskStatusView(faust.web.View):
    """The task's status, answered by the worker that owns its partition."""

    async def get(self, request: web.Request, task_id: str) -> web.Response:
        if not readiness.ready:
            return not_ready()
        if ROUTED_HEADER not in request.headers:
            try:
                dest = owner_of(task_status, task_id)
            except KeyError:
                return not_ready()
            if dest is not None:
                return await forward(request, dest)
        status = current_status(task_id)
        if status is None:
            return error_response(404, "task_not_found", f"no task {task_id!r}")
        return self.json(status.asdict())


@app.page("/api/v1/cache/{cache_key}")
class CacheEntryView(faust.web.View):
    """Invalidate one cached edit (the next job for that key calls the upstream again)."""

    async def delete(self, request: web.Request, cache_key: str) -> web.Response:
        if not is_sha256(cache_key):
            return error_response(400, "invalid_cache_key", "cache keys are lowercase hex sha256 digests")
        batch = ImageJobBatch(jobs=[], invalidate=[cache_key])
        # Views never write tables: the partition owning the key applies it.
        await publish(image_edit_jobs_topic, cache_key, batch)
        return self.json({"cache_key": cache_key, "status": "invalidation_enqueued"}, status=202)


@app.page("/api/v1/blobs")
class UploadBlob(faust.web.View):
    """Upload one input image (raw body); 201 ``{sha256, size, format, width, height}``.

    For clients that publish tasks to Kafka themselves: images too large to travel
    inline are uploaded here first and referenced as ``{"blob": sha256}``.  Checked
    like a submitted image (format, size, pixels) before it is stored.
    """

    async def post(self, request: web.Request) -> web.Response:
        sharing.check_shared()
        limit = settings.max_image_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ImageTooLarge(f"image of {request.content_length} bytes is over the {limit} limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ImageTooLarge(f"image is over the {limit} limit")
            chunks.append(chunk)
        data = b"".join(chunks)
        info = await inspect_image_in_thread(data, max_bytes=limit, max_pixels=settings.max_image_pixels)
        recent_images.put(info)
        sha = await runtime().blobs.put(data, info.sha256)
        return self.json({"sha256": sha, "size": info.size_bytes, "format": info.format,
                          "width": info.width, "height": info.height}, status=201)


@app.page("/api/v1/blobs/{sha256}")
class BlobView(faust.web.View):
    """Bytes of an input or result image, by content hash (immutable, cacheable).

    Streamed from whichever blob store the worker has (local folder or S3), or, with
    ``IMAGESTREAM_BLOB_PRESIGN`` on an S3 store, a 302 to a presigned URL of the object.
    """

    async def get(self, request: web.Request, sha256: str) -> web.StreamResponse:
        if not is_sha256(sha256):
            return error_response(400, "invalid_blob_id", "blob ids are lowercase hex sha256 digests")
        blobs = runtime().blobs
        etag = f'"{sha256}"'
        try:
            if settings.blob_presign:
                url = await blobs.presigned_url(sha256, settings.blob_presign_ttl)
                if url is not None:
                    if not await blobs.exists(sha256):
                        return error_response(404, "blob_not_found", f"no blob {sha256}")
                    max_age = int(min(300.0, settings.blob_presign_ttl / 2))
                    return web.Response(status=302, headers={"Location": url, "Cache-Control": f"private, max-age={max_age}"})
            if etag in request.headers.get("If-None-Match", ""):
                if await blobs.exists(sha256):
                    return web.Response(status=304, headers={"ETag": etag})
            stream = await blobs.open_stream(sha256)
        except BlobNotFound:
            return error_response(404, "blob_not_found", f"no blob {sha256}")
        except BlobError as exc:
            return error_response(exc.status, exc.code, exc.message)
        async with stream:
            first = b""
            async for first in stream.chunks:
                break
            response = web.StreamResponse(
                headers={
                    "Content-Type": sniff_mime(first[:16]),
                    "Cache-Control": "public, max-age=31536000, immutable",
                    "ETag": etag,
                }
            )
            response.content_length = stream.size
            await response.prepare(request)
            if request.method != "HEAD":
                if first:
                    await response.write(first)
                async for chunk in stream.chunks:
                    await response.write(chunk)
            await response.write_eof()
        return response

