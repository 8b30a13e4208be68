"""The async client library: :class:`ImageEditClient` and :class:`DimensionClient`.

::

    from producers import ImageEditClient

    async with ImageEditClient() as client:                     # settings from IMAGESTREAM_* env
        task = await client.submit(["a.jpg", "b.png"], "enhance", prompt="提升画质")
        async for result in client.results(task.task_id):      # as each image finishes
            print(result.index, result.status, result.from_cache)
        final = await client.wait(task.task_id)                 # the final TaskStatus
        for result in final.results:
            await client.download(result, "out/")

Submitting goes over HTTP (multipart upload, the default) or straight to Kafka
(``via="kafka"``: a TaskRequest on ``<prefix>image-edit-requests``).  Waiting follows
the ``image-edit-task-status`` / ``image-edit-results`` topics from their end for
the task's key and reads the task once over HTTP right after subscribing, so no
result that arrived in between is missed; if Kafka cannot be reached it polls the
HTTP API instead.  Errors are the classes of :mod:`producers.errors`.

Neither client imports the Faust app: they only need ``config.settings``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, Union

from yarl import URL

from config.settings import Settings, SettingsError
from producers._http import HttpApi
from producers._kafka import Follower, KafkaIO
from producers.errors import (
    ApiError,
    ImagestreamClientError,
    InvalidInput,
    TaskFailed,
    TaskNotFound,
    Timeout,
    Unreachable,
)
from producers.images import (
    ImageInput,
    ImageSource,
    build_form,
    build_task_request,
    edit_params,
    extension_for,
    load_images,
    new_task_id,
)
from producers.models import DimensionResult, ImageResult, TaskHandle, TaskStatus

__all__ = ["ClientConfig", "DimensionClient", "ImageEditClient", "TaskEvent", "dimension_key"]

log = logging.getLogger(__name__)

#: What :meth:`ImageEditClient.events` yields.
TaskEvent = Union[ImageResult, TaskStatus]

_C = TypeVar("_C", bound="_BaseClient")

#: Items per ``POST /api/v1/dimensions/batch`` (the worker's default
#: ``IMAGESTREAM_DIMENSION_BATCH_MAX``); :meth:`DimensionClient.lookup_many` splits
#: longer lists.
BATCH_SIZE = 256


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Where and how a client reaches imagestream.  Build it with :meth:`from_settings`
    (the ``IMAGESTREAM_*`` environment) or directly."""

    #: Base URL of the HTTP API (``IMAGESTREAM_API_URL``).
    api_url: str = "http://127.0.0.1:6066"
    #: Kafka bootstrap servers (``IMAGESTREAM_KAFKA_BOOTSTRAP``); empty: never use Kafka
    #: (submit over HTTP, wait by polling).
    kafka_bootstrap: str = "127.0.0.1:9092"
    #: Prepended to topic names (``IMAGESTREAM_TOPIC_PREFIX``).
    topic_prefix: str = ""
    #: Bearer token for the HTTP API (``IMAGESTREAM_API_TOKEN``).
    api_token: str | None = None
    #: Local images up to this many bytes travel inline over Kafka (``IMAGESTREAM_INLINE_IMAGE_BYTES``).
    inline_image_bytes: int = 64 * 1024
    #: Largest image fetched from a URL to upload it over HTTP.
    max_image_bytes: int = 10 * 1024 * 1024
    #: Seconds for one HTTP request (an upload of a whole task included).
    request_timeout: float = 120.0
    #: Seconds to connect to Kafka (then wait() falls back to polling).
    kafka_timeout: float = 5.0
    #: Default seconds ``wait()``/``results()`` wait for a task.
    wait_timeout: float = 600.0
    #: Seconds a task this client submitted may still answer 404 (not planned yet).
    not_found_grace: float = 15.0
    #: Seconds a 503 (worker joining) is retried by one ``status()`` call.
    unavailable_grace: float = 30.0
    #: Seconds between HTTP reads of a task while following it on Kafka (a safety net).
    poll_interval: float = 2.0
    #: Seconds between HTTP reads of a task when Kafka is not used.
    fallback_poll_interval: float = 0.25

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> ClientConfig:
        """From a :class:`config.settings.Settings` (default: read from the environment),
        with keyword ``overrides`` (``None`` values are ignored)."""
        if settings is None:
            try:
                settings = Settings.from_env()
            except SettingsError as exc:
                raise InvalidInput(str(exc), code="invalid_settings") from None
        values: dict[str, Any] = {
            "api_url": settings.public_url,
            "kafka_bootstrap": settings.kafka_bootstrap,
            "topic_prefix": settings.topic_prefix,
            "api_token": settings.api_token,
            "inline_image_bytes": settings.inline_image_bytes,
            "max_image_bytes": settings.max_image_bytes,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def topic(self, name: str) -> str:
        """The full name of topic ``name`` (with the prefix)."""
        return self.topic_prefix + name


class _BaseClient:
    """Configuration, the HTTP session and the Kafka connection shared by both clients."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: ClientConfig | None = None,
        api_url: str | None = None,
        kafka_bootstrap: str | None = None,
        topic_prefix: str | None = None,
        api_token: str | None = None,
        **options: Any,
    ) -> None:
        overrides = {"api_url": api_url, "kafka_bootstrap": kafka_bootstrap, "topic_prefix": topic_prefix,
                     "api_token": api_token, **options}
        if config is not None:
            self.config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
        else:
            self.config = ClientConfig.from_settings(settings, **overrides)
        self._http = HttpApi(self.config.api_url, token=self.config.api_token,
                             timeout=self.config.request_timeout)
        self._kafka = KafkaIO(self.config.kafka_bootstrap, timeout=self.config.kafka_timeout)

    async def __aenter__(self: _C) -> _C:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session and the Kafka producer."""
        await self._http.close()
        await self._kafka.close()

    @property
    def uses_kafka(self) -> bool:
        return bool(self.config.kafka_bootstrap)

    async def stats(self) -> dict[str, Any]:
        """``GET /api/v1/stats``: the answering worker's counters."""
        doc = await self._http.json("GET", "/api/v1/stats",
                                    retry_until=time.monotonic() + self.config.unavailable_grace)
        return dict(doc)

    async def healthy(self) -> bool:
        """Whether ``GET /healthz`` answers 200 (False while a worker joins, or if unreachable)."""
        try:
            await self._http.request("GET", self._http.url("/healthz"))
        except ImagestreamClientError:
            return False
        return True

    def _require_kafka(self) -> None:
        if not self.uses_kafka:
            raise InvalidInput("this needs Kafka, but no bootstrap servers are configured "
                               "(IMAGESTREAM_KAFKA_BOOTSTRAP, kafka_bootstrap=..., --bootstrap)",
                               code="kafka_not_configured")

    async def _follow(self, topics: Sequence[str], key: str) -> Follower | None:
        """A follower on ``topics`` for ``key``, or None when Kafka is not used/reachable."""
        if not self.uses_kafka:
            return None
        try:
            return await self._kafka.follow([self.config.topic(t) for t in topics], key)
        except Unreachable as exc:
            log.info("following on Kafka is not possible, polling the HTTP API instead: %s", exc)
            return None


class ImageEditClient(_BaseClient):
    """Async client of the image-edit pipeline (use it as ``async with``).

    Configured from a :class:`config.settings.Settings` (default: the environment)
    and/or keyword arguments: ``api_url``, ``kafka_bootstrap``, ``topic_prefix``,
    ``api_token``, and any :class:`ClientConfig` field (``wait_timeout=...``)."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        #: task_id -> monotonic time of submission (for the not-found grace).
        self._submitted: dict[str, float] = {}

    # --- submit ------------------------------------------------------------------------
    async def submit(
        self,
        images: ImageInput | Iterable[ImageInput],
        edit_type: str,
        prompt: str | None = None,
        params: Mapping[str, Any] | str | None = None,
        *,
        via: Literal["http", "kafka"] = "http",
        task_id: str | None = None,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> TaskHandle:
        """Submit a task: 1..N images and one edit; returns at acceptance.

        ``groups``: multi-image calls, lists of 0-based image indexes (1-3 each, order
        significant); each group is one call and one result.  ``params`` may name the
        model (``{"model": "qwen-image-edit-plus", "n": 3}``).

        ``images``: paths, bytes, ``(filename, bytes)`` pairs or ``http(s)`` URLs.
        ``prompt``: optional (the edit type's template is used without one);
        ``params``: other edit params (``negative_prompt``, ``seed``, ...), a mapping
        or a JSON object string.

        ``via="http"`` uploads everything as multipart (URLs are downloaded by the
        client first) and the server checks the task before accepting it: a bad one
        raises :class:`ApiError` with the server's code (``unknown_edit_type``, ...).
        ``via="kafka"`` publishes a TaskRequest (``task_id`` may be chosen): URLs are
        passed on for the worker to fetch, local images up to ``inline_image_bytes``
        travel inline; larger ones are uploaded first (``POST /api/v1/blobs``) and sent
        as blob references.
        A bad Kafka task is not refused here: it ends ``failed`` with the reason.
        """
        if via not in ("http", "kafka"):
            raise InvalidInput(f"via must be 'http' or 'kafka', got {via!r}", code="invalid_via")
        if not isinstance(edit_type, str) or not edit_type:
            raise InvalidInput("edit_type is required", code="missing_edit_type")
        merged = edit_params(prompt, params)
        sources = await asyncio.to_thread(load_images, images)
        if via == "http":
            if task_id is not None:
                raise InvalidInput("task_id can only be chosen with via='kafka'", code="invalid_task_id")
            return await self._submit_http(edit_type, merged, sources, groups)
        return await self._submit_kafka(task_id or new_task_id(), edit_type, merged, sources, groups)

    async def _submit_http(self, edit_type: str, params: dict[str, Any], sources: list[ImageSource],
                           groups: Sequence[Sequence[int]] | None = None) -> TaskHandle:
        sources = [await self._fetch_source(s) if s.data is None else s for s in sources]
        form = build_form(edit_type=edit_type, sources=sources, params=params, groups=groups)
        doc = await self._http.json("POST", "/api/v1/image-edit/submit", data=form)
        handle = TaskHandle(task_id=str(doc["task_id"]), total_images=int(doc.get("total_images", len(sources))),
                            status=str(doc.get("status", "pending")), via="http", submitted_at=time.time(),
                            _client=self)
        self._submitted[handle.task_id] = time.monotonic()
        return handle

    async def _fetch_source(self, source: ImageSource) -> ImageSource:
        """Download a URL image (to upload it)."""
        assert source.url is not None
        limit = self.config.max_image_bytes
        status, body, _ = await self._http.request("GET", source.url)
        del status
        if len(body) > limit:
            raise InvalidInput(f"{source.url} is over {limit} bytes", code="image_too_large")
        return ImageSource(filename=source.filename, data=body)

    async def _submit_kafka(self, task_id: str, edit_type: str, params: dict[str, Any],
                            sources: list[ImageSource], groups: Sequence[Sequence[int]] | None = None) -> TaskHandle:
        self._require_kafka()
        sources = [await self._uploaded(source) for source in sources]
        request = build_task_request(task_id=task_id, edit_type=edit_type, sources=sources, params=params,
                                     inline_limit=self.config.inline_image_bytes, groups=groups)
        await self._kafka.send(self.config.topic("image-edit-requests"), task_id, request)
        self._submitted[task_id] = time.monotonic()
        return TaskHandle(task_id=task_id, total_images=len(groups) if groups else len(sources), status="pending",
                          via="kafka",
                          submitted_at=request["submitted_at"], _client=self)

    async def _uploaded(self, source: ImageSource) -> ImageSource:
        """``source``, uploaded to the blob store first if it is too large to go inline."""
        if source.data is None or len(source.data) <= self.config.inline_image_bytes:
            return source
        doc = await self._http.json("POST", "/api/v1/blobs", data=source.data,
                                    headers={"Content-Type": "application/octet-stream"})
        return replace(source, data=None, blob=str(doc["sha256"]))

    # --- read ------------------------------------------------------------------------
    def _grace_left(self, task_id: str) -> float:
        submitted = self._submitted.get(task_id)
        if submitted is None:
            return 0.0
        return self.config.not_found_grace - (time.monotonic() - submitted)

    async def status(self, task_id: str) -> TaskStatus:
        """``GET /api/v1/image-edit/task/{task_id}``.

        Retries a 503 (worker joining) honouring ``Retry-After`` for up to
        ``unavailable_grace`` seconds, and a 404 for a task this client just
        submitted (not planned yet) for up to ``not_found_grace``.  Raises
        :class:`TaskNotFound` after that."""
        deadline = time.monotonic() + max(self.config.unavailable_grace, self._grace_left(task_id))
        while True:
            status = await self._status_once(task_id, deadline)
            if status is not None:
                return status
            left = min(self._grace_left(task_id), deadline - time.monotonic())
            if left <= 0:
                raise TaskNotFound(task_id)
            await asyncio.sleep(min(self.config.fallback_poll_interval, left))

    async def _status_once(self, task_id: str, deadline: float) -> TaskStatus | None:
        """One read; None for a 404 within the grace of a task this client submitted."""
        try:
            doc = await self._http.json("GET", f"/api/v1/image-edit/task/{task_id}", retry_until=deadline,
                                        task_id=task_id)
        except TaskNotFound:
            if self._grace_left(task_id) > 0:
                return None
            raise
        return TaskStatus.from_dict(doc)

    async def events(
        self,
        task_id: str,
        *,
        timeout: float | None = None,
        include_results: bool = True,
    ) -> AsyncIterator[TaskEvent]:
        """Follow a task: yields each :class:`ImageResult` once (by index) and each
        :class:`TaskStatus` snapshot that moved the task on, in arrival order; ends
        after the terminal status (once every image's result has been yielded).

        Raises :class:`Timeout` when ``timeout`` seconds (default ``wait_timeout``)
        pass first, :class:`TaskNotFound` for an unknown task.  While Kafka feeds the
        events, a failed periodic HTTP read (a safety net) is logged, not raised."""
        deadline = time.monotonic() + (self.config.wait_timeout if timeout is None else timeout)
        topics = ["image-edit-results", "image-edit-task-status"] if include_results else ["image-edit-task-status"]
        # Subscribe first, then read the task over HTTP: what happened before the
        # subscription is in that status, what happens after it is on the topics.
        follower = await self._follow(topics, task_id)
        interval = self.config.poll_interval if follower else self.config.fallback_poll_interval
        seen: dict[int, ImageResult] = {}
        best: tuple[bool, int, float] | None = None
        terminal: TaskStatus | None = None
        settle_until = 0.0  # after a terminal status: how long to wait for missing results
        next_poll = time.monotonic()
        polled = False  # an HTTP read has answered (the task exists)
        try:
            while True:
                now = time.monotonic()
                if terminal is not None and (len(seen) >= terminal.total_images or not include_results
                                             or now >= settle_until):
                    return
                if now >= deadline:
                    raise Timeout(f"task {task_id} did not finish within "
                                  f"{self.config.wait_timeout if timeout is None else timeout:g}s")
                incoming: list[TaskEvent] = []
                if now >= next_poll:
                    next_poll = now + interval
                    try:
                        status = await self._status_once(task_id, deadline)
                    except (Unreachable, Timeout, ApiError) as exc:
                        transient = not isinstance(exc, ApiError) or not exc.is_client_error
                        if not (follower is not None and polled and transient):
                            raise
                        log.warning("reading task %s over HTTP failed, still following it on Kafka: %s",
                                    task_id, exc)
                        continue
                    if status is not None:
                        polled = True
                        incoming.append(status)
                else:
                    wait = min(next_poll, deadline) - now
                    if terminal is not None:
                        wait = min(wait, settle_until - now)
                    if follower is not None:
                        try:
                            messages = await follower.read(wait)
                        except Unreachable as exc:
                            log.info("lost Kafka, polling the HTTP API instead: %s", exc)
                            await follower.close()
                            follower, interval, next_poll = None, self.config.fallback_poll_interval, now
                            continue
                        for topic, doc in messages:
                            if doc.get("task_id") != task_id:
                                continue
                            if topic.endswith("image-edit-results"):
                                incoming.append(ImageResult.from_dict(doc))
                            else:
                                incoming.append(TaskStatus.from_dict(doc))
                    else:
                        await asyncio.sleep(max(wait, 0.0))
                for event in incoming:
                    if isinstance(event, ImageResult):
                        if include_results and event.index not in seen:
                            seen[event.index] = event
                            yield event
                        continue
                    if include_results:
                        for result in event.results:
                            if result.index not in seen:
                                seen[result.index] = result
                                yield result
                    rank = (event.is_terminal, event.finished_images, event.updated_at)
                    if best is None or rank > best:
                        best = rank
                        yield event
                    if event.is_terminal and terminal is None:
                        terminal = event
                        settle_until = time.monotonic() + min(3.0, max(interval, 0.5))
        finally:
            if follower is not None:
                await follower.close()

    async def results(
        self, task_id: str, *, timeout: float | None = None, total_images: int | None = None
    ) -> AsyncIterator[ImageResult]:
        """Per-image results as they arrive, each image once; ends when every image of
        the task has a result (or the task ended).  Results that arrived before this
        call are yielded first (read from the task's status)."""
        total = total_images
        yielded = 0
        async with contextlib.aclosing(self.events(task_id, timeout=timeout)) as events:
            async for event in events:
                if isinstance(event, TaskStatus):
                    if event.total_images or event.is_terminal:
                        total = event.total_images
                    if event.is_terminal:
                        return
                else:
                    yield event
                    yielded += 1
                if total is not None and yielded >= total > 0:
                    return

    async def watch(self, task_id: str, *, timeout: float | None = None) -> AsyncIterator[TaskStatus]:
        """Status snapshots as the task moves on; ends with the terminal one."""
        async with contextlib.aclosing(self.events(task_id, timeout=timeout, include_results=False)) as events:
            async for event in events:
                if isinstance(event, TaskStatus):
                    yield event

    async def wait(self, task_id: str, *, timeout: float | None = None, raise_on_failure: bool = False) -> TaskStatus:
        """The task's final :class:`TaskStatus` (``completed``, ``partial`` or ``failed``).

        Follows ``image-edit-task-status`` on Kafka (polling the HTTP API when Kafka
        is not reachable).  ``raise_on_failure``: raise :class:`TaskFailed` unless
        the task ended ``completed``.  Raises :class:`Timeout` after ``timeout``
        seconds (default ``wait_timeout``)."""
        final: TaskStatus | None = None
        async for status in self.watch(task_id, timeout=timeout):
            final = status
        assert final is not None and final.is_terminal
        if raise_on_failure and final.status != "completed":
            raise TaskFailed(final)
        return final

    async def download(self, result: ImageResult, folder: str | os.PathLike[str], *,
                       filename: str | None = None) -> Path:
        """Save a completed result's image into ``folder`` (created if needed) and
        return its path: ``filename``, or ``<index>-<input name>.<ext>``."""
        if not result.result_url:
            reason = f" ({result.error.code}: {result.error.message})" if result.error else ""
            raise InvalidInput(f"image {result.index} ({result.filename}) has no result{reason}",
                               code="no_result")
        _, body, _ = await self._http.request("GET", self._http.base_url.join(URL(result.result_url)))
        if filename is None:
            stem = Path(result.filename).stem or f"image-{result.index}"
            filename = f"{result.index:02d}-{stem}{extension_for(body[:16], '.png')}"
        target = Path(folder)

        def write() -> Path:
            target.mkdir(parents=True, exist_ok=True)
            path = target / filename
            partial = path.with_name(path.name + ".part")
            partial.write_bytes(body)
            partial.replace(path)
            return path

        return await asyncio.to_thread(write)


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace("|", "\\|")


def dimension_key(session_id: str, resource: str, scene: str | int) -> str:
    """The key of ``dimension-requests`` / ``dimension-results``:
    ``session_id|resource|scene`` with ``\\`` and ``|`` escaped inside each part
    (as the worker computes it)."""
    return "|".join(_escape(str(part)) for part in (session_id, resource, scene))


class DimensionClient(_BaseClient):
    """Async client of the image-dimension pipeline (use it as ``async with``);
    configured like :class:`ImageEditClient`."""

    async def get(self, session_id: str, resource: str, scene: str | int, url: str | None = None, *,
                  refresh: bool = False) -> DimensionResult:
        """The size of the image at ``url`` for this session/resource/scene, at once:
        ``source`` ``cache``, or ``placeholder`` while the real size is fetched in the
        background.  Without ``url`` a lookup: :class:`ApiError` 404
        ``dimension_not_found`` when nothing is known."""
        query = {"session_id": session_id, "resource": str(resource), "scene": str(scene)}
        if url is not None:
            query["url"] = url
        if refresh:
            query["refresh"] = "true"
        doc = await self._http.json("GET", "/api/v1/dimensions", params=query,
                                    retry_until=time.monotonic() + self.config.unavailable_grace)
        return DimensionResult.from_dict(doc)

    async def lookup_many(self, session_id: str, scene: str | int,
                          items: Iterable[Mapping[str, Any] | tuple[str | int, str]], *,
                          refresh: bool = False, batch_size: int = BATCH_SIZE) -> list[DimensionResult]:
        """The sizes of many images of one session and scene at once (e.g. every
        screenshot of a conversation), in the order given: ``POST
        /api/v1/dimensions/batch``.  ``items``: ``(resource, url)`` pairs or mappings
        ``{resource, url | data, refresh?}`` (``data``: bytes or base64).  Each answer
        is ``cache``, ``computed``, or ``placeholder`` while one background fetch per
        new URL runs.  More than ``batch_size`` items go as several calls, at once
        (the worker refuses more than its ``IMAGESTREAM_DIMENSION_BATCH_MAX``)."""
        wire: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            if isinstance(item, tuple):
                if len(item) != 2:
                    raise InvalidInput(f"items[{index}]: expected (resource, url)", code="invalid_parameter")
                item = {"resource": item[0], "url": item[1]}
            if not isinstance(item, Mapping) or item.get("resource") in (None, ""):
                raise InvalidInput(f"items[{index}]: resource is required", code="missing_parameter")
            entry = {k: item[k] for k in ("resource", "url", "data", "refresh") if item.get(k) is not None}
            entry["resource"] = str(entry["resource"])
            if isinstance(entry.get("data"), (bytes, bytearray)):
                entry["data"] = base64.b64encode(bytes(entry["data"])).decode("ascii")
            if "url" not in entry and "data" not in entry:
                raise InvalidInput(f"items[{index}]: one of url or data is required", code="missing_parameter")
            wire.append(entry)
        if not wire:
            return []
        if batch_size < 1:
            raise InvalidInput("batch_size must be >= 1", code="invalid_parameter")
        retry_until = time.monotonic() + self.config.unavailable_grace

        async def one(chunk: list[dict[str, Any]]) -> list[DimensionResult]:
            body = {"session_id": session_id, "scene": str(scene), "items": chunk, "refresh": refresh}
            doc = await self._http.json("POST", "/api/v1/dimensions/batch", json=body, retry_until=retry_until)
            return [DimensionResult.from_dict(answer) for answer in doc.get("items", [])]

        chunks = [wire[i:i + batch_size] for i in range(0, len(wire), batch_size)]
        answers = await asyncio.gather(*(one(chunk) for chunk in chunks))
        return [result for part in answers for result in part]

    async def compute(self, session_id: str, resource: str, scene: str | int,
                      data: bytes | str | os.PathLike[str]) -> DimensionResult:
        """The size of an image sent inline (``source: computed``), recorded for later
        ``get()`` calls.  ``data``: bytes, a file path, or a base64 string / data URI."""
        if isinstance(data, (bytes, bytearray)):
            encoded = base64.b64encode(bytes(data)).decode("ascii")
        elif isinstance(data, str) and (data.startswith("data:") or not os.path.exists(data)):
            encoded = data
        else:
            [source] = await asyncio.to_thread(load_images, [data])
            assert source.data is not None
            encoded = base64.b64encode(source.data).decode("ascii")
        body = {"session_id": session_id, "resource": str(resource), "scene": str(scene), "data": encoded}
        doc = await self._http.json("POST", "/api/v1/dimensions", json=body)
        return DimensionResult.from_dict(doc)

    async def prewarm(self, urls: Iterable[str], *, refresh: bool = False) -> dict[str, int]:
        """Enqueue fetches for ``urls`` so later requests of any session are answered
        from the URL table: ``{"accepted", "enqueued"}``."""
        doc = await self._http.json("POST", "/api/v1/dimensions/prewarm",
                                    json={"urls": list(urls), "refresh": refresh})
        return {"accepted": int(doc.get("accepted", 0)), "enqueued": int(doc.get("enqueued", 0))}

    async def publish(self, request: Mapping[str, Any], *, wait: bool = False,
                      timeout: float = 30.0) -> DimensionResult | None:
        """Publish a DimensionRequest (``{session_id, resource, scene, url | data,
        refresh?}``) to ``dimension-requests``, keyed ``session_id|resource|scene``.

        ``wait=True``: return the answer the worker publishes on
        ``dimension-results`` (:class:`Unreachable` if Kafka cannot be followed,
        :class:`Timeout` after ``timeout`` seconds)."""
        for name in ("session_id", "resource", "scene"):
            if request.get(name) in (None, ""):
                raise InvalidInput(f"{name} is required", code="missing_parameter")
        if request.get("url") is None and request.get("data") is None:
            raise InvalidInput("one of url or data is required", code="missing_parameter")
        self._require_kafka()
        value = {**request, "requested_at": request.get("requested_at") or time.time()}
        key = dimension_key(str(value["session_id"]), str(value["resource"]), value["scene"])
        if not wait:
            await self._kafka.send(self.config.topic("dimension-requests"), key, value)
            return None
        follower = await self._kafka.follow([self.config.topic("dimension-results")], key)
        try:
            await self._kafka.send(self.config.topic("dimension-requests"), key, value)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                for _, doc in await follower.read(left):
                    return DimensionResult.from_dict(doc)
            raise Timeout(f"no dimension result for {key!r} within {timeout:g}s")
        finally:
            await follower.close()
