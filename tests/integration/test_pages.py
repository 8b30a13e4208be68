"""The HTML pages over plain HTTP: status codes, content types, what the first render carries."""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.conftest import Worker
from tests.support import wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"completed", "partial", "failed"}


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (seed % 256, (seed * 7) % 256, (seed * 13) % 256)).save(buf, "PNG")
    return buf.getvalue()


def _initial(page: str) -> Any:
    match = re.search(r'<script type="application/json" id="initial">(.*?)</script>', page, re.S)
    assert match, "no initial JSON in the page"
    return json.loads(match.group(1))


async def _get(url: str) -> tuple[int, str, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            return resp.status, resp.content_type, await resp.text(), dict(resp.headers)


async def _finished_task(worker: Worker) -> dict[str, Any]:
    data = aiohttp.FormData()
    data.add_field("images", _png(int(time.time() * 1000)), filename="page.png", content_type="image/png")
    data.add_field("edit_type", "grayscale")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{worker.url}/api/v1/image-edit/submit", data=data) as resp:
            assert resp.status == 202, await resp.text()
            task_id = (await resp.json())["task_id"]

        async def done() -> dict[str, Any] | None:
            async with session.get(f"{worker.url}/api/v1/image-edit/task/{task_id}") as resp:
                doc = await resp.json() if resp.status == 200 else None
            return doc if doc and doc["status"] in TERMINAL else None

        return await wait_for(done, timeout=60, what=f"task {task_id}")


async def test_task_page_of_a_finished_task(worker: Worker) -> None:
    task = await _finished_task(worker)
    status, ctype, page, headers = await _get(f"{worker.url}/tasks/{task['task_id']}")
    assert status == 200 and ctype == "text/html", (status, ctype)
    assert headers["Cache-Control"] == "no-store"
    nonce = re.search(r"script-src 'nonce-([^']+)'", headers["Content-Security-Policy"]).group(1)
    assert f'<script nonce="{nonce}">' in page
    assert "http://" not in re.sub(r'(href|data-api)="/[^"]*"', "", page.split("<script nonce")[0]).replace(
        "http://127.0.0.1", ""), "the page must not load external assets"
    initial = _initial(page)
    assert initial["task_id"] == task["task_id"] and initial["status"] == "completed"
    assert initial["results"][0]["result_blob"] == task["results"][0]["result_blob"]
    assert f'data-task-id="{task["task_id"]}"' in page
    assert f'data-api="/api/v1/image-edit/task/{task["task_id"]}"' in page
    # The images the page shows are served by the blob API.
    for sha in (initial["results"][0]["result_blob"], initial["results"][0]["source_blob"]):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{worker.url}/api/v1/blobs/{sha}") as resp:
                assert resp.status == 200 and resp.content_type == "image/png"


async def test_unknown_task_gets_a_404_page(worker: Worker) -> None:
    status, ctype, page, _ = await _get(f"{worker.url}/tasks/no-such-task")
    assert status == 404 and ctype == "text/html"
    assert "No task <code>no-such-task</code> is known" in page
    assert _initial(page) is None


async def test_task_ids_are_escaped(worker: Worker) -> None:
    nasty = "%3Cscript%3Ealert(1)%3C%2Fscript%3E%22'"
    status, ctype, page, _ = await _get(f"{worker.url}/tasks/{nasty}")
    assert status == 404 and ctype == "text/html"
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;" in page


async def test_stats_page(worker: Worker) -> None:
    status, ctype, page, headers = await _get(f"{worker.url}/stats")
    assert status == 200 and ctype == "text/html"
    assert "Content-Security-Policy" in headers
    stats = _initial(page)
    assert {"tasks", "images", "cache", "upstream", "dimensions"} <= set(stats)
    for element in ("hit-rate", "calls-saved", "task-completion", "in-flight", "fetch-failures", "dimensions"):
        assert f'id="{element}"' in page
    assert 'data-api="/api/v1/stats"' in page


async def test_json_routes_still_answer_json_errors(worker: Worker) -> None:
    """The pages do not shadow the API: an unknown route is still a JSON error."""
    status, ctype, body, _ = await _get(f"{worker.url}/tasks/")
    assert status == 404 and ctype == "application/json"
    assert json.loads(body)["error"]["code"] == "not_found"
