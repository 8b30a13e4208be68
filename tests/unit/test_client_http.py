"""The client against a scripted local HTTP API (no broker, Kafka not used): error
translation, 503/Retry-After and 404-grace retries, polling fallback, downloads,
dimension calls and the sync wrapper."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from producers import (
    ApiError,
    DimensionClient,
    ImageEditClient,
    ImageResult,
    SyncImageEditClient,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    Timeout,
    dimension_key,
)
from producers.errors import ImagestreamClientError, Unreachable
from tests.support import serve_app

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 32


def result_doc(index: int, *, cached: bool = False, failed: bool = False) -> dict[str, Any]:
    return {"task_id": "t1", "index": index, "filename": f"in{index}.jpg",
            "status": "failed" if failed else "completed", "from_cache": cached,
            "result_url": None if failed else f"/api/v1/blobs/{index}",
            "error": {"code": "DataInspectionFailed", "message": "no"} if failed else None,
            "some_future_field": 1}


def status_doc(status: str, results: list[dict[str, Any]], total: int = 3, updated: float = 0.0) -> dict[str, Any]:
    done = [r for r in results if r["status"] == "completed"]
    return {"task_id": "t1", "status": status, "total_images": total, "completed_images": len(done),
            "failed_images": len(results) - len(done), "progress": 100 * len(results) / total,
            "results": results, "created_at": 1.0, "updated_at": updated}


@dataclass
class FakeApi:
    url: str = ""
    #: Answers to GET task/t1, one per call (the last one repeats): (status, body, headers).
    task_answers: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    task_calls: int = 0
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    on_submit: Callable[[bytes], tuple[int, Any]] = lambda body: (202, {"task_id": "t1", "status": "pending",
                                                                       "total_images": 3})


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()

    async def record(request: web.Request) -> bytes:
        body = await request.read()
        fake.requests.append((request.method, str(request.rel_url), dict(request.headers), body))
        return body

    async def submit(request: web.Request) -> web.Response:
        status, doc = fake.on_submit(await record(request))
        return web.json_response(doc, status=status)

    async def task(request: web.Request) -> web.Response:
        await record(request)
        if request.match_info["task_id"] != "t1" or not fake.task_answers:
            return web.json_response({"error": {"code": "task_not_found", "message": "no task"}}, status=404)
        status, body, headers = fake.task_answers[min(fake.task_calls, len(fake.task_answers) - 1)]
        fake.task_calls += 1
        return web.json_response(body, status=status, headers=headers)

    async def blob(request: web.Request) -> web.Response:
        await record(request)
        return web.Response(body=PNG, content_type="image/png")

    async def dims(request: web.Request) -> web.Response:
        body = await record(request)
        doc = json.loads(body) if body else dict(request.query)
        return web.json_response({**doc, "data": None, "width": 640, "height": 480, "scene": doc["scene"],
                                  "url": doc.get("url"), "source": "computed" if body else "placeholder"})

    app = web.Application()
    app.router.add_post("/api/v1/image-edit/submit", submit)
    app.router.add_get("/api/v1/image-edit/task/{task_id}", task)
    app.router.add_get("/api/v1/blobs/{sha}", blob)
    app.router.add_route("*", "/api/v1/dimensions", dims)
    async with serve_app(app) as port:
        fake.url = f"http://127.0.0.1:{port}"
        yield fake


def client(api: FakeApi, **kwargs: Any) -> ImageEditClient:
    return ImageEditClient(api_url=api.url, kafka_bootstrap="", fallback_poll_interval=0.02, **kwargs)


def absolute(api: FakeApi, doc: dict[str, Any]) -> dict[str, Any]:
    results = [{**r, "result_url": api.url + r["result_url"]} if r.get("result_url") else r for r in doc["results"]]
    return {**doc, "results": results}


async def test_submit_over_http_posts_multipart_with_token(api: FakeApi) -> None:
    async with client(api, api_token="s3cret") as c:
        task = await c.submit([PNG, ("b.png", PNG)], "enhance", prompt="p", params={"seed": 1})
    assert (task.task_id, task.total_images, task.via) == ("t1", 3, "http")
    method, path, headers, body = api.requests[0]
    assert (method, path) == ("POST", "/api/v1/image-edit/submit")
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"].startswith("multipart/form-data")
    assert b'name="edit_params"' in body and b'{"seed": 1, "prompt": "p"}' in body


async def test_api_errors_carry_status_code_and_message(api: FakeApi) -> None:
    api.on_submit = lambda body: (400, {"error": {"code": "unknown_edit_type", "message": "known: enhance"}})
    async with client(api) as c:
        with pytest.raises(ApiError) as info:
            await c.submit(PNG, "gold")
    err = info.value
    assert (err.status, err.code, err.message, err.is_client_error, err.retriable) == (
        400, "unknown_edit_type", "known: enhance", True, False)
    assert isinstance(err, ImagestreamClientError)
    assert str(err) == "400 unknown_edit_type: known: enhance"


async def test_status_retries_503_honouring_retry_after(api: FakeApi) -> None:
    busy = {"error": {"code": "not_ready", "message": "joining"}}
    api.task_answers = [(503, busy, {"Retry-After": "0.2"}), (503, busy, {"Retry-After": "0.2"}),
                        (200, status_doc("processing", []), {})]
    async with client(api) as c:
        started = time.monotonic()
        status = await c.status("t1")
    assert status.status == "processing" and api.task_calls == 3
    assert time.monotonic() - started >= 0.4  # waited what Retry-After said, twice


async def test_status_gives_up_on_503_after_the_grace(api: FakeApi) -> None:
    api.task_answers = [(503, {"error": {"code": "not_ready", "message": "joining"}}, {"Retry-After": "0.1"})]
    async with client(api, unavailable_grace=0.35) as c:
        with pytest.raises(ApiError) as info:
            await c.status("t1")
    assert info.value.status == 503 and info.value.retriable and api.task_calls >= 2


async def test_404_is_retried_only_for_a_task_this_client_just_submitted(api: FakeApi) -> None:
    async with client(api) as c:
        with pytest.raises(TaskNotFound) as info:
            await c.status("t1")  # not submitted by this client: no grace
        assert info.value.task_id == "t1" and info.value.status == 404
        await c.submit(PNG, "enhance")
        missing = (404, {"error": {"code": "task_not_found", "message": "no"}}, {})
        api.task_answers = [missing, missing, (200, status_doc("processing", []), {})]
        api.task_calls = 0
        assert (await c.status("t1")).status == "processing"
    async with client(api, not_found_grace=0.0) as c:
        await c.submit(PNG, "enhance")
        api.task_answers, api.task_calls = [missing], 0
        with pytest.raises(TaskNotFound):
            await c.status("t1")


async def test_without_kafka_wait_and_results_poll_and_yield_each_image_once(api: FakeApi) -> None:
    r0, r1, r2 = result_doc(0, cached=True), result_doc(1), result_doc(2, failed=True)
    api.task_answers = [
        (200, status_doc("processing", [], updated=1), {}),
        (200, status_doc("processing", [r0], updated=2), {}),
        (200, status_doc("processing", [r0], updated=2), {}),
        (200, status_doc("processing", [r0, r1], updated=3), {}),
        (200, status_doc("partial", [r0, r1, r2], updated=4), {}),
    ]
    async with client(api) as c:
        results = [r async for r in c.results("t1")]
        assert [(r.index, r.status, r.from_cache) for r in results] == [
            (0, "completed", True), (1, "completed", False), (2, "failed", False)]
        assert results[2].error is not None and results[2].error.code == "DataInspectionFailed"
        api.task_calls = 0
        events = [e async for e in c.events("t1")]
        statuses = [e for e in events if isinstance(e, TaskStatus)]
        assert [s.finished_images for s in statuses] == [0, 1, 2, 3]  # the repeated snapshot is not yielded
        assert sum(isinstance(e, ImageResult) for e in events) == 3
        api.task_calls = 0
        final = await c.wait("t1")
        assert final.status == "partial" and final.is_terminal and final.cached_images == 1
        api.task_calls = 0
        with pytest.raises(TaskFailed) as info:
            await c.wait("t1", raise_on_failure=True)
        assert info.value.task.status == "partial" and info.value.code == "task_failed"


async def test_wait_times_out(api: FakeApi) -> None:
    api.task_answers = [(200, status_doc("processing", []), {})]
    async with client(api) as c:
        with pytest.raises(Timeout) as info:
            await c.wait("t1", timeout=0.3)
    assert isinstance(info.value, TimeoutError) and info.value.code == "timeout"


async def test_download_names_the_file_after_the_input(api: FakeApi, tmp_path: Path) -> None:
    doc = absolute(api, status_doc("completed", [result_doc(0), result_doc(1, failed=True)], total=2))
    final = TaskStatus.from_dict(doc)
    async with client(api, api_token="tok") as c:
        path = await c.download(final.results[0], tmp_path / "out")
        assert path == tmp_path / "out" / "00-in0.png" and path.read_bytes() == PNG
        assert api.requests[-1][2]["Authorization"] == "Bearer tok"
        with pytest.raises(ImagestreamClientError) as info:
            await c.download(final.results[1], tmp_path)
        assert info.value.code == "no_result"


async def test_unreachable_api() -> None:
    from tests.support import free_port

    async with ImageEditClient(api_url=f"http://127.0.0.1:{free_port()}", kafka_bootstrap="") as c:
        with pytest.raises(Unreachable) as info:
            await c.status("x")
    assert info.value.service == "api" and isinstance(info.value, ConnectionError)


async def test_dimension_client_get_and_compute(api: FakeApi, tmp_path: Path) -> None:
    async with DimensionClient(api_url=api.url, kafka_bootstrap="") as dims:
        got = await dims.get("s", "r", 3, "http://img/x.png", refresh=True)
        assert (got.width, got.height, got.scene, got.source, got.is_placeholder) == (640, 480, "3", "placeholder",
                                                                                      True)
        _, path, _, _ = api.requests[-1]
        assert "refresh=true" in path and "scene=3" in path and "session_id=s" in path
        image = tmp_path / "i.png"
        image.write_bytes(PNG)
        computed = await dims.compute("s", "r", "1", image)
        assert computed.source == "computed"
        body = json.loads(api.requests[-1][3])
        assert body["data"] and body["session_id"] == "s" and body["scene"] == "1"
    assert dimension_key("a|b", "c\\d", 1) == "a\\|b|c\\\\d|1"
    assert dimension_key("s", "r", "1") == "s|r|1"


async def test_sync_client_runs_on_its_own_loop(api: FakeApi) -> None:
    api.task_answers = [(200, status_doc("processing", [result_doc(0)]), {}),
                        (200, status_doc("completed", [result_doc(i) for i in range(3)]), {})]

    def script() -> tuple[str, list[int], str]:
        with SyncImageEditClient(api_url=api.url, kafka_bootstrap="", fallback_poll_interval=0.02) as c:
            task = c.submit(PNG, "enhance")
            indexes = [r.index for r in c.results(task.task_id)]
            return task.task_id, indexes, c.wait(task.task_id).status

    # Called from a plain thread while this test's loop keeps serving the fake API:
    # the wrapper runs the async client on a loop of its own.
    task_id, indexes, final = await asyncio.to_thread(script)
    assert (task_id, indexes, final) == ("t1", [0, 1, 2], "completed")
