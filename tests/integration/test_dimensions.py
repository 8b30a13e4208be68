"""The dimension pipeline end to end: real broker, real worker, real image servers.

Image servers are aiohttp apps on 127.0.0.1 (port 0) started here; the worker
allow-lists 127.0.0.1 for its fetcher.  Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from tests.conftest import Emulator, Worker, start_worker
from tests.support import TopicReader, all_ready, dimension_metrics, jkey, produce, serve_app, wait_for

pytestmark = pytest.mark.integration

PLACEHOLDER = (1080, 1920)


# --- images -------------------------------------------------------------------------
def png(width: int, height: int, *, noise: bool = False) -> bytes:
    if noise:
        img = Image.frombytes("L", (width, height), os.urandom(width * height))
    else:
        img = Image.new("RGB", (width, height), (width % 256, height % 256, 90))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """Just a PNG signature and IHDR: the size without the pixels (any size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


# --- image server -------------------------------------------------------------------
@dataclass
class Served:
    body: bytes
    status: int = 200
    content_type: str = "image/png"
    gate: asyncio.Event | None = None


@dataclass
class ImageServer:
    """Serves registered paths, counts GETs per path, can hold a response."""

    base: str = ""
    items: dict[str, Served] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def add(self, body: bytes, *, status: int = 200, held: bool = False, content_type: str = "image/png",
            name: str | None = None) -> tuple[str, Served]:
        path = f"/img/{name or uuid.uuid4().hex}"
        served = Served(body=body, status=status, content_type=content_type,
                        gate=asyncio.Event() if held else None)
        self.items[path] = served
        return self.base + path, served

    def count(self, url: str) -> int:
        return self.hits[url.removeprefix(self.base)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        served = self.items.get(request.path)
        self.hits[request.path] += 1
        if served is None:
            return web.Response(status=404, text="no such image")
        if served.gate is not None:
            await served.gate.wait()
        if served.status != 200:
            return web.Response(status=served.status, text="nope")
        return web.Response(body=served.body, content_type=served.content_type)


@pytest.fixture(scope="module")
async def images() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    app = web.Application()
    app.router.add_get("/{tail:.*}", server.handle)
    async with serve_app(app) as port:
        server.base = f"http://127.0.0.1:{port}"
        yield server
        for served in server.items.values():  # never leave a handler waiting
            if served.gate is not None:
                served.gate.set()


# --- API helpers --------------------------------------------------------------------
def ids() -> dict[str, str]:
    """A fresh (session_id, resource, scene) so tests never see each other's entries."""
    tag = uuid.uuid4().hex[:10]
    return {"session_id": f"s-{tag}", "resource": f"r-{tag}", "scene": f"scene-{tag}"}


async def get_dims(worker: Worker, **params: Any) -> tuple[int, dict[str, Any]]:
    query = {k: str(v) for k, v in params.items() if v is not None}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/dimensions", params=query) as resp:
            return resp.status, await resp.json()


async def post_json(worker: Worker, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with session.post(f"{worker.url}{path}", data=data,
                                headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()


async def wait_cached(worker: Worker, timeout: float = 20, **params: Any) -> dict[str, Any]:
    async def cached() -> dict[str, Any] | None:
        status, body = await get_dims(worker, **params)
        return body if status == 200 and body["source"] == "cache" else None

    return await wait_for(cached, timeout=timeout, what=f"cached dimensions for {params}")


# --- the old system's list ----------------------------------------------------------
async def test_fetch_success_then_cache_hit_without_refetch(worker: Worker, images: ImageServer) -> None:
    body = png(1000, 700, noise=True)
    url, _ = images.add(body)
    key = ids()
    status, first = await get_dims(worker, **key, url=url)
    assert status == 200
    assert first["source"] == "placeholder" and (first["width"], first["height"]) == PLACEHOLDER
    cached = await wait_cached(worker, **key, url=url)
    assert (cached["width"], cached["height"], cached["format"]) == (1000, 700, "png")
    assert cached["url"] == url and cached["fetched_at"] > 0
    assert 0 < cached["bytes_read"] < len(body) // 10, (cached["bytes_read"], len(body))
    # read again (and as a lookup without url): the server is not asked again
    for _ in range(3):
        assert (await get_dims(worker, **key, url=url))[1]["source"] == "cache"
    status, lookup = await get_dims(worker, **key)
    assert status == 200 and lookup["width"] == 1000
    assert images.count(url) == 1


async def test_cache_miss_lookup_is_404(worker: Worker) -> None:
    status, body = await get_dims(worker, **ids())
    assert status == 404 and body["error"]["code"] == "dimension_not_found"


async def test_placeholder_is_answered_before_the_fetch_ends(worker: Worker, images: ImageServer) -> None:
    url, served = images.add(png(640, 360), held=True)
    key = ids()
    # The image server holds the fetch until the gate opens, so an answer now is an
    # answer before the fetch ends: order, not a stopwatch.
    status, first = await get_dims(worker, **key, url=url)
    assert status == 200 and first["source"] == "placeholder"
    assert served.gate is not None and not served.gate.is_set()
    await wait_for(lambda: images.count(url) >= 1, timeout=20, what="the fetch to reach the server")
    status, again = await get_dims(worker, **key, url=url)  # fetch still held: still the placeholder
    assert again["source"] == "placeholder"
    assert served.gate is not None
    served.gate.set()
    cached = await wait_cached(worker, **key, url=url)
    assert (cached["width"], cached["height"]) == (640, 360)
    assert images.count(url) == 1


async def test_http_404_is_remembered_and_refresh_fetches_again(
    worker: Worker, images: ImageServer, kafka_bootstrap: str
) -> None:
    url, served = images.add(b"", status=404)
    key = ids()
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        status, first = await get_dims(worker, **key, url=url)
        assert status == 200 and first["source"] == "placeholder"
        failed = await results.collect(lambda v: v.get("session_id") == key["session_id"] and v.get("error"),
                                       timeout=20)
    assert failed[0]["error"]["code"] == "http_status"
    assert (failed[0]["width"], failed[0]["height"]) == PLACEHOLDER
    assert images.count(url) == 1
    # A 404 is a permanent failure: remembered (IMAGESTREAM_DIMENSION_FAILURE_TTL), so the
    # next request is answered at once with the placeholder and the error, no new fetch.
    await wait_for(lambda: _remembered(worker, key, url), timeout=20, what="the remembered 404")
    assert images.count(url) == 1
    # the server recovers: refresh=true skips the remembered failure and the size arrives
    served.status, served.body = 200, png(30, 20)
    status, refreshed = await get_dims(worker, **key, url=url, refresh="true")
    assert status == 200
    await wait_for(lambda: _retry_until_cached(worker, key, url), timeout=30, what="the size after recovery")
    assert images.count(url) == 2
    metrics = await dimension_metrics(worker)
    assert metrics is not None, "/metrics did not answer 200"
    assert metrics.get('imagestream_dimension_fetch_failures_total{reason="http_status"}', 0) >= 1, metrics


async def _remembered(worker: Worker, key: dict[str, str], url: str) -> bool:
    status, body = await get_dims(worker, **key, url=url)
    return status == 200 and body["source"] == "placeholder" and (body.get("error") or {}).get("code") == "http_status"


async def _retry_until_cached(worker: Worker, key: dict[str, str], url: str) -> bool:
    status, body = await get_dims(worker, **key, url=url)
    return status == 200 and body["source"] == "cache" and body["width"] == 30


async def test_several_records_the_latest_fetch_wins(worker: Worker, kafka_bootstrap: str) -> None:
    key = ids()
    url = "http://127.0.0.1:9/never-fetched.png"
    topic = worker.topic("imagestream-dimension-updates")
    composite = f"{key['session_id']}|{key['resource']}|{key['scene']}"

    def update(fetched_at: float, width: int, **extra: Any) -> dict[str, Any]:
        return {**key, "url": url, "requested_at": 1.0, "source": "fetched", "fetched_at": fetched_at,
                "width": width, "height": 100, "raw_width": width, "raw_height": 100, "orientation": 1,
                "format": "png", "bytes_read": 33, **extra}

    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        # newest first, then two older fetches finishing late, then a failure as a marker
        for fetched_at, width in [(300.0, 300), (100.0, 100), (200.0, 200)]:
            await produce(kafka_bootstrap, topic, update(fetched_at, width), key=jkey(composite))
        await produce(kafka_bootstrap, topic, update(400.0, 0, error={"code": "timeout", "message": "marker"}),
                      key=jkey(composite))
        [marker] = await results.collect(lambda v: v.get("session_id") == key["session_id"] and v.get("error"),
                                         timeout=20)
        published = [v for v in results._decoded() if v.get("session_id") == key["session_id"]]  # noqa: SLF001
    assert marker["error"] == {"code": "timeout", "message": "marker"}, marker
    assert [v["width"] for v in published if not v.get("error")] == [300]  # stale ones publish nothing
    status, body = await get_dims(worker, **key)
    assert status == 200 and body["width"] == 300 and body["fetched_at"] == 300.0


async def test_one_fetch_per_url_under_100_concurrent_requests(worker: Worker, images: ImageServer) -> None:
    url, served = images.add(png(123, 45), held=True)
    sessions = [ids() for _ in range(50)]
    requests = [s for s in sessions for _ in range(2)]  # 100 requests: 50 keys, each asked twice
    answers = await asyncio.gather(*(get_dims(worker, **s, url=url) for s in requests))
    assert all(status == 200 and body["source"] == "placeholder" for status, body in answers)
    await wait_for(lambda: images.count(url) >= 1, timeout=20, what="the fetch")
    assert served.gate is not None
    served.gate.set()
    for s in sessions:
        cached = await wait_cached(worker, **s, url=url)
        assert (cached["width"], cached["height"]) == (123, 45)
    assert images.count(url) == 1


async def test_base64_is_computed_inline_and_recorded(worker: Worker) -> None:
    key = ids()
    data = base64.b64encode(jpeg(321, 123)).decode()
    status, body = await post_json(worker, "/api/v1/dimensions", {**key, "data": data})
    assert status == 200, body
    assert body["source"] == "computed" and (body["width"], body["height"], body["format"]) == (321, 123, "jpeg")
    cached = await wait_cached(worker, **key)  # a lookup: recorded for later GETs
    assert (cached["width"], cached["height"]) == (321, 123)
    # data URIs too
    status, body = await post_json(worker, "/api/v1/dimensions",
                                   {**ids(), "data": "data:image/jpeg;base64," + data})
    assert status == 200 and body["width"] == 321


async def test_dimension_request_event_gets_results_on_kafka(
    worker: Worker, images: ImageServer, kafka_bootstrap: str
) -> None:
    url, _ = images.add(jpeg(200, 100))
    key = ids()
    scene_int = int(uuid.uuid4().int % 1_000_000) + 1_000_000
    key["scene"] = str(scene_int)
    composite = f"{key['session_id']}|{key['resource']}|{key['scene']}"
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        event = {"session_id": key["session_id"], "resource": key["resource"], "scene": scene_int, "url": url}
        await produce(kafka_bootstrap, worker.topic("dimension-requests"), event, key=jkey(composite))
        got = await results.collect(lambda v: v.get("session_id") == key["session_id"], count=2, timeout=30)
    assert got[0]["source"] == "placeholder" and got[0]["scene"] == key["scene"]
    assert got[1]["source"] == "fetched" and (got[1]["width"], got[1]["height"]) == (200, 100)
    # a second event for the same key is answered from the cache
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        await produce(kafka_bootstrap, worker.topic("dimension-requests"), event, key=jkey(composite))
        again = await results.collect(lambda v: v.get("session_id") == key["session_id"], timeout=30)
    assert again[0]["source"] == "cache" and again[0]["width"] == 200
    # base64 on Kafka: computed at once
    data_event = {**ids(), "data": base64.b64encode(png(77, 66)).decode()}
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        await produce(kafka_bootstrap, worker.topic("dimension-requests"), data_event)
        computed = await results.collect(lambda v: v.get("session_id") == data_event["session_id"], timeout=30)
    assert computed[0]["source"] == "computed" and computed[0]["width"] == 77


async def test_bad_events_are_dead_lettered_and_the_partition_moves_on(
    worker: Worker, images: ImageServer, kafka_bootstrap: str
) -> None:
    url, _ = images.add(png(5, 6))
    key = ids()
    async with TopicReader(kafka_bootstrap, worker.topic("imagestream-dead-letters")) as dead, \
            TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        for garbage in (b"{not json", json.dumps({"session_id": "x"}).encode(), b"\xff\xfe"):
            await produce(kafka_bootstrap, worker.topic("dimension-requests"), garbage, key=b"\xfe\xfd")
        await produce(kafka_bootstrap, worker.topic("imagestream-dimension-fetches"), b"[]", key=jkey("x"))
        await produce(kafka_bootstrap, worker.topic("imagestream-dimension-updates"), b"{}", key=jkey("x"))
        await produce(kafka_bootstrap, worker.topic("dimension-requests"), {**key, "url": url})
        letters = await dead.collect(lambda v: v.get("source_topic", "").endswith(
            ("dimension-requests", "imagestream-dimension-fetches", "imagestream-dimension-updates")), count=5)
        await results.collect(lambda v: v.get("session_id") == key["session_id"] and v["source"] == "fetched")
    assert {letter["code"] for letter in letters} >= {"invalid_json", "missing_parameter", "invalid_fetch_job",
                                                        "invalid_update"}


async def test_prewarm_fills_the_url_table_ahead_of_use(worker: Worker, images: ImageServer) -> None:
    url, _ = images.add(png(111, 222))
    status, body = await post_json(worker, "/api/v1/dimensions/prewarm", {"urls": [url, url]})
    assert status == 202 and body["accepted"] == 2 and body["enqueued"] == 1
    await wait_for(lambda: images.count(url) >= 1, timeout=20, what="the prewarm fetch")
    for _ in range(2):  # two new sessions: placeholder first, then the real size, no refetch
        key = ids()
        status, first = await get_dims(worker, **key, url=url)
        assert first["source"] == "placeholder"
        cached = await wait_cached(worker, **key, url=url)
        assert (cached["width"], cached["height"]) == (111, 222)
    assert images.count(url) == 1


async def test_anomalous_sizes_are_flagged_and_not_cached(
    worker: Worker, images: ImageServer, kafka_bootstrap: str
) -> None:
    url, _ = images.add(png_header(20_000, 20_000))  # 400 megapixels
    key = ids()
    flagged_for_us = lambda v: v.get("session_id") == key["session_id"] and v.get("flagged")  # noqa: E731
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        status, first = await get_dims(worker, **key, url=url)
        assert first["source"] == "placeholder"
        flagged = await results.collect(flagged_for_us, timeout=20)
        assert flagged[0]["flagged"] == "anomalous_size" and flagged[0]["width"] == 20_000
        status, again = await get_dims(worker, **key, url=url)
        assert again["source"] == "placeholder"  # not cached per session...
        # ... but the URL's size is remembered (like a failure): answered flagged again
        # without asking the origin a second time.
        both = await results.collect(flagged_for_us, count=2, timeout=20)
        assert both[1]["flagged"] == "anomalous_size" and both[1]["height"] == 20_000
    assert images.count(url) == 1
    # inline: 1x100 is beyond 1:50
    key = ids()
    status, body = await post_json(worker, "/api/v1/dimensions",
                                   {**key, "data": base64.b64encode(png(1, 100)).decode()})
    assert status == 200 and body["flagged"] == "anomalous_size" and body["height"] == 100
    status, lookup = await get_dims(worker, **key)
    assert status == 404


async def test_refresh_forces_a_new_fetch(worker: Worker, images: ImageServer) -> None:
    url, served = images.add(png(10, 20))
    key = ids()
    await get_dims(worker, **key, url=url)
    await wait_cached(worker, **key, url=url)
    served.body = png(40, 30)  # the content behind the URL changes
    assert (await get_dims(worker, **key, url=url))[1]["width"] == 10  # what this session saw
    status, now = await get_dims(worker, **key, url=url, refresh="true")
    assert status == 200 and now["source"] == "cache" and now["width"] == 10

    async def refreshed() -> bool:
        return (await get_dims(worker, **key, url=url))[1]["width"] == 40

    await wait_for(refreshed, timeout=20, what="the refreshed size")
    assert images.count(url) == 2


async def test_smart_placeholder_is_the_scene_s_most_common_size(worker: Worker, images: ImageServer) -> None:
    scene = f"scene-{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        key = {**ids(), "scene": scene}
        url, _ = images.add(png(480, 640))
        await get_dims(worker, **key, url=url)
        await wait_cached(worker, **key, url=url)

    async def smart() -> dict[str, Any] | None:
        url, _ = images.add(png(10, 10), held=True)
        status, body = await get_dims(worker, **{**ids(), "scene": scene}, url=url)
        return body if (body["width"], body["height"]) == (480, 640) else None

    body = await wait_for(smart, timeout=10, interval=0.3, what="the smart placeholder")
    assert body["source"] == "placeholder"


async def test_unreachable_and_non_image_fail_cleanly(
    worker: Worker, images: ImageServer, kafka_bootstrap: str
) -> None:
    text_url, _ = images.add(b"<html>hello</html>" * 20, content_type="text/html")
    dead_url = "http://127.0.0.1:9/nothing.png"  # discard port: connection refused
    key1, key2 = ids(), ids()
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        await get_dims(worker, **key1, url=text_url)
        await get_dims(worker, **key2, url=dead_url)
        errors = await results.collect(
            lambda v: v.get("session_id") in (key1["session_id"], key2["session_id"]) and v.get("error"),
            count=2, timeout=30)
    codes = {e["session_id"]: e["error"]["code"] for e in errors}
    assert codes[key1["session_id"]] == "unsupported_format"
    assert codes[key2["session_id"]] == "connection"


async def test_bad_parameters_are_400_with_a_code(worker: Worker) -> None:
    key = ids()
    cases = [
        ({"resource": "r", "scene": "1", "url": "http://127.0.0.1/a"}, "missing_parameter"),
        ({**key, "url": "ftp://example.com/a.png"}, "invalid_url"),
        ({**key, "url": "not a url"}, "invalid_url"),
        ({**key, "url": "http://127.0.0.1/a", "refresh": "perhaps"}, "invalid_parameter"),
    ]
    for params, code in cases:
        status, body = await get_dims(worker, **params)
        assert status == 400 and body["error"]["code"] == code, (params, body)
    for payload, code in [
        (b"{nope", "invalid_json"),
        ({**key, "data": "@@@"}, "invalid_base64"),
        ({**key, "data": base64.b64encode(b"hello, not an image").decode()}, "unsupported_format"),
        ({**key}, "missing_parameter"),
        ({**key, "scene": 1.5, "data": "AAAA"}, "invalid_parameter"),
    ]:
        status, body = await post_json(worker, "/api/v1/dimensions", payload)
        assert status == 400 and body["error"]["code"] == code, (payload, body)
    for payload, code in [({"urls": "x"}, "invalid_request"), ({"urls": []}, "missing_parameter"),
                          ({"urls": ["gopher://x"]}, "invalid_url"),
                          ({"urls": ["http://127.0.0.1/x"] * 1001}, "too_many_urls")]:
        status, body = await post_json(worker, "/api/v1/dimensions/prewarm", payload)
        assert status == 400 and body["error"]["code"] == code, (payload, body)


async def test_scene_may_be_an_int_and_keys_with_pipes_do_not_collide(worker: Worker) -> None:
    tag = uuid.uuid4().hex[:8]
    a = {"session_id": f"a|{tag}", "resource": "b", "scene": "1"}
    b = {"session_id": "a", "resource": f"{tag}|b", "scene": "1"}
    for key, size in ((a, (11, 12)), (b, (21, 22))):
        status, body = await post_json(worker, "/api/v1/dimensions",
                                       {**key, "scene": 1, "data": base64.b64encode(png(*size)).decode()})
        assert status == 200 and body["scene"] == "1"
    assert (await wait_cached(worker, **a))["width"] == 11
    assert (await wait_cached(worker, **b))["width"] == 21


# --- restart ------------------------------------------------------------------------
@pytest.mark.slow
async def test_entries_survive_a_hard_kill(
    kafka_bootstrap: str, emulator: Emulator, images: ImageServer, tmp_path: Path
) -> None:
    app_id = f"imagestream-dimkill-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    own = start_worker("dim-kill-worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                       data_dir=data_dir, app_id=app_id)
    try:
        url, _ = images.add(png(901, 902))
        key = ids()
        await get_dims(own, **key, url=url)
        await wait_cached(own, **key, url=url)
        for round_ in range(2):  # repeated hard kills
            own.proc.kill()
            own = start_worker("dim-kill-worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                               data_dir=data_dir, app_id=app_id)
            status, body = await get_dims(own, **key)
            assert status == 200 and body["width"] == 901, (round_, body)
            # the URL table survived too: another session gets it without a refetch
            other = ids()
            await get_dims(own, **other, url=url)
            assert (await wait_cached(own, **other, url=url))["width"] == 901
        assert images.count(url) == 1
    finally:
        own.proc.stop()


@pytest.mark.slow
async def test_two_workers_route_each_key_to_its_owner(
    kafka_bootstrap: str, emulator: Emulator, images: ImageServer, tmp_path: Path
) -> None:
    """Keys spread over 4 partitions and two workers: either worker answers any key
    (forwarding to the owner), and each URL is still fetched once."""
    app_id = f"imagestream-dim2-{uuid.uuid4().hex[:8]}"
    workers = [
        start_worker(f"dim-worker-{i}", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                     data_dir=tmp_path / f"data{i}", app_id=app_id, partitions=4)
        for i in range(2)
    ]
    try:
        a, b = workers
        await wait_for(lambda: all_ready(workers), timeout=60, what="both workers ready after the rebalance")
        url, _ = images.add(png(333, 444))
        keys = [ids() for _ in range(12)]
        for i, key in enumerate(keys):
            status, body = await get_dims(workers[i % 2], **key, url=url)
            assert status == 200 and body["source"] == "placeholder", body
        for key in keys:  # asked on the other worker than before
            for w in (a, b):
                assert (await wait_cached(w, **key, url=url, timeout=30))["width"] == 333
        assert images.count(url) == 1
        # a request event on the "wrong" partition (a producer with another
        # partitioner) is forwarded to the key's partition and answered
        key = ids()
        composite = f"{key['session_id']}|{key['resource']}|{key['scene']}"
        async with TopicReader(kafka_bootstrap, a.topic("dimension-results")) as results:
            for partition in range(4):
                producer_key = jkey(composite)
                await produce(kafka_bootstrap, a.topic("dimension-requests"), {**key, "url": url},
                              key=producer_key, partition=partition)
            await results.collect(lambda v: v.get("session_id") == key["session_id"], count=4, timeout=30)
            got = [v for v in await results.drain() if v.get("session_id") == key["session_id"]]
        # Every event answered, by the owner: the placeholder while the key's entry is
        # still being made from the URL's, the real size once it is there (which of the
        # two depends on how fast the four arrive); never an error.  At least once: a
        # forwarded event can be answered again when its partition's offset was not yet
        # committed at a rebalance (seen once in CI: 5 answers for 4 events).
        answers = [(g["source"], g["width"], g["height"]) for g in got]
        assert len(answers) >= 4, got
        assert set(answers) <= {("placeholder", *PLACEHOLDER), ("cache", 333, 444)}, got
        assert all(g.get("error") is None for g in got), got
        assert (await wait_cached(b, **key, url=url))["width"] == 333
    finally:
        for w in workers:
            w.proc.stop()
