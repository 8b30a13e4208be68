"""Batches and one answer across workers: two real workers of one app (4 partitions)
on the real broker, a real origin on 127.0.0.1 that counts what reaches it.

* ``POST /api/v1/dimensions/batch`` with items owned by both workers: answered at
  once in order, one fetch per new URL, each item later cached with its real size;
  the same batch as one event on ``dimension-requests`` answers with one event.
* After a ``refresh=true`` succeeds on one worker, the other stops answering the
  failure it remembered (its TTL is 300 s) as soon as the URL table's changelog
  says so.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from streams.publish import partition_for
from tests.conftest import Emulator
from tests.dimensions.origin import ConditionalServer, Resource
from tests.support import (
    TopicReader,
    Worker,
    dimension_metrics,
    get_json,
    jkey,
    produce,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
BATCH_MAX = 64
PLACEHOLDER = (1080, 1920)


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 9)).save(out, "PNG")
    return out.getvalue()


class Pair:
    def __init__(self, a: Worker, b: Worker) -> None:
        self.a, self.b = a, b
        self.updates: dict[str, set[int]] = {}

    def owner(self, key: str) -> Worker:
        """The worker holding ``key``'s partition of the dimensions table."""
        partition = partition_for(key, PARTITIONS)
        return self.a if partition in self.updates["a"] else self.b

    def key_owned_by(self, worker: Worker, tag: str) -> dict[str, str]:
        for i in range(1000):
            ident = {"session_id": f"s-{tag}-{i}", "resource": f"r-{tag}", "scene": "chat"}
            if self.owner(f"{ident['session_id']}|{ident['resource']}|chat") is worker:
                return ident
        raise AssertionError("no key found")


@pytest.fixture(scope="module")
def pair(kafka_bootstrap: str, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    app_id = f"imagestream-dimpair-{uuid.uuid4().hex[:8]}"
    env = {"IMAGESTREAM_DIMENSION_FAILURE_TTL": "300", "IMAGESTREAM_DIMENSION_BATCH_MAX": str(BATCH_MAX)}
    workers: list[Worker] = []
    try:
        for name in ("a", "b"):
            workers.append(start_worker(f"dims-pair-{name}", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                                        data_dir=tmp_path_factory.mktemp(f"dims-pair-{name}"), app_id=app_id,
                                        partitions=PARTITIONS, extra_env=env))
    except RuntimeError as exc:
        for w in workers:
            w.proc.stop()
        pytest.fail(str(exc), pytrace=False)
    yield Pair(*workers)
    for w in workers:
        w.proc.stop()


@pytest.fixture
async def split(pair: Pair) -> Pair:
    """Both workers hold partitions of the updates topic (the dimensions table's)."""
    topic = pair.a.topic("imagestream-dimension-updates")

    async def both() -> bool:
        docs = [await get_json(f"{w.url}/healthz") for w in (pair.a, pair.b)]
        if not all(status == 200 for status, _ in docs):
            return False
        held = [set(doc["source_partitions"].get(topic, [])) for _, doc in docs]
        if not all(held) or held[0] | held[1] != set(range(PARTITIONS)):
            return False
        pair.updates = {"a": held[0], "b": held[1]}
        return True

    await wait_for(both, timeout=90, interval=0.2, what="both workers to hold dimension partitions")
    return pair


async def post_batch(worker: Worker, body: dict[str, Any], *, status: int = 200) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{worker.url}/api/v1/dimensions/batch", json=body) as resp:
            doc = await resp.json()
            assert resp.status == status, doc
            return doc


async def get_dims(worker: Worker, **params: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/dimensions", params=params) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            return body


# ------------------------------------------------------------------------ batches
async def test_a_batch_spread_over_both_workers_is_answered_in_order_and_fetched_once(
    split: Pair, origin: ConditionalServer
) -> None:
    tag = uuid.uuid4().hex[:8]
    sizes = {f"{tag}-{i}.png": (20 + i, 40 + i) for i in range(40)}
    for name, (w, h) in sizes.items():
        origin.resources[name] = Resource(png(w, h))
    shared = f"{tag}-0.png"
    items: list[dict[str, Any]] = [{"resource": f"img-{i}", "url": origin.url(name)}
                                   for i, name in enumerate(sizes)]
    items.append({"resource": "again", "url": origin.url(shared)})  # the same URL twice: one fetch
    items.append({"resource": "inline", "data": base64.b64encode(png(7, 9)).decode()})
    items.append({"resource": "broken", "data": base64.b64encode(b"GIF89a\0\0\0\0").decode()})
    body = {"session_id": f"conv-{tag}", "scene": "chat", "items": items}
    owners = {split.owner(f"conv-{tag}|{item['resource']}|chat").url for item in items}
    assert owners == {split.a.url, split.b.url}, "the batch must span both workers"
    before = await dimension_metrics(split.a) or {}

    answered = (await post_batch(split.a, body))["items"]
    assert [a["resource"] for a in answered] == [item["resource"] for item in items]
    assert all(a["session_id"] == f"conv-{tag}" and a["scene"] == "chat" for a in answered)
    assert {a["source"] for a in answered[:41]} <= {"placeholder", "cache"}
    assert (answered[41]["source"], answered[41]["width"], answered[41]["height"]) == ("computed", 7, 9)
    assert answered[42]["error"]["code"] == "invalid_image" and answered[42]["source"] == "placeholder"
    after = await dimension_metrics(split.a) or {}
    forwarded = "imagestream_dimension_requests_forwarded_total"
    assert after.get(forwarded, 0) > before.get(forwarded, 0), "items owned by b were asked of b"

    async def all_cached() -> list[dict[str, Any]] | None:
        again = (await post_batch(split.b, {**body, "items": items[:41]}))["items"]
        return again if all(a["source"] == "cache" for a in again) else None

    cached = await wait_for(all_cached, timeout=60, interval=0.2, what="every item of the batch cached")
    for answer, name in zip(cached, [*sizes, shared]):
        assert (answer["width"], answer["height"]) == sizes[name], (answer, name)
    assert all(origin.count(name) == 1 for name in sizes), {n: origin.count(n) for n in sizes}


async def test_a_bad_batch_is_refused_naming_the_problem(split: Pair) -> None:
    base = {"session_id": "s-bad", "scene": 1}
    too_many = {**base, "items": [{"resource": str(i), "url": "https://example.com/a.png"}
                                  for i in range(BATCH_MAX + 1)]}
    assert (await post_batch(split.a, too_many, status=400))["error"]["code"] == "too_many_items"
    bad_url = {**base, "items": [{"resource": "r0", "url": "https://example.com/a.png"},
                                 {"resource": "r1", "url": "ftp://example.com/b.png"}]}
    error = (await post_batch(split.a, bad_url, status=400))["error"]
    assert error["code"] == "invalid_url" and error["message"].startswith("items[1]:")
    no_source = {**base, "items": [{"resource": "r0"}]}
    assert (await post_batch(split.a, no_source, status=400))["error"]["code"] == "missing_parameter"
    other_session = {**base, "items": [{"resource": "r0", "session_id": "other", "url": "https://e.com/a.png"}]}
    assert (await post_batch(split.a, other_session, status=400))["error"]["code"] == "invalid_parameter"
    assert (await post_batch(split.a, {**base, "items": []}, status=400))["error"]["code"] == "missing_parameter"
    assert (await post_batch(split.a, {"session_id": "s", "items": [{}]}, status=400))["error"]["code"] \
        == "missing_parameter"


async def test_a_batch_event_is_answered_with_one_event(
    split: Pair, origin: ConditionalServer, kafka_bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    names = [f"{tag}-k{i}.png" for i in range(6)]
    for i, name in enumerate(names):
        origin.resources[name] = Resource(png(60 + i, 30))
    event = {"session_id": f"kconv-{tag}", "scene": 2, "request_id": f"req-{tag}",
             "items": [{"resource": f"m{i}", "url": origin.url(name)} for i, name in enumerate(names)]}
    async with TopicReader(kafka_bootstrap, split.a.topic("dimension-results")) as results:
        await produce(kafka_bootstrap, split.a.topic("dimension-requests"), event, key=jkey(f"kconv-{tag}"))
        [answer] = await results.collect(lambda v: v.get("request_id") == f"req-{tag}", timeout=30)
    assert answer["session_id"] == f"kconv-{tag}" and answer["scene"] == "2"
    assert [item["resource"] for item in answer["items"]] == [f"m{i}" for i in range(6)]
    assert all(item["source"] in ("placeholder", "cache") for item in answer["items"])

    async def fetched() -> bool:
        return all(origin.count(name) == 1 for name in names)

    await wait_for(fetched, timeout=30, what="one fetch per URL of the batch event")


# ----------------------------------------------------------- one answer across workers
async def test_a_refresh_on_one_worker_clears_the_failure_the_other_remembers(
    split: Pair, origin: ConditionalServer
) -> None:
    name = f"{uuid.uuid4().hex[:10]}.png"
    origin.resources[name] = Resource(b"", status=404)
    url = origin.url(name)
    tag = uuid.uuid4().hex[:6]
    on_b, on_a = split.key_owned_by(split.b, f"b{tag}"), split.key_owned_by(split.a, f"a{tag}")

    await get_dims(split.b, **on_b, url=url)

    async def b_remembers() -> bool:
        other = split.key_owned_by(split.b, f"b2{uuid.uuid4().hex[:6]}")
        body = await get_dims(split.b, **other, url=url)  # a new key on b: answered from b's memory
        return (body.get("error") or {}).get("code") == "http_status"

    await wait_for(b_remembers, timeout=30, what="b to remember the 404")
    assert origin.count(name) == 1

    # The image appears; a refresh through a key that a owns fetches it (on the URL's
    # owner) and only a hears of it through the updates of its keys.
    origin.resources[name] = Resource(png(48, 36))
    await get_dims(split.a, **on_a, url=url, refresh="true")

    async def a_has_it() -> bool:
        body = await get_dims(split.a, **on_a, url=url)
        return body["source"] == "cache" and (body["width"], body["height"]) == (48, 36)

    await wait_for(a_has_it, timeout=30, what="the refreshed size on a")

    # b forgets the failure from the changelog, long before its 300 s TTL.
    fresh = split.key_owned_by(split.b, f"b3{tag}")

    async def b_answers_the_size() -> dict[str, Any] | None:
        body = await get_dims(split.b, **fresh, url=url)
        assert body.get("error") is None or body["error"]["code"] != "http_status" or body["source"] != "cache"
        return body if body["source"] == "cache" else None

    async def b_forgot() -> bool:
        body = await get_dims(split.b, **split.key_owned_by(split.b, f"b4{uuid.uuid4().hex[:6]}"), url=url)
        return body.get("error") is None

    await wait_for(b_forgot, timeout=15, what="b to stop answering the remembered 404")
    body = await wait_for(b_answers_the_size, timeout=30, what="b's key answered with the size")
    assert (body["width"], body["height"]) == (48, 36)
    assert origin.count(name) == 2, "b's keys were answered from the URL table, not the origin"
    applied = await dimension_metrics(split.b) or {}
    assert applied.get('imagestream_dimension_url_changes_applied_total{result="forgot"}', 0) >= 1


# ------------------------------------------------------------------ client and CLI
async def test_lookup_many_splits_long_lists_and_keeps_the_order(split: Pair, origin: ConditionalServer) -> None:
    from producers import ClientConfig, DimensionClient
    from producers.errors import ApiError, InvalidInput

    tag = uuid.uuid4().hex[:8]
    names = [f"{tag}-c{i}.png" for i in range(150)]  # over two calls of BATCH_MAX = 64
    for i, name in enumerate(names):
        origin.resources[name] = Resource(png(10 + i, 11))
    items: list[Any] = [(f"res-{i}", origin.url(name)) for i, name in enumerate(names)]
    items.append({"resource": "inline", "data": png(5, 6)})
    async with DimensionClient(config=ClientConfig(api_url=split.b.url)) as client:
        first = await client.lookup_many(f"cl-{tag}", "chat", items, batch_size=BATCH_MAX)
        assert [r.resource for r in first] == [f"res-{i}" for i in range(150)] + ["inline"]
        assert (first[-1].source, first[-1].width, first[-1].height) == ("computed", 5, 6)

        async def cached() -> list[Any] | None:
            again = await client.lookup_many(f"cl-{tag}", "chat", items[:150], batch_size=BATCH_MAX)
            return again if all(r.source == "cache" for r in again) else None

        done = await wait_for(cached, timeout=60, interval=0.3, what="the client's items cached")
        assert [(r.width, r.height) for r in done] == [(10 + i, 11) for i in range(150)]
        with pytest.raises(ApiError) as info:  # the worker's own cap, reported as its error
            await client.lookup_many(f"cl-{tag}", "chat", items, batch_size=BATCH_MAX + 1)
        assert info.value.code == "too_many_items"
        with pytest.raises(InvalidInput):
            await client.lookup_many(f"cl-{tag}", "chat", [{"url": origin.url(names[0])}])


async def test_cli_dims_batch_reads_a_file(split: Pair, origin: ConditionalServer, tmp_path: Path) -> None:
    import asyncio
    import json
    import os
    import sys

    tag = uuid.uuid4().hex[:8]
    origin.resources[f"{tag}.png"] = Resource(png(70, 80))
    path = tmp_path / "batch.json"
    path.write_text(json.dumps({"session_id": f"cli-{tag}", "scene": 3,
                                "items": [{"resource": "x", "url": origin.url(f"{tag}.png")},
                                          {"resource": "y", "data": base64.b64encode(png(3, 4)).decode()}]}))

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "producers.cli", "--api-url", split.a.url, "dims", *args,
            env={**os.environ}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await run("--batch", str(path), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [item["resource"] for item in doc["items"]] == ["x", "y"]
    assert (doc["items"][1]["width"], doc["items"][1]["height"]) == (3, 4)
    code, out, _ = await run("--batch", str(path))
    assert code == 0 and out.splitlines()[1].startswith("y\t3x4 png (source: computed)"), out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = await run("--batch", str(bad))
    assert code == 4 and "not JSON" in err
    code, _, err = await run("--batch", str(tmp_path / "missing.json"))
    assert code == 4
