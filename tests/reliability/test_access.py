"""Issue 7.6: with ``IMAGESTREAM_API_TOKEN`` set every API route needs the bearer token
(``/healthz`` and ``/metrics`` stay open), and neither the DashScope key, the API
token nor a result-URL signature ever reaches a log file."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiohttp
import pytest

from tests.reliability.conftest import Fleet, b64, form, make_png, unique_app_id
from tests.support import emulator_stats, wait_for, wait_task

pytestmark = pytest.mark.integration


async def _call(method: str, url: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        kwargs: dict[str, Any] = {"headers": headers}
        if isinstance(body, aiohttp.FormData):
            kwargs["data"] = body
        elif body is not None:
            kwargs["json"] = body
        async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
            text = (await resp.read()).decode(errors="replace")
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


async def test_every_api_route_needs_the_token_and_secrets_stay_out_of_logs(fleet: Fleet) -> None:
    api_key = f"sk-rel-{uuid.uuid4().hex}"
    token = f"secret-token-{uuid.uuid4().hex}"
    # The emulator accepts only this key (the last --api-key wins) and signs result URLs.
    emulator = fleet.emulator("--latency", "fixed:0.05", "--api-key", api_key, name="rel-access-emulator")
    worker = await fleet.worker("rel-access-worker", emulator=emulator, app_id=unique_app_id("access"),
                                extra_env={"IMAGESTREAM_API_TOKEN": token, "DASHSCOPE_API_KEY": api_key})
    good = {"Authorization": f"Bearer {token}"}
    bad_headers = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Basic {token}"},
        {"Authorization": token},
        {"Authorization": "Bearer "},
        {"X-Api-Token": token},
    ]

    # A real task with the token, so the key is used and signed result URLs are downloaded.
    image = make_png(uuid.uuid4().int % 77777)
    status, accepted = await _call("POST", f"{worker.url}/api/v1/image-edit/submit", good, form([("a.png", image)]))
    assert status == 202, accepted
    task_id = accepted["task_id"]
    doc = await wait_task(worker.url, task_id, token=token)
    assert doc["status"] == "completed", doc
    result = doc["results"][0]
    assert (await emulator_stats(emulator))["results_served"] >= 1  # the signed URL was fetched
    sha = result["result_blob"]

    routes: list[tuple[str, str, Any]] = [
        ("POST", "/api/v1/image-edit/submit", lambda: form([("b.png", make_png(3))])),
        ("GET", f"/api/v1/image-edit/task/{task_id}", None),
        ("GET", "/api/v1/image-edit/task/no-such-task", None),
        ("GET", f"/api/v1/blobs/{sha}", None),
        ("DELETE", f"/api/v1/cache/{'0' * 64}", None),
        ("GET", "/api/v1/dimensions?session_id=s&resource=r&scene=1&url=http://127.0.0.1:9/a.png", None),
        ("POST", "/api/v1/dimensions", {"session_id": "s", "resource": "r", "scene": "1", "data": b64(image)}),
        ("POST", "/api/v1/dimensions/prewarm", {"urls": ["http://127.0.0.1:9/b.png"]}),
        ("GET", "/api/v1/stats", None),
        ("GET", "/api/v1/openapi.json", None),
        # spellings that must not slip past the check
        ("GET", "/api/v1/stats/", None),
        ("GET", "/api/v1/%73tats", None),
        ("GET", "/api/v1/./stats", None),
        ("GET", f"/api/v1/blobs/{sha}?token={token}", None),
    ]
    for method, path, body in routes:
        for headers in bad_headers:
            payload = body() if callable(body) else body
            status, answer = await _call(method, f"{worker.url}{path}", headers, payload)
            assert status in (401, 404), (method, path, headers, status, answer)
            if status == 401:
                assert isinstance(answer, dict) and answer["error"]["code"] == "unauthorized", (path, answer)
            else:  # a spelling that routes nowhere: never served, whatever the header
                assert path in ("/api/v1/stats/", "/api/v1/./stats"), (method, path, status, answer)

    # With the token, each route does its job.
    expected_ok = {
        ("POST", "/api/v1/image-edit/submit"): 202,
        ("GET", f"/api/v1/image-edit/task/{task_id}"): 200,
        ("GET", "/api/v1/image-edit/task/no-such-task"): 404,
        ("GET", f"/api/v1/blobs/{sha}"): 200,
        ("DELETE", f"/api/v1/cache/{'0' * 64}"): 202,
        ("POST", "/api/v1/dimensions"): 200,
        ("POST", "/api/v1/dimensions/prewarm"): 202,
        ("GET", "/api/v1/stats"): 200,
    }
    for method, path, body in routes:
        if (method, path) not in expected_ok:
            continue
        payload = body() if callable(body) else body
        status, answer = await _call(method, f"{worker.url}{path}", good, payload)
        assert status == expected_ok[(method, path)], (method, path, status, answer)

    # Open routes.
    for path in ("/healthz", "/metrics"):
        status, _ = await _call("GET", f"{worker.url}{path}", {})
        assert status == 200, path

    # The HTML pages are shells anyone may load: without the token they carry no data
    # (their scripts read the API with the token from the URL fragment).
    for path, secret_bits in ((f"/tasks/{task_id}", (sha, result["filename"])), ("/stats", ('"upstream"',))):
        for headers in bad_headers:
            status, page = await _call("GET", f"{worker.url}{path}", headers)
            assert status == 200 and isinstance(page, str) and "<html" in page, (path, status)
            for bit in secret_bits:
                assert bit not in page, (path, bit, headers)
        status, page = await _call("GET", f"{worker.url}{path}", good)
        assert status == 200 and all(bit in page for bit in secret_bits), path

    # Secrets never in the logs (the worker's and the emulator's).
    async def flushed() -> bool:
        return "GET /_emulator/stats" in emulator.proc.log_path.read_text(errors="replace")

    await wait_for(flushed, timeout=10, what="the emulator's access log")
    for proc in (worker.proc, emulator.proc):
        text = proc.log_path.read_text(errors="replace")
        assert text, proc.name
        for secret, what in ((api_key, "DashScope key"), (token, "API token"), ("Signature=", "URL signature")):
            assert secret not in text, f"{what} in {proc.log_path}"
