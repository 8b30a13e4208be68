"""The ``imagestream`` client commands as subprocesses against the session worker."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.conftest import Emulator, Worker
from tests.support import emulator_config

pytestmark = pytest.mark.integration


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli_env(worker: Worker, kafka_bootstrap: str) -> dict[str, str]:
    return {**os.environ, "IMAGESTREAM_API_URL": worker.url, "IMAGESTREAM_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "IMAGESTREAM_TOPIC_PREFIX": f"{worker.app_id}."}


async def imagestream(env: dict[str, str], *args: str, timeout: float = 120) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "producers.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Run(await proc.wait(), out.decode(), err.decode())  # the exit code communicate() waited for


def write_png(folder: Path, name: str, size: tuple[int, int] = (160, 120)) -> Path:
    seed = uuid.uuid4().int % 10_000_000
    img = Image.new("RGB", size, (seed % 256, seed * 7 % 256, seed * 13 % 256))
    ImageDraw.Draw(img).rectangle((5, 5 + seed % 50, 80, 100), fill=(seed * 3 % 256, 20, 240))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    path = folder / name
    path.write_bytes(buf.getvalue())
    return path


async def test_submit_wait_json_out_then_status_and_watch(
    cli_env: dict[str, str], fresh_emulator: Emulator, tmp_path: Path
) -> None:
    images = [write_png(tmp_path, "a.png"), write_png(tmp_path, "b.png")]
    out = tmp_path / "out"
    run = await imagestream(cli_env, "submit", *map(str, images), "--edit-type", "enhance",
                            "--prompt", "提升画质", "--wait", "--json", "--out", str(out))
    assert run.code == 0, run
    doc = run.json()
    assert doc["status"] == "completed" and doc["completed_images"] == 2 and doc["total_images"] == 2
    assert [d["index"] for d in doc["downloads"]] == [0, 1]
    assert sorted(p.name for p in out.iterdir()) == ["00-a.png", "01-b.png"]
    assert all(Image.open(p).size == (160, 120) for p in out.iterdir())
    assert run.err == ""  # --json: nothing but the document

    task_id = doc["task_id"]
    status = await imagestream(cli_env, "status", task_id, "--json")
    assert status.code == 0 and status.json()["status"] == "completed"
    assert [r["index"] for r in status.json()["results"]] == [0, 1]

    human = await imagestream(cli_env, "status", task_id)
    assert human.code == 0 and f"task {task_id} completed: 2/2 images edited" in human.out

    watch = await imagestream(cli_env, "watch", task_id, "--json")
    assert watch.code == 0, watch
    lines = [json.loads(line) for line in watch.out.splitlines()]
    assert sorted(e["index"] for e in lines if e["event"] == "result") == [0, 1]
    assert lines[-1]["event"] == "status" and lines[-1]["status"] == "completed"


async def test_plain_output_progress_lines_and_no_wait(
    cli_env: dict[str, str], fresh_emulator: Emulator, tmp_path: Path
) -> None:
    images = [str(write_png(tmp_path, f"p{i}.png")) for i in range(3)]
    run = await imagestream(cli_env, "submit", *images, "-e", "grayscale")
    assert run.code == 0, run
    # Not a terminal: one line per image on stderr, the outcome on stdout.
    progress = [line for line in run.err.splitlines() if line.startswith("[")]
    assert len(progress) == 3 and progress[-1].startswith("[3/3] ")
    assert " completed: 3/3 images edited (0 cached, 3 fresh, 0 failed)" in run.out

    again = await imagestream(cli_env, "submit", *images, "-e", "grayscale", "--no-wait")
    assert again.code == 0
    task_id = again.out.strip()
    assert len(task_id) == 32 and "accepted" in again.err
    watch = await imagestream(cli_env, "watch", task_id)
    assert watch.code == 0 and "3 cached, 0 fresh" in watch.out


async def test_failed_task_exits_3(cli_env: dict[str, str], fresh_emulator: Emulator, tmp_path: Path) -> None:
    image = write_png(tmp_path, "x.png")
    await emulator_config(fresh_emulator, rate_inspection=1.0, latency="fixed:0.01")
    try:
        run = await imagestream(cli_env, "submit", str(image), "-e", "enhance", "--prompt", "inspect me",
                                "--json")
    finally:
        await emulator_config(fresh_emulator, rate_inspection=0.0)
    assert run.code == 3, run
    doc = run.json()
    assert doc["status"] == "failed" and doc["results"][0]["error"]["code"] == "DataInspectionFailed"
    status = await imagestream(cli_env, "status", doc["task_id"])
    assert status.code == 3 and "DataInspectionFailed" in status.out


async def test_partial_task_over_kafka_exits_2(cli_env: dict[str, str], fresh_emulator: Emulator,
                                               tmp_path: Path) -> None:
    good = write_png(tmp_path, "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    run = await imagestream(cli_env, "submit", str(good), str(broken), "-e", "enhance", "--via", "kafka",
                            "--json")
    assert run.code == 2, run
    doc = run.json()
    assert doc["status"] == "partial" and doc["completed_images"] == 1 and doc["failed_images"] == 1
    assert [r["status"] for r in doc["results"]] == ["completed", "failed"]


async def test_input_errors_exit_4(cli_env: dict[str, str], tmp_path: Path) -> None:
    missing = await imagestream(cli_env, "submit", str(tmp_path / "nope.png"), "-e", "enhance")
    assert missing.code == 4 and "file_not_found" in missing.err

    image = write_png(tmp_path, "a.png")
    bad_type = await imagestream(cli_env, "submit", str(image), "-e", "turn-into-gold", "--json")
    assert bad_type.code == 4, bad_type
    assert bad_type.json()["error"]["code"] == "unknown_edit_type"
    assert bad_type.json()["error"]["status"] == 400
    assert "unknown_edit_type" in bad_type.err

    unknown = await imagestream(cli_env, "status", f"no-such-{uuid.uuid4().hex[:6]}")
    assert unknown.code == 4 and "task_not_found" in unknown.err

    usage = await imagestream(cli_env, "submit", str(image))
    assert usage.code == 4 and "--edit-type" in usage.err


async def test_unreachable_api_exits_5(cli_env: dict[str, str]) -> None:
    from tests.support import free_port

    run = await imagestream(cli_env, "--api-url", f"http://127.0.0.1:{free_port()}", "stats")
    assert run.code == 5 and "unreachable" in run.err


async def test_dims_and_stats(cli_env: dict[str, str]) -> None:
    dims = await imagestream(cli_env, "dims", "http://127.0.0.1:1/x.png", "--session", uuid.uuid4().hex[:8],
                             "--resource", "r", "--scene", "1", "--json")
    assert dims.code == 0, dims
    doc = dims.json()
    assert doc["scene"] == "1" and doc["width"] > 0 and doc["source"] == "placeholder"

    stats = await imagestream(cli_env, "stats", "--json")
    assert stats.code == 0 and {"tasks", "images", "cache", "upstream"} <= stats.json().keys()
    human = await imagestream(cli_env, "stats")
    assert human.code == 0 and "hit rate" in human.out
