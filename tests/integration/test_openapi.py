"""The OpenAPI document against the running worker, both ways.

* Every route the app registers is documented, and nothing else is: the routes are
  read from the app's own aiohttp router (``python -m streams.openapi --routes``, in a
  subprocess so this process never builds the app).
* Every documented operation answers on the session worker with a status the
  document lists for it (so never 405, never aiohttp's route-miss 404), with the
  documented media type, and its JSON validates against the documented schema —
  successes and errors alike.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from streams.openapi import OPENAPI_PATH, document, documented_routes, validate
from tests.conftest import Worker
from tests.support import REPO, wait_for

pytestmark = pytest.mark.integration

DOC = document()
TERMINAL = {"completed", "partial", "failed"}


def _png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed % 256, (seed * 5) % 256, (seed * 11) % 256)).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Answer:
    method: str
    template: str
    status: int
    content_type: str
    body: bytes
    checked: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def _operation(method: str, template: str) -> dict[str, Any]:
    return DOC["paths"][template][method.lower()]


class Caller:
    """Calls the worker and checks each answer against the document."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.covered: set[tuple[str, str]] = set()

    async def call(self, method: str, template: str, *, expect: int | None = None, url: str | None = None,
                   **kwargs: Any) -> Answer:
        target = self.base + (url or template)
        async with self.session.request(method, target, allow_redirects=False, **kwargs) as resp:
            answer = Answer(method, template, resp.status, resp.content_type, await resp.read())
        self.check(answer)
        if expect is not None:
            assert answer.status == expect, f"{method} {target}: {answer.status} {answer.body[:300]!r}"
        self.covered.add((method, template))
        return answer

    def check(self, answer: Answer) -> None:
        where = f"{answer.method} {answer.template} → {answer.status}"
        assert answer.status != 405, where
        responses = _operation(answer.method, answer.template)["responses"]
        assert str(answer.status) in responses, f"{where}: status not documented ({sorted(responses)}): " \
                                                f"{answer.body[:300]!r}"
        content = responses[str(answer.status)].get("content")
        if not content:
            return
        media = [m for m in content if _media_matches(m, answer.content_type)]
        assert media, f"{where}: content type {answer.content_type} not in {list(content)}"
        if answer.content_type == "application/json":
            problems = validate(answer.json(), content[media[0]]["schema"], DOC)
            assert not problems, f"{where}: {problems}"


def _media_matches(documented: str, actual: str) -> bool:
    if documented.endswith("/*"):
        return actual.startswith(documented[:-1])
    return documented == actual


def test_every_registered_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    env = {**os.environ, "IMAGESTREAM_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "streams.openapi", "--routes"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    registered = {tuple(line.split(" ", 1)) for line in done.stdout.splitlines() if line.strip()}
    documented = documented_routes(DOC)
    assert registered - documented == set(), f"registered but not documented: {sorted(registered - documented)}"
    assert documented - registered == set(), f"documented but not registered: {sorted(documented - registered)}"


def test_document_is_well_formed() -> None:
    assert DOC["openapi"].startswith("3.1")
    text = json.dumps(DOC)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        target: Any = DOC
        for piece in ref.removeprefix("#/").split("/"):
            assert piece in target, f"dangling $ref {ref}"
            target = target[piece]
    operation_ids = []
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            operation_ids.append(op["operationId"])
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}, (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and "application/json" in response.get("content", {}) \
                        and not path.startswith("/healthz"):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (method, path, status)
    assert len(operation_ids) == len(set(operation_ids))
    # The validator itself: it does reject what it should.
    assert validate({"error": {"code": "x"}}, {"$ref": "#/components/schemas/Error"}, DOC)
    assert validate({"task_id": 1}, {"$ref": "#/components/schemas/SubmitAccepted"}, DOC)
    assert not validate({"error": {"code": "x", "message": "y"}}, {"$ref": "#/components/schemas/Error"}, DOC)


async def test_every_documented_operation_answers_as_documented(worker: Worker) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        api = Caller(session, worker.url)

        served = (await api.call("GET", OPENAPI_PATH, expect=200)).json()
        assert served == DOC, "the worker serves a different document"

        # --- image edits: submit, the task, its blobs, the task page --------------------
        data = aiohttp.FormData()
        data.add_field("images", _png(int(time.time() * 1000) % 100_000), filename="doc.png",
                       content_type="image/png")
        data.add_field("edit_type", "enhance")
        task_id = (await api.call("POST", "/api/v1/image-edit/submit", expect=202, data=data)).json()["task_id"]

        async def finished() -> dict[str, Any] | None:
            answer = await api.call("GET", "/api/v1/image-edit/task/{task_id}",
                                    url=f"/api/v1/image-edit/task/{task_id}")
            doc = answer.json() if answer.status == 200 else None
            return doc if doc and doc["status"] in TERMINAL else None

        task = await wait_for(finished, timeout=60, what=f"task {task_id}")
        assert task["status"] == "completed" and len(task["results"]) == 1, task
        result = task["results"][0]
        await api.call("GET", "/api/v1/image-edit/task/{task_id}", url="/api/v1/image-edit/task/none-such",
                       expect=404)
        await api.call("GET", "/api/v1/blobs/{sha256}", url=f"/api/v1/blobs/{result['result_blob']}", expect=200)
        await api.call("GET", "/api/v1/blobs/{sha256}", url=f"/api/v1/blobs/{'0' * 64}", expect=404)
        await api.call("GET", "/api/v1/blobs/{sha256}", url="/api/v1/blobs/not-a-sha", expect=400)
        upload = _png(int(time.time() * 1000) % 100_000 + 1)
        stored = (await api.call("POST", "/api/v1/blobs", data=upload, expect=201,
                                 headers={"Content-Type": "application/octet-stream"})).json()
        assert stored["size"] == len(upload) and (stored["width"], stored["height"]) == (96, 64), stored
        await api.call("POST", "/api/v1/blobs", data=b"not an image", expect=400,
                       headers={"Content-Type": "application/octet-stream"})
        await api.call("POST", "/api/v1/image-edit/submit", expect=400,
                       data=aiohttp.FormData({"edit_type": "enhance"}))
        await api.call("GET", "/tasks/{task_id}", url=f"/tasks/{task_id}", expect=200)
        await api.call("GET", "/tasks/{task_id}", url="/tasks/none-such", expect=404)
        # An invalidation of a key nobody has (the worker's cache is shared by the other tests).
        await api.call("DELETE", "/api/v1/cache/{cache_key}", url=f"/api/v1/cache/{uuid.uuid4().hex * 2}",
                       expect=202)
        await api.call("DELETE", "/api/v1/cache/{cache_key}", url="/api/v1/cache/nope", expect=400)

        # --- dimensions -------------------------------------------------------------
        ident = {"session_id": f"doc-{uuid.uuid4().hex[:8]}", "resource": "r1", "scene": "feed"}
        image_url = f"{worker.url}/api/v1/blobs/{result['source_blob']}"
        await api.call("GET", "/api/v1/dimensions", params=ident, expect=404)
        await api.call("GET", "/api/v1/dimensions", params={**ident, "url": image_url}, expect=200)
        await api.call("GET", "/api/v1/dimensions", params={"session_id": "x"}, expect=400)
        inline = {**ident, "resource": "r2", "data": base64.b64encode(_png(7, (30, 20))).decode()}
        computed = (await api.call("POST", "/api/v1/dimensions", json=inline, expect=200)).json()
        assert (computed["width"], computed["height"], computed["source"]) == (30, 20, "computed")
        await api.call("POST", "/api/v1/dimensions", data=b"{not json", expect=400,
                       headers={"Content-Type": "application/json"})
        await api.call("POST", "/api/v1/dimensions/prewarm", json={"urls": [image_url]}, expect=202)
        await api.call("POST", "/api/v1/dimensions/prewarm", json={"urls": []}, expect=400)
        batch = {"session_id": ident["session_id"], "scene": "feed",
                 "items": [{"resource": "b1", "url": image_url},
                           {"resource": "b2", "data": base64.b64encode(_png(8, (12, 34))).decode()},
                           {"resource": "b3", "data": base64.b64encode(b"not an image").decode()}]}
        answered = (await api.call("POST", "/api/v1/dimensions/batch", json=batch, expect=200)).json()["items"]
        assert [item["resource"] for item in answered] == ["b1", "b2", "b3"]
        assert (answered[1]["width"], answered[1]["height"]) == (12, 34) and answered[2]["error"] is not None
        await api.call("POST", "/api/v1/dimensions/batch", json={**batch, "items": []}, expect=400)

        # --- operations and pages -------------------------------------------------------
        await api.call("GET", "/api/v1/stats", expect=200)
        metrics = await api.call("GET", "/metrics", expect=200)
        assert b"imagestream_" in metrics.body
        await api.call("GET", "/healthz", expect=200)
        await api.call("GET", "/stats", expect=200)

        # --- Faust's own routes ---------------------------------------------------------
        await api.call("GET", "/", expect=200)
        await api.call("GET", "/router/", expect=200)
        await api.call("GET", "/router/topics", expect=200)
        await api.call("GET", "/router/{name}/", url="/router/task_status/", expect=200)
        await api.call("GET", "/router/{name}/{key}/", url=f"/router/task_status/{task_id}/")

        assert api.covered == documented_routes(DOC), f"not exercised: {documented_routes(DOC) - api.covered}"


async def test_error_bodies_match_the_error_schema(worker: Worker) -> None:
    """aiohttp's own errors (unknown route, wrong method) have the documented shape too."""
    async with aiohttp.ClientSession() as session:
        for method, path, status in (("GET", "/api/v1/nope", 404), ("PUT", "/api/v1/stats", 405)):
            async with session.request(method, worker.url + path) as resp:
                assert resp.status == status
                assert not validate(await resp.json(), {"$ref": "#/components/schemas/Error"}, DOC)


def test_module_prints_the_document() -> None:
    """``python -m streams.openapi`` prints the same document (for docs and client generators)."""
    done = subprocess.run([sys.executable, "-m", "streams.openapi"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == DOC
