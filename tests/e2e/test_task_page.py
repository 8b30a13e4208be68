"""The task and stats pages as a person sees them: headless Chromium over DevTools.

A task of 3 images (one new, the same one again, one edited before) is submitted
to the session worker while the emulator answers in 1 s; the page is opened at
once and must show progress, then the finished task, without a reload: 3 loaded
result images beside 3 loaded originals, statuses, and the HIT / MISS / COALESCED
badges the API reports.  Screenshots are kept in ``test-artifacts/``.
"""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from PIL import Image, ImageDraw

from tests.conftest import Emulator, Worker
from tests.e2e.browser import Browser, ChromiumUnavailable, Page, ensure_chromium
from tests.support import ARTIFACTS, produce, wait_for

pytestmark = pytest.mark.integration

TERMINAL = {"completed", "partial", "failed"}


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; a run that cannot have it fails (it is part of the test setup)."""
    try:
        return ensure_chromium()
    except ChromiumUnavailable as exc:
        pytest.fail(f"headless Chromium is needed for the page tests and could not be installed: {exc}",
                    pytrace=False)


@pytest.fixture
async def slow_emulator(emulator: Emulator) -> AsyncIterator[Emulator]:
    """The session emulator answering every call in 1 s, restored afterwards."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emulator.base_url}/_emulator/config") as resp:
            before = await resp.json()
        await _configure(session, emulator, latency="fixed:1.0", rate_429=0.0, rate_500=0.0, rate_drop=0.0,
                         rate_inspection=0.0)
        try:
            yield emulator
        finally:
            await _configure(session, emulator, **{k: before[k] for k in
                                                   ("latency", "rate_429", "rate_500", "rate_drop", "rate_inspection")})


async def _configure(session: aiohttp.ClientSession, emulator: Emulator, **config: Any) -> None:
    async with session.post(f"{emulator.base_url}/_emulator/config", json=config) as resp:
        assert resp.status == 200, await resp.text()


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with Browser(chromium, ARTIFACTS, width=1280, height=900) as b:
        yield b


def picture(seed: int, label: str) -> bytes:
    """A 480×360 PNG that differs per seed (so it is a cache miss the first time)."""
    img = Image.new("RGB", (480, 360), (30 + seed * 37 % 200, 60 + seed * 91 % 160, 90 + seed * 53 % 150))
    draw = ImageDraw.Draw(img)
    for step in range(6):
        x = 20 + (seed * 13 + step * 71) % 360
        draw.ellipse((x, 40 + step * 45, x + 90, 130 + step * 35), fill=(255 - step * 30, 180, 40 + step * 35))
    draw.rectangle((0, 320, 480, 360), fill=(20, 20, 20))
    draw.text((12, 332), label, fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def submit(worker: Worker, files: list[tuple[str, bytes]], edit_type: str = "enhance") -> str:
    data = aiohttp.FormData()
    for name, blob in files:
        data.add_field("images", blob, filename=name, content_type="image/png")
    data.add_field("edit_type", edit_type)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{worker.url}/api/v1/image-edit/submit", data=data) as resp:
            body = await resp.json()
            assert resp.status == 202, body
            return str(body["task_id"])


async def task_json(worker: Worker, task_id: str) -> dict[str, Any] | None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/image-edit/task/{task_id}") as resp:
            return await resp.json() if resp.status == 200 else None


async def wait_task(worker: Worker, task_id: str, timeout: float = 60) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        doc = await task_json(worker, task_id)
        return doc if doc and doc["status"] in TERMINAL else None

    return await wait_for(done, timeout=timeout, what=f"task {task_id}")


_CARDS = """Array.from(document.querySelectorAll('.image-card')).map(c => ({
  index: Number(c.dataset.index), status: c.dataset.status, cache: c.dataset.cache,
  statusText: c.querySelector('.status').textContent.trim(),
  badge: c.querySelector('.cache').hidden ? null : c.querySelector('.cache').textContent.trim(),
  name: c.querySelector('.name').textContent,
  result: (i => i ? {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight} : null)(c.querySelector('.result img')),
  original: (i => i ? {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight} : null)(c.querySelector('.original img')),
}))"""


async def page_state(page: Page) -> dict[str, Any]:
    return await page.evaluate(
        "({status: document.getElementById('task').dataset.status,"
        " progress: document.getElementById('progress-text').textContent,"
        " live: document.getElementById('live').textContent,"
        " marker: window.__notReloaded === true, cards: " + _CARDS + "})"
    )


async def test_task_page_shows_live_progress_then_results(
    worker: Worker, slow_emulator: Emulator, browser: Browser
) -> None:
    stamp = int(time.time() * 1000) % 100_000
    fresh, known = picture(stamp, f"fresh {stamp}"), picture(stamp + 1, f"known {stamp}")
    # Edit one picture first, so the task has a cache HIT beside a MISS and a COALESCED twin.
    await wait_task(worker, await submit(worker, [("known.png", known)]))

    task_id = await submit(worker, [("fresh.png", fresh), ("fresh-again.png", fresh), ("known.png", known)])
    page = await browser.page()
    await page.navigate(f"{worker.url}/tasks/{task_id}")
    await page.evaluate("window.__notReloaded = true")
    seen: list[str] = []
    partial: list[str] = []  # progress texts shown while processing with some images done

    async def finished() -> dict[str, Any] | None:
        state = await page_state(page)
        if not seen or seen[-1] != state["status"]:
            seen.append(state["status"])
        if state["status"] == "processing" and re.match(r"[12] / 3 images", state["progress"]):
            partial.append(state["progress"])
        if state["status"] == "processing" and not (ARTIFACTS / "task-page-progress.png").exists():
            await page.screenshot(ARTIFACTS / "task-page-progress.png")
        loaded = all(c["result"] and c["result"]["w"] > 0 and c["original"] and c["original"]["w"] > 0
                     for c in state["cards"])
        return state if state["status"] in TERMINAL and len(state["cards"]) == 3 and loaded else None

    (ARTIFACTS / "task-page-progress.png").unlink(missing_ok=True)
    try:
        state = await wait_for(finished, timeout=60, interval=0.1, what="the page to show the finished task")
    except TimeoutError:
        await page.screenshot(ARTIFACTS / "task-page-timeout.png")
        raise
    api = await task_json(worker, task_id)
    assert api is not None and api["status"] == "completed", api

    # Live: the page saw the task unfinished, then finished, in the same document.
    assert seen[0] in ("pending", "processing", "loading", "unknown"), seen
    assert seen[-1] == "completed", seen
    # ... and in between "processing" with a partial count (the HIT is done at once,
    # the MISS takes the emulator's 1 s).
    assert "processing" in seen and partial, (seen, partial)
    assert state["marker"], "the page was reloaded"
    assert state["progress"].startswith("3 / 3 images"), state["progress"]
    assert "finished" in state["live"], state["live"]

    by_index = {r["index"]: r for r in api["results"]}
    for card in sorted(state["cards"], key=lambda c: c["index"]):
        result = by_index[card["index"]]
        assert card["status"] == card["statusText"] == "completed", card
        assert card["name"] == result["filename"], card
        assert card["badge"] == card["cache"] == result["cache_status"], (card, result)
        assert card["result"]["complete"] and card["result"]["w"] > 0, card
        assert card["original"]["complete"] and card["original"]["w"] == 480, card
    badges = [c["badge"] for c in sorted(state["cards"], key=lambda c: c["index"])]
    assert badges[0] == "MISS" and badges[1] in ("COALESCED", "HIT") and badges[2] == "HIT", badges
    assert not page.exceptions, page.exceptions

    shot = await page.screenshot(ARTIFACTS / "task-page.png")
    assert shot.stat().st_size > 10_000

    # An unknown task: the 404 page, which says so.
    await page.navigate(f"{worker.url}/tasks/no-such-task-{uuid.uuid4().hex[:6]}")
    text = await page.evaluate("document.getElementById('not-found').textContent")
    assert "is known" in text and "No task" in text, text
    await page.close()


async def test_stats_page_renders_and_refreshes(worker: Worker, browser: Browser) -> None:
    page = await browser.page()
    await page.navigate(f"{worker.url}/stats")
    first = int(await page.wait_for("Number(document.getElementById('stats').dataset.rendered || 0)",
                                    timeout=10, what="the first render"))
    # Auto-refresh: rendered again from /api/v1/stats without a reload.
    await page.wait_for(f"Number(document.getElementById('stats').dataset.rendered) > {first}", timeout=15,
                        what="a refresh")
    shown = await page.evaluate(
        "({hit: document.getElementById('hit-rate').textContent,"
        " saved: document.getElementById('calls-saved').textContent,"
        " live: document.getElementById('live').textContent,"
        " flight: document.querySelectorAll('#in-flight tr[data-partition]').length,"
        " dims: Array.from(document.querySelectorAll('#dimensions tr')).map(r => r.cells[0].textContent)})"
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/stats") as resp:
            stats = await resp.json()
    rate = stats["cache"]["hit_rate"]
    assert shown["hit"] == ("—" if rate is None else f"{100 * rate:.1f}%"), (shown, stats["cache"])
    assert shown["live"].startswith("live"), shown
    assert shown["flight"] == len(stats["upstream"]["in_flight"]), (shown, stats["upstream"])
    assert "cache hits" in shown["dims"], shown
    assert not page.exceptions, page.exceptions
    await page.screenshot(ARTIFACTS / "stats-page.png")
    await page.close()


async def test_page_opened_before_a_kafka_task_exists_finds_it(
    worker: Worker, kafka_bootstrap: str, browser: Browser
) -> None:
    """A task sent through Kafka is unknown until planned: the 404 page keeps looking
    and shows the task once it exists, without a reload."""
    task_id = f"kafka-page-{uuid.uuid4().hex[:8]}"
    page = await browser.page()
    await page.navigate(f"{worker.url}/tasks/{task_id}")
    await page.evaluate("window.__notReloaded = true")
    assert await page.evaluate("document.getElementById('not-found').hidden") is False
    image = picture(int(time.time() * 1000) % 100_000 + 7, "via kafka")
    event = {"task_id": task_id, "edit_type": "grayscale", "edit_params": {},
             "images": [{"filename": "kafka.png", "data": base64.b64encode(image).decode()}]}
    await produce(kafka_bootstrap, worker.topic("image-edit-requests"), event, key=task_id)
    await page.wait_for("document.getElementById('task').dataset.status === 'completed'"
                        " && document.querySelector('.image-card .result img')?.naturalWidth > 0",
                        timeout=60, what="the Kafka task on the page")
    assert await page.evaluate("window.__notReloaded === true && document.getElementById('not-found').hidden")
    assert not page.exceptions, page.exceptions
    await page.close()


async def test_task_page_shows_every_paid_output(worker: Worker, kafka_bootstrap: str, browser: Browser) -> None:
    """n=3 on qwen-image-edit-plus: the card shows all three outputs, each loaded."""
    task_id = f"n3-page-{uuid.uuid4().hex[:8]}"
    image = picture(int(time.time() * 1000) % 100_000 + 11, "n = 3")
    event = {"task_id": task_id, "edit_type": "enhance",
             "edit_params": {"model": "qwen-image-edit-plus", "n": 3, "seed": 5},
             "images": [{"filename": "three.png", "data": base64.b64encode(image).decode()}]}
    await produce(kafka_bootstrap, worker.topic("image-edit-requests"), event, key=task_id)
    page = await browser.page()
    await page.navigate(f"{worker.url}/tasks/{task_id}")
    loaded = await page.wait_for(
        "(() => { const imgs = [...document.querySelectorAll('.image-card .outputs img')];"
        " return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0) ? imgs.length : null; })()",
        timeout=60, what="the three outputs on the page")
    assert loaded == 3
    captions = await page.evaluate("[...document.querySelectorAll('.outputs figcaption')].map(c => c.textContent)")
    assert captions == ["output 1 / 3", "output 2 / 3", "output 3 / 3"]
    await page.screenshot(ARTIFACTS / "task-page-n3.png")
    assert not page.exceptions, page.exceptions
    await page.close()
