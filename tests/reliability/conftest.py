"""Helpers of the reliability suite (issue 7).

Every test here starts its own emulator and workers (``tests.support``) so it may
kill them; app ids (and so topic prefixes and consumer groups) are unique per test.
Nothing sleeps to synchronise: waits poll a condition until a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from tests.support import (
    REPO,
    Emulator,
    Proc,
    Worker,
    edit_form,
    free_port,
    get_json,
    serve_app,
    start_emulator,
    start_worker,
)

PROMPT = "reliability: sharpen the details"


# --- identities -----------------------------------------------------------------------------
def unique_app_id(tag: str) -> str:
    return f"rel-{tag}-{uuid.uuid4().hex[:8]}"


# --- images -------------------------------------------------------------------------------
def make_png(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small distinct PNG per seed (distinct pixels: distinct cache keys)."""
    img = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    draw = ImageDraw.Draw(img)
    draw.rectangle((seed % 20, 3, 20 + seed % 30, 30), fill=(255 - seed % 256, (seed // 256) % 256, 200))
    draw.point((seed % size[0], (seed // size[0]) % size[1]), fill=(seed % 251, seed % 241, seed % 239))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- HTTP ---------------------------------------------------------------------------------
def form(files: list[tuple[str, bytes]], *, edit_type: str = "enhance", prompt: str | None = PROMPT,
         params: dict[str, Any] | None = None) -> aiohttp.FormData:
    """A submit form whose ``edit_params`` (always sent) carry ``prompt`` unless it is None."""
    edit_params = dict(params or {})
    if prompt is not None:
        edit_params["prompt"] = prompt
    return edit_form(files, edit_type=edit_type, params=edit_params)


async def worker_stats(worker: Worker, token: str | None = None) -> dict[str, Any]:
    status, body = await get_json(f"{worker.url}/api/v1/stats", token)
    assert status == 200, body
    return body


# --- processes ----------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Fleet:
    """Emulators and workers a test started; all stopped at its end."""

    kafka_bootstrap: str
    tmp: Path
    emulators: list[Emulator] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def emulator(self, *args: str, name: str = "rel-emulator") -> Emulator:
        # Unlimited unless a test asks for limits: no cluster-wide account-budget scheduler
        # yet, and these tests are about faults and restarts, not the account limits.
        extra = () if "--account-rps" in args else ("--unlimited", "--output-size", "input")
        emu = start_emulator(*args, *extra, name=name)
        self.emulators.append(emu)
        return emu

    async def worker(self, name: str, *, emulator: Emulator, app_id: str, data_dir: Path | None = None,
                     partitions: int = 1, extra_env: dict[str, str] | None = None, port: int | None = None,
                     kafka_bootstrap: str | None = None, on_spawn: Callable[[Proc], None] | None = None) -> Worker:
        """Start a worker in a thread (the test's own servers keep answering meanwhile)."""
        data_dir = data_dir or (self.tmp / f"{name}-data")
        data_dir.mkdir(parents=True, exist_ok=True)
        w = await asyncio.to_thread(
            start_worker, name, kafka_bootstrap=kafka_bootstrap or self.kafka_bootstrap, emulator=emulator,
            data_dir=data_dir, app_id=app_id, partitions=partitions, extra_env=extra_env, port=port,
            on_spawn=on_spawn)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.proc.stop(timeout=20)
        for e in self.emulators:
            with contextlib.suppress(Exception):
                e.proc.stop(timeout=10)


@pytest.fixture
def fleet(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(kafka_bootstrap=kafka_bootstrap, tmp=tmp_path)
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_fleet(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fleet shared by one module's tests (for services no test of it kills)."""
    f = Fleet(kafka_bootstrap=kafka_bootstrap, tmp=tmp_path_factory.mktemp("fleet"))
    yield f
    f.close()


# --- a private broker (broker-restart test) ------------------------------------------------
@dataclass
class PrivateBroker:
    home: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "KAFKA_HOME_DIR": str(self.home), "KAFKA_PORT": str(self.port),
                "KAFKA_CONTROLLER_PORT": str(self.controller_port)}

    def run(self, command: str, timeout: float = 300) -> str:
        done = subprocess.run([str(REPO / "scripts" / "kafka"), command], env=self.env(), capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"scripts/kafka {command} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(home=tmp_path / "kafka-home", port=free_port(), controller_port=free_port())
    broker.home.mkdir()
    shared_lib = REPO / ".cache" / "kafka" / "lib"
    if shared_lib.is_dir():  # reuse the installed jars instead of a second Maven run
        (broker.home / "lib").symlink_to(shared_lib)
    try:
        broker.run("start")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield broker
    with contextlib.suppress(Exception):
        broker.run("stop", timeout=120)


# --- a tiny image server (dimension fetches) ----------------------------------------------
@dataclass
class HeldImage:
    body: bytes
    gate: asyncio.Event | None = None
    hits: int = 0


@dataclass
class ImageServer:
    base: str = ""
    items: dict[str, HeldImage] = field(default_factory=dict)

    def add(self, body: bytes, *, held: bool = False) -> tuple[str, HeldImage]:
        path = f"/img/{uuid.uuid4().hex}.png"
        item = HeldImage(body=body, gate=asyncio.Event() if held else None)
        self.items[path] = item
        return self.base + path, item

    async def handle(self, request: Any) -> Any:
        from aiohttp import web

        item = self.items.get(request.path)
        if item is None:
            return web.Response(status=404)
        item.hits += 1
        if item.gate is not None:
            await item.gate.wait()
        return web.Response(body=item.body, content_type="image/png")


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    from aiohttp import web

    server = ImageServer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    async with serve_app(app, shutdown_timeout=0.5) as port:
        server.base = f"http://127.0.0.1:{port}"
        yield server
        for item in server.items.values():
            if item.gate is not None:
                item.gate.set()


def elapsed_since(t0: float) -> float:
    return round(time.monotonic() - t0, 2)
