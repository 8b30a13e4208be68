"""Helpers shared by the tests: deadlines, free ports, Kafka I/O, processes.

Nothing here sleeps to synchronise: every wait polls a condition until a deadline
and fails with what it last saw.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ARTIFACTS = REPO / "test-artifacts"

T = TypeVar("T")

#: The topics the worker's agents consume (each must have all its partitions assigned).
AGENT_SOURCE_TOPICS = (
    "image-edit-requests",
    "image-edit-jobs",
    "imagestream-task-updates",
    "dimension-requests",
    "imagestream-dimension-fetches",
    "imagestream-dimension-updates",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(
    check: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` (a coroutine function, or a plain one) until it returns something
    truthy or ``timeout`` passes.

    "Not yet" is a falsy result or any exception other than :class:`AssertionError`
    (a refused connection while a server starts, a 503, a ``KeyError`` on a document
    still being built): polled again, and the last one is named on timeout.  An
    ``AssertionError`` is a check that failed, not one still waiting: it is raised at
    once, so a violation seen once is reported and a deliberate fail-fast fails fast.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - "not yet"; reported on timeout
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")
        await asyncio.sleep(interval)


def wait_for_sync(check: Callable[[], T | None], *, timeout: float, interval: float = 0.1, what: str = "condition") -> T:
    """:func:`wait_for` for code outside the event loop (same rules for "not yet")."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - "not yet"; reported on timeout
            last_error = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last_error!r}")
        time.sleep(interval)


# --- processes ----------------------------------------------------------------------


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def kill(self) -> None:
        """``kill -9``."""
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)


def spawn(name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.{os.getpid()}.log"  # one file per pytest process
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    full_env = {**os.environ, **env}
    popen = subprocess.Popen(args, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    log_file.close()
    return Proc(name=name, popen=popen, log_path=log_path, env=dict(env))


def imagestream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "producers.cli", *args]


def http_status(url: str, timeout: float = 2.0) -> int:
    """Status of a GET (blocking; for fixtures that run outside the event loop)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def http_ok(url: str, *, status: int = 200) -> bool:
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url) as resp:
            return resp.status == status


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def get_json(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, Any]:
    """Status and JSON body of a GET (``None`` for a body that is not JSON)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url, headers=auth(token)) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            return resp.status, body


async def dimension_metrics(worker: Worker) -> dict[str, float] | None:
    """The worker's ``imagestream_dimension_*`` series from ``/metrics`` (None unless 200)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/metrics") as resp:
            if resp.status != 200:
                return None
            text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("imagestream_dimension_") and " " in line:
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


async def all_ready(workers: list[Worker]) -> bool:
    """Every worker's /healthz answers 200."""
    async with aiohttp.ClientSession() as session:
        for w in workers:
            async with session.get(f"{w.url}/healthz") as resp:
                if resp.status != 200:
                    return False
    return True


# --- the worker's image-edit API ----------------------------------------------------

TERMINAL = {"completed", "partial", "failed"}


def edit_form(files: list[tuple[str, bytes]], *, edit_type: str = "enhance", params: Any = None,
              raw_params: str | None = None) -> aiohttp.FormData:
    """A submit form; ``edit_params`` is ``params`` as JSON, or ``raw_params`` as given, or absent."""
    data = aiohttp.FormData()
    for name, blob in files:
        data.add_field("images", blob, filename=name, content_type="application/octet-stream")
    data.add_field("edit_type", edit_type)
    if raw_params is not None:
        data.add_field("edit_params", raw_params)
    elif params is not None:
        data.add_field("edit_params", json.dumps(params))
    return data


async def submit(url: str, data: aiohttp.FormData, token: str | None = None) -> tuple[int, dict[str, Any]]:
    """POST a task to the worker at ``url``."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/api/v1/image-edit/submit", data=data, headers=auth(token)) as resp:
            return resp.status, await resp.json()


async def get_task(url: str, task_id: str, token: str | None = None) -> tuple[int, Any]:
    return await get_json(f"{url}/api/v1/image-edit/task/{task_id}", token)


async def wait_task(url: str, task_id: str, timeout: float = 90, token: str | None = None) -> dict[str, Any]:
    """The task's status document once it is terminal."""
    async def done() -> dict[str, Any] | None:
        status, doc = await get_task(url, task_id, token)
        return doc if status == 200 and doc["status"] in TERMINAL else None

    return await wait_for(done, timeout=timeout, interval=0.1, what=f"task {task_id} to finish")


# --- services: emulator and worker -----------------------------------------------

@dataclass
class Emulator:
    base_url: str  # http://127.0.0.1:PORT
    api_url: str  # base_url + /api/v1, what DASHSCOPE_HTTP_BASE_URL is set to
    api_key: str
    proc: Proc




EMULATOR_KEY = "sk-emulator-test"


async def emulator_stats(emulator: Emulator) -> dict[str, Any]:
    status, body = await get_json(f"{emulator.base_url}/_emulator/stats")
    assert status == 200, body
    return body


async def emulator_config(emulator: Emulator, **config: Any) -> dict[str, Any]:
    """Change the emulator's latency / fault rates; returns its whole config."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{emulator.base_url}/_emulator/config", json=config) as resp:
            text = await resp.text()
            assert resp.status == 200, text
            return json.loads(text)


async def emulator_reset(emulator: Emulator) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{emulator.base_url}/_emulator/reset") as resp:
            assert resp.status == 200, await resp.text()


def start_emulator(*args: str, name: str = "emulator") -> Emulator:
    """Start ``imagestream emulator`` (extra CLI ``args``) on a free port; wait until it answers."""
    port = free_port()
    proc = spawn(name, imagestream_cmd("emulator", "--host", "127.0.0.1", "--port", str(port),
                                       "--api-key", EMULATOR_KEY, *args), {}, ARTIFACTS)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_sync(lambda: http_status(f"{base}/_emulator/stats") == 200, timeout=30, what="emulator")
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"emulator did not start:\n{proc.log_tail()}") from None
    return Emulator(base_url=base, api_url=f"{base}/api/v1", api_key=EMULATOR_KEY, proc=proc)


@dataclass
class Worker:
    url: str
    data_dir: Path
    app_id: str
    proc: Proc

    def topic(self, name: str) -> str:
        """The worker's name for a topic (tests give each worker group a prefix)."""
        return f"{self.app_id}.{name}"


def start_worker(
    name: str,
    *,
    kafka_bootstrap: str,
    emulator: Emulator,
    data_dir: Path,
    app_id: str,
    partitions: int = 1,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
    wait: bool = True,
    on_spawn: Callable[[Proc], None] | None = None,
) -> Worker:
    """Start ``imagestream worker`` as a subprocess; returns once /healthz says ready
    (at once with ``wait=False``).

    ``on_spawn`` runs right after the process exists, before the wait for /healthz
    (a test can disturb the worker's start-up there)."""
    port = port or free_port()
    env = {
        "IMAGESTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "IMAGESTREAM_APP_ID": app_id,
        "IMAGESTREAM_DATA_DIR": str(data_dir),
        "IMAGESTREAM_WEB_PORT": str(port),
        "IMAGESTREAM_TOPIC_PARTITIONS": str(partitions),
        # Topics of their own: events left by earlier sessions on this broker are
        # not replayed, and each worker group can have its own partition count.
        "IMAGESTREAM_TOPIC_PREFIX": f"{app_id}.",
        "IMAGESTREAM_FETCH_ALLOWLIST": "127.0.0.1",
        # The "host" the test workers share (its blob folder is the default store).
        "XDG_DATA_HOME": str(ARTIFACTS / "host-data"),
        "DASHSCOPE_HTTP_BASE_URL": emulator.api_url,
        "DASHSCOPE_API_KEY": emulator.api_key,
        **(extra_env or {}),
    }
    proc = spawn(name, imagestream_cmd("worker", "-l", "info"), env, ARTIFACTS)
    url = f"http://127.0.0.1:{port}"
    if on_spawn is not None:
        try:
            on_spawn(proc)
        except BaseException:
            proc.stop()
            raise
    if not wait:
        return Worker(url=url, data_dir=data_dir, app_id=app_id, proc=proc)

    def ready() -> bool:
        # An AssertionError ends the wait at once: a dead worker never becomes ready.
        assert proc.alive(), f"worker exited with {proc.popen.returncode}"
        return http_status(f"{url}/healthz") == 200

    try:
        wait_for_sync(ready, timeout=180, interval=0.2, what=f"{name} /healthz")
    except (TimeoutError, AssertionError) as exc:
        proc.stop()
        raise RuntimeError(f"{name} did not become ready: {exc}\n{proc.log_tail(80)}") from None
    return Worker(url=url, data_dir=data_dir, app_id=app_id, proc=proc)



# --- sample images ---------------------------------------------------------------


def tiff_ifd_at_end(width: int, height: int) -> bytes:
    """Uncompressed greyscale TIFF, IFD0 after the pixels (as some writers do)."""
    pixels = bytes(width * height)
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 8), (277, 3, 1), (278, 4, height), (279, 4, len(pixels))]
    entries = b"".join(
        struct.pack("<HHI", t, k, 1) + (struct.pack("<HH", v, 0) if k == 3 else struct.pack("<I", v))
        for t, k, v in tags
    )
    return b"II" + struct.pack("<HI", 42, 8 + len(pixels)) + pixels + struct.pack("<H", len(tags)) + entries + bytes(4)


# --- local HTTP servers ------------------------------------------------------------


@asynccontextmanager
async def serve_images() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A real HTTP server on 127.0.0.1 (port 0) serving the bytes put in the dict.

    Yields ``(base_url, files)``: ``files["a.png"] = data`` makes ``{base_url}/a.png`` a
    200 with that body; anything else is a 404.
    """
    from aiohttp import web

    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        data = files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    async with serve_app(app) as port:
        yield f"http://127.0.0.1:{port}", files


@asynccontextmanager
async def serve_app(app: aiohttp.web.Application, **runner_kwargs: Any) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1 (port 0) for the block; yields the port it got."""
    from aiohttp import web

    runner = web.AppRunner(app, **runner_kwargs)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # noqa: SLF001
    finally:
        await runner.cleanup()


# --- Kafka --------------------------------------------------------------------------


def jkey(key: str) -> bytes:
    """A key as the app writes it (JSON string)."""
    return json.dumps(key).encode()


async def produce(bootstrap: str, topic: str, value: bytes | Mapping[str, Any], key: bytes | str | None = None,
                  partition: int | None = None) -> None:
    """One record (a mapping is sent as JSON); ``partition`` overrides the partitioner."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        raw_key = key.encode() if isinstance(key, str) else key
        await producer.send_and_wait(topic, raw, key=raw_key, partition=partition)
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the offsets it had when opened (so only new events count)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.seen: list[tuple[bytes | None, bytes]] = []

    async def __aenter__(self) -> TopicReader:
        await self.consumer.start()
        partitions = await wait_for(
            lambda: _partitions(self.consumer, self.topic), timeout=30, what=f"topic {self.topic}"
        )
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, before anything is produced
            await self.consumer.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def collect(
        self, match: Callable[[dict[str, Any]], bool], *, count: int = 1, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` JSON values matching ``match`` have arrived."""
        found: list[dict[str, Any]] = [v for v in self._decoded() if match(v)]
        deadline = time.monotonic() + timeout
        while len(found) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.topic}: saw {len(found)}/{count} matching events in {timeout}s")
            batch = await self.consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for records in batch.values():
                for record in records:
                    self.seen.append((record.key, record.value))
                    value = _try_json(record.value)
                    if value is not None and match(value):
                        found.append(value)
        return found

    async def drain(self) -> list[dict[str, Any]]:
        """Read up to the topic's end offsets as they are now; every JSON value seen so far."""
        ends = await self.consumer.end_offsets(list(self.consumer.assignment()))
        async def behind() -> bool:
            return any([await self.consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            batch = await self.consumer.getmany(timeout_ms=500)
            for records in batch.values():
                self.seen.extend((record.key, record.value) for record in records)
        return self._decoded()

    def _decoded(self) -> list[dict[str, Any]]:
        return [v for _, raw in self.seen if (v := _try_json(raw)) is not None]


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - no public refresh
    return consumer.partitions_for_topic(topic)


def _try_json(raw: bytes | None) -> Any:
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None
