"""Blocking wrappers for scripts: the async clients run on an event loop of their own,
in a background thread, so these work anywhere (also where a loop is already running,
as in a notebook)::

    from producers.sync import SyncImageEditClient

    with SyncImageEditClient() as client:
        task = client.submit(["a.jpg"], "enhance")
        for result in client.results(task.task_id):
            print(result.index, result.status)
        final = client.wait(task.task_id)
        paths = [client.download(r, "out/") for r in final.results if r.ok]

Or in one line: ``final = submit_and_wait(["a.jpg"], "enhance", out="out/")``.
The methods and errors are those of the async clients.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from config.settings import Settings
from producers.client import DimensionClient, ImageEditClient, TaskEvent
from producers.images import ImageInput
from producers.models import DimensionResult, ImageResult, TaskHandle, TaskStatus

__all__ = ["SyncDimensionClient", "SyncImageEditClient", "submit_and_wait"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread; ``run()`` blocks for a coroutine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="imagestream-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the client is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise

    def iterate(self, agen: Any) -> Iterator[Any]:
        """Drive an async generator from this thread, one item at a time."""
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            try:
                self.run(agen.aclose())
            except RuntimeError:
                pass  # the client was closed first

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


class _SyncBase:
    _loop: _LoopThread
    _client: Any

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and stop its loop thread."""
        try:
            self._loop.run(self._client.aclose())
        except RuntimeError:
            pass  # closed already
        self._loop.close()

    def stats(self) -> dict[str, Any]:
        """``GET /api/v1/stats``."""
        return self._loop.run(self._client.stats())  # type: ignore[no-any-return]


class SyncImageEditClient(_SyncBase):
    """Blocking :class:`~producers.client.ImageEditClient` (same arguments)."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self._loop = _LoopThread()
        try:
            self._client = ImageEditClient(settings, **kwargs)
        except BaseException:
            self._loop.close()
            raise

    @property
    def config(self) -> Any:
        return self._client.config

    def submit(self, images: ImageInput | Iterable[ImageInput], edit_type: str, prompt: str | None = None,
               params: Mapping[str, Any] | str | None = None, *, via: Literal["http", "kafka"] = "http",
               task_id: str | None = None, groups: Sequence[Sequence[int]] | None = None) -> TaskHandle:
        """Submit a task; the handle is not bound (use this client's methods)."""
        handle = self._loop.run(self._client.submit(images, edit_type, prompt, params, via=via, task_id=task_id,
                                                    groups=groups))
        return dataclasses.replace(handle, _client=None)

    def status(self, task_id: str) -> TaskStatus:
        return self._loop.run(self._client.status(task_id))  # type: ignore[no-any-return]

    def wait(self, task_id: str, *, timeout: float | None = None, raise_on_failure: bool = False) -> TaskStatus:
        return self._loop.run(  # type: ignore[no-any-return]
            self._client.wait(task_id, timeout=timeout, raise_on_failure=raise_on_failure))

    def results(self, task_id: str, *, timeout: float | None = None,
                total_images: int | None = None) -> Iterator[ImageResult]:
        return self._loop.iterate(self._client.results(task_id, timeout=timeout, total_images=total_images))

    def events(self, task_id: str, *, timeout: float | None = None) -> Iterator[TaskEvent]:
        return self._loop.iterate(self._client.events(task_id, timeout=timeout))

    def watch(self, task_id: str, *, timeout: float | None = None) -> Iterator[TaskStatus]:
        return self._loop.iterate(self._client.watch(task_id, timeout=timeout))

    def download(self, result: ImageResult, folder: str | os.PathLike[str], *,
                 filename: str | None = None) -> Path:
        return self._loop.run(self._client.download(result, folder, filename=filename))  # type: ignore[no-any-return]


class SyncDimensionClient(_SyncBase):
    """Blocking :class:`~producers.client.DimensionClient` (same arguments)."""

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self._loop = _LoopThread()
        try:
            self._client = DimensionClient(settings, **kwargs)
        except BaseException:
            self._loop.close()
            raise

    def get(self, session_id: str, resource: str, scene: str | int, url: str | None = None, *,
            refresh: bool = False) -> DimensionResult:
        return self._loop.run(  # type: ignore[no-any-return]
            self._client.get(session_id, resource, scene, url, refresh=refresh))

    def lookup_many(self, session_id: str, scene: str | int,
                    items: Iterable[Mapping[str, Any] | tuple[str | int, str]], *,
                    refresh: bool = False) -> list[DimensionResult]:
        return self._loop.run(  # type: ignore[no-any-return]
            self._client.lookup_many(session_id, scene, items, refresh=refresh))

    def compute(self, session_id: str, resource: str, scene: str | int,
                data: bytes | str | os.PathLike[str]) -> DimensionResult:
        return self._loop.run(self._client.compute(session_id, resource, scene, data))  # type: ignore[no-any-return]

    def prewarm(self, urls: Iterable[str], *, refresh: bool = False) -> dict[str, int]:
        return self._loop.run(self._client.prewarm(urls, refresh=refresh))  # type: ignore[no-any-return]

    def publish(self, request: Mapping[str, Any], *, wait: bool = False,
                timeout: float = 30.0) -> DimensionResult | None:
        return self._loop.run(  # type: ignore[no-any-return]
            self._client.publish(request, wait=wait, timeout=timeout))


def submit_and_wait(images: ImageInput | Iterable[ImageInput], edit_type: str, prompt: str | None = None,
                    params: Mapping[str, Any] | str | None = None, *, via: Literal["http", "kafka"] = "http",
                    timeout: float | None = None, out: str | os.PathLike[str] | None = None,
                    raise_on_failure: bool = False, **client_kwargs: Any) -> TaskStatus:
    """Submit a task, wait for its end and (with ``out``) download every result there."""
    with SyncImageEditClient(**client_kwargs) as client:
        task = client.submit(images, edit_type, prompt, params, via=via)
        final = client.wait(task.task_id, timeout=timeout, raise_on_failure=raise_on_failure)
        if out is not None:
            for result in final.results:
                if result.ok:
                    client.download(result, out)
        return final
