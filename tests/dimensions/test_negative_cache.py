"""The negative cache and revalidation end to end: real broker, a real worker (short
TTLs), a real origin on 127.0.0.1 that counts what reaches it.  Every wait polls a
condition with a deadline; expiry is waited for the same way (no sleeps)."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from tests.conftest import Emulator
from tests.dimensions.origin import ConditionalServer, Resource
from tests.support import TopicReader, Worker, dimension_metrics, jkey, produce, start_worker, wait_for

pytestmark = pytest.mark.integration

PLACEHOLDER = (1080, 1920)
#: The worker's TTLs: URL entries expire fast (revalidation), transient failures too.
URL_TTL = 2.0
TRANSIENT_TTL = 3.0
PERMANENT_TTL = 300.0


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, height % 256, 7)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory,
           session_id: str) -> Iterator[Worker]:
    data_dir: Path = tmp_path_factory.mktemp("negative-cache-worker")
    try:
        w = start_worker(
            "worker-negative-cache", kafka_bootstrap=kafka_bootstrap, emulator=emulator, data_dir=data_dir,
            app_id=f"imagestream-negcache-{session_id}",
            extra_env={
                "IMAGESTREAM_DIMENSION_URL_TTL": str(URL_TTL),
                "IMAGESTREAM_DIMENSION_TRANSIENT_FAILURE_TTL": str(TRANSIENT_TTL),
                "IMAGESTREAM_DIMENSION_FAILURE_TTL": str(PERMANENT_TTL),
            },
        )
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield w
    w.proc.stop()


def ids() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    return {"session_id": f"s-{tag}", "resource": f"r-{tag}", "scene": f"scene-{tag}"}


def name() -> str:
    return f"{uuid.uuid4().hex[:12]}.png"


async def get_dims(worker: Worker, **params: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/dimensions", params=params) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = await resp.json()
            assert resp.headers["X-Dimension-Source"] == body["source"]
            return body


async def metrics(worker: Worker) -> dict[str, float]:
    found = await dimension_metrics(worker)
    assert found is not None, "/metrics did not answer 200"
    return found


async def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    return await wait_for(check, timeout=timeout, interval=0.1, what=what)


def failed_with(code: str) -> Any:
    def match(body: dict[str, Any]) -> bool:
        return body["source"] == "placeholder" and (body.get("error") or {}).get("code") == code
    return match


# ------------------------------------------------------------------ negative cache
async def test_a_404_is_remembered_answered_at_once_and_refresh_bypasses_it(
    worker: Worker, origin: ConditionalServer
) -> None:
    path = name()
    origin.resources[path] = Resource(b"", status=404)
    url, key = origin.url(path), ids()
    before = await metrics(worker)

    first = await get_dims(worker, **key, url=url)
    assert first["source"] == "placeholder" and first["error"] is None  # not known yet: one fetch

    async def remembered() -> dict[str, Any] | None:
        body = await get_dims(worker, **key, url=url)
        return body if failed_with("http_status")(body) else None

    body = await until(remembered, "the 404 to be remembered")
    assert (body["width"], body["height"]) == PLACEHOLDER and "404" in body["error"]["message"]
    assert origin.count(path) == 1

    # A hot broken URL: the same key again and again, and 20 other sessions.
    for _ in range(30):
        assert failed_with("http_status")(await get_dims(worker, **key, url=url))
    for _ in range(20):
        assert failed_with("http_status")(await get_dims(worker, **ids(), url=url))
    assert origin.count(path) == 1, "the origin saw only the first fetch"
    after = await metrics(worker)
    hits = 'imagestream_dimension_negative_cache_hits_total{reason="http_status"}'
    assert after.get(hits, 0) - before.get(hits, 0) >= 50
    remembered_series = 'imagestream_dimension_failures_remembered_total{kind="permanent"}'
    assert after.get(remembered_series, 0) - before.get(remembered_series, 0) == 1
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{worker.url}/api/v1/stats") as resp:
            dims = (await resp.json())["dimensions"]
    assert dims["remembered_failures_by_reason"]["http_status"] >= 50

    # The image appears; refresh=true bypasses the remembered failure at once.
    origin.resources[path] = Resource(png(33, 44))
    forced = await get_dims(worker, **key, url=url, refresh="true")
    assert forced["source"] == "placeholder" and forced["error"] is None

    async def cached() -> dict[str, Any] | None:
        body = await get_dims(worker, **key, url=url)
        return body if body["source"] == "cache" else None

    body = await until(cached, "the size after the refresh")
    assert (body["width"], body["height"]) == (33, 44)
    assert origin.count(path) == 2
    # ... and the failure is forgotten for every session: a new one gets the size.
    other = ids()
    assert (await get_dims(worker, **other, url=url))["error"] is None


async def test_the_url_table_answers_jobs_for_a_broken_url_without_the_origin(
    worker: Worker, origin: ConditionalServer, kafka_bootstrap: str
) -> None:
    """The key owners' memory aside (a job straight on the fetch topic, as after a
    restart): the failure stored in url_dimensions answers it."""
    path = name()
    origin.resources[path] = Resource(b"not an image at all" * 10)
    url = origin.url(path)
    await get_dims(worker, **ids(), url=url)
    await until(lambda: origin.count(path) == 1, "the first fetch")
    key = ids()
    job = {"url": url, "requested_at": 1.0, "refresh": False, "waiters": [{**key, "requested_at": 1.0}]}
    async with TopicReader(kafka_bootstrap, worker.topic("dimension-results")) as results:
        # wait until the first fetch's failure is in the table (its update was applied)
        await until(lambda: _failed(worker, url), "the failure to be remembered")
        await produce(kafka_bootstrap, worker.topic("imagestream-dimension-fetches"), job, key=jkey(url))
        seen = await results.collect(lambda v: v.get("session_id") == key["session_id"], timeout=30)
    assert seen[0]["error"]["code"] == "unsupported_format" and seen[0]["source"] == "placeholder"
    assert origin.count(path) == 1
    assert failed_with("unsupported_format")(await get_dims(worker, **key, url=url))
    series = 'imagestream_dimension_url_negative_hits_total{reason="unsupported_format"}'
    assert (await metrics(worker)).get(series, 0) >= 1


async def _failed(worker: Worker, url: str) -> bool:
    return failed_with("unsupported_format")(await get_dims(worker, **ids(), url=url))


async def test_a_transient_failure_is_remembered_briefly_then_retried(
    worker: Worker, origin: ConditionalServer
) -> None:
    path = name()
    origin.resources[path] = Resource(b"", status=503)
    url, key = origin.url(path), ids()
    await get_dims(worker, **key, url=url)

    async def remembered() -> bool:
        return failed_with("http_status")(await get_dims(worker, **key, url=url))

    await until(remembered, "the 503 to be remembered")
    for _ in range(20):
        await get_dims(worker, **ids(), url=url)
    assert origin.count(path) == 1
    origin.resources[path] = Resource(png(12, 34))

    # After TRANSIENT_TTL (not the permanent 300 s) requests fetch again.
    async def recovered() -> dict[str, Any] | None:
        body = await get_dims(worker, **key, url=url)
        return body if body["source"] == "cache" else None

    body = await until(recovered, "a new fetch once the transient failure expired", timeout=TRANSIENT_TTL + 30)
    assert (body["width"], body["height"]) == (12, 34)
    assert origin.count(path) == 2
    series = 'imagestream_dimension_failures_remembered_total{kind="transient"}'
    assert (await metrics(worker)).get(series, 0) >= 1


# --------------------------------------------------------------------- revalidation
async def test_retry_after_keeps_a_transient_failure_as_long_as_the_origin_asked(
    worker: Worker, origin: ConditionalServer, kafka_bootstrap: str
) -> None:
    path = name()
    origin.resources[path] = Resource(b"", status=503, retry_after="60")  # TRANSIENT_TTL is 3 s
    url, key = origin.url(path), ids()
    async with TopicReader(kafka_bootstrap, worker.topic("imagestream-dimension-updates")) as updates:
        asked = time.time()
        await get_dims(worker, **key, url=url)
        [failed] = await updates.collect(lambda v: v.get("session_id") == key["session_id"] and v.get("error"),
                                         timeout=30)
    assert failed["error"]["code"] == "http_status"
    # remembered for the 60 s the origin asked, not for the 3 s transient TTL
    assert asked + 59 <= failed["retry_at"] <= time.time() + 61
    assert failed_with("http_status")(await until(
        lambda: _answered(worker, key, url), "the remembered 503"))
    assert origin.count(path) == 1


async def _answered(worker: Worker, key: dict[str, str], url: str) -> dict[str, Any] | None:
    body = await get_dims(worker, **key, url=url)
    return body if body.get("error") else None


async def test_an_expired_entry_is_revalidated_304_keeps_it_200_reprobes(
    worker: Worker, origin: ConditionalServer
) -> None:
    path = name()
    origin.resources[path] = Resource(png(640, 480), etag='"one"')
    url = origin.url(path)
    first_key = ids()
    await get_dims(worker, **first_key, url=url)

    async def size_for_new_session(width: int) -> dict[str, Any] | None:
        """A new session asks until it is answered (from the URL's entry) with ``width``."""
        key = ids()
        await get_dims(worker, **key, url=url)
        for _ in range(50):
            body = await get_dims(worker, **key, url=url)
            if body["source"] == "cache":
                return body if body["width"] == width else None
            if body["error"] is not None:
                raise AssertionError(body)
        return None

    await until(lambda: size_for_new_session(640), "the first size")
    assert origin.count(path) == 1 and "If-None-Match" not in origin.seen(path)[0].headers

    # New sessions are answered from the URL entry until it expires, then one
    # conditional GET renews it: a 304 with no body.
    async def revalidated() -> bool:
        await size_for_new_session(640)
        return origin.count(path) >= 2

    await until(revalidated, "a revalidation after the URL TTL", timeout=URL_TTL + 30)
    conditional = origin.seen(path)[1]
    assert conditional.headers.get("If-None-Match") == '"one"'
    assert conditional.status == 304 and conditional.sent == 0
    assert await size_for_new_session(640) is not None
    m = await metrics(worker)
    assert m.get('imagestream_dimension_revalidations_total{result="not_modified"}', 0) >= 1

    # The content changes: the next revalidation is a 200, re-probed header-only.
    origin.resources[path] = Resource(png(200, 100), etag='"two"')
    body = await until(lambda: size_for_new_session(200), "the new size after the next revalidation",
                       timeout=URL_TTL + 30)
    assert (body["width"], body["height"]) == (200, 100)
    changed = [s for s in origin.seen(path) if s.status == 200]
    assert len(changed) == 2 and changed[-1].headers.get("If-None-Match") == '"one"'
    # What the first session saw stays until it asks for a refresh.
    assert (await get_dims(worker, **first_key, url=url))["width"] == 640
    m = await metrics(worker)
    assert m.get('imagestream_dimension_revalidations_total{result="modified"}', 0) >= 1


# ------------------------------------------------------------------------- restart
@pytest.mark.slow
async def test_a_remembered_failure_survives_a_hard_kill(
    kafka_bootstrap: str, emulator: Emulator, origin: ConditionalServer, tmp_path: Path
) -> None:
    """The failure lives in url_dimensions (RocksDB + changelog): after ``kill -9``
    the workers' memory is empty, yet the origin is not asked again."""
    app_id = f"imagestream-negkill-{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path / "data"
    env = {"IMAGESTREAM_DIMENSION_FAILURE_TTL": str(PERMANENT_TTL)}
    own = start_worker("negcache-kill-worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                       data_dir=data_dir, app_id=app_id, extra_env=env)
    try:
        path = name()
        origin.resources[path] = Resource(b"", status=410)
        url, key = origin.url(path), ids()
        await get_dims(own, **key, url=url)

        async def remembered() -> bool:
            return failed_with("http_status")(await get_dims(own, **key, url=url))

        await until(remembered, "the 410 to be remembered")
        own.proc.kill()
        own = start_worker("negcache-kill-worker", kafka_bootstrap=kafka_bootstrap, emulator=emulator,
                           data_dir=data_dir, app_id=app_id, extra_env=env)
        other = ids()
        first = await get_dims(own, **other, url=url)  # this worker's memory is empty: one job
        assert first["source"] == "placeholder"

        async def answered_from_the_table() -> bool:
            return failed_with("http_status")(await get_dims(own, **other, url=url))

        await until(answered_from_the_table, "the failure from the recovered url table")
        assert origin.count(path) == 1
        series = 'imagestream_dimension_url_negative_hits_total{reason="http_status"}'
        assert (await metrics(own)).get(series, 0) >= 1
    finally:
        own.proc.stop()
