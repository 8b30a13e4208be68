"""Runs one image job against the upstream: the miss path of the edit agent.

    single-flight per cache key  (N identical jobs in flight → 1 upstream call)
      → per-partition sliding window (at most ``upstream_concurrency`` in flight)
        → optional requests/second limiter (the account's quota, per worker)
          → DashScope call through the SDK, retried with backoff + jitter
            → result image downloaded into the blob store (upstream URLs expire)

No Kafka here: the agent passes a job in and gets an :class:`ImageResult` and, for
a fresh result, the :class:`CacheEntry` to store.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from config import Settings
from config.catalogue import load_catalogue
from streams.blobs import BlobStore, sniff_mime
from streams.errors import (
    ImagestreamError,
    UpstreamAccountError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from streams.image_edit.blocks import BlockEvent, ModelBlocks
from streams.image_edit.limits import RateLimiter, SingleFlight, SlidingWindow
from streams.image_edit.models import CacheEntry, ErrorInfo, ImageJob, ImageResult, JobRef
from streams.image_edit.retry import RetryPolicy, decide
from streams.lru import LRU
from streams.stats import metrics
from streams.upstream import DashScopeEditor

__all__ = ["EditExecutor", "JobOutcome", "result_url_for"]

log = logging.getLogger(__name__)

#: Result images larger than this are refused (the upstream's are a few MB).
MAX_RESULT_BYTES = 64 * 1024 * 1024
RESULT_DOWNLOAD_ATTEMPTS = 3
#: Decoded cache entries kept per worker (a CacheEntry is ~1 KB in memory).
KNOWN_ENTRIES = 16384


def result_url_for(settings: Settings, blob: str) -> str:
    """Where clients download a result: our own blob API, not the expiring upstream URL."""
    return f"{settings.public_url}/api/v1/blobs/{blob}"


class ModelBlocked(UpstreamAccountError):
    """A job for a blocked model, failed without a request (see :mod:`blocks`)."""


@dataclass(frozen=True)
class JobOutcome:
    result: ImageResult
    #: Set when this call produced a new result that belongs in the cache.
    new_entry: CacheEntry | None = None


class EditExecutor:
    """Owns the upstream limits of one worker; one instance per worker."""

    def __init__(
        self,
        *,
        settings: Settings,
        blobs: BlobStore,
        editor: DashScopeEditor,
        http: aiohttp.ClientSession,
        rng: random.Random | None = None,
        blocks: ModelBlocks | None = None,
    ) -> None:
        self.settings = settings
        self.blobs = blobs
        self.editor = editor
        self.http = http
        self.rng = rng or random.Random()
        self.windows: dict[int, SlidingWindow] = defaultdict(lambda: SlidingWindow(settings.upstream_concurrency))
        self.flights: SingleFlight[str, CacheEntry] = SingleFlight()
        #: Cache entries this worker computed or read lately, decoded (decoding is most
        #: of a table lookup's cost).  It also bridges a flight's end and the agent's
        #: table write a few loop turns later: a duplicate job read in between must
        #: find the result here, not call again.  Cleared when partitions are revoked.
        self.entries: LRU[str, CacheEntry] = LRU(KNOWN_ENTRIES)
        self.limiter = (
            RateLimiter(settings.upstream_rps, burst=max(1, int(settings.upstream_rps)))
            if settings.upstream_rps
            else None
        )
        self.policy = RetryPolicy.from_settings(settings)
        catalogue = load_catalogue()
        self.currency = catalogue.region(settings.region).currency
        #: Price of one generated image per model in the configured region.
        self.prices = {name: spec.price_in(settings.region) for name, spec in catalogue.models.items()}
        #: Models this worker (or another, through the blocks topic) found the account
        #: cannot call; checked before every request.
        self.blocks = blocks if blocks is not None else ModelBlocks()
        #: Called with every block set or lifted here, to tell the other workers.
        self.on_block_change: Callable[[BlockEvent], None] | None = None

    # ------------------------------------------------------------------------------
    def hits(self, found: Sequence[tuple[JobRef, CacheEntry]], started: float) -> list[dict[str, Any]]:
        """Results of cache hits, as dicts of ``ImageResult``'s fields (no records: see
        :func:`~streams.image_edit.models.read_job_batch`)."""
        metrics.inc("cache_hits_total", len(found), kind="hit")
        metrics.inc("images_completed_total", len(found), from_cache="true")
        return [self._completed(job, entry, started, status="HIT") for job, entry in found]

    async def run(self, job: ImageJob, *, partition: int) -> JobOutcome:
        """Produce the result of a job that missed the cache; never raises for job errors."""
        started = time.monotonic()
        try:
            flight = await self.flights.run(job.cache_key, lambda: self._compute(job, partition))
        except ImagestreamError as exc:
            metrics.inc("images_failed_total", code=exc.code)
            return JobOutcome(self._failed(job, exc, started))
        if flight.leader:
            return JobOutcome(self._result(job, flight.value, started, status="MISS"), new_entry=flight.value)
        metrics.inc("upstream_calls_saved_total", reason="coalesced")
        return JobOutcome(self._result(job, flight.value, started, status="COALESCED"))

    # ------------------------------------------------------------------------------
    async def _compute(self, job: ImageJob, partition: int) -> CacheEntry:
        datas = [await self.blobs.get(blob) for blob in (job.blobs or [job.blob])]
        images = [(data, sniff_mime(data[:16])) for data in datas]
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await self._call(job, images, partition)
                break
            except ModelBlocked:
                metrics.inc("upstream_blocked_refusals_total")
                raise
            except UpstreamError as exc:
                decision = decide(exc, attempt, policy=self.policy, rng=self.rng)
                metrics.inc("upstream_errors_total", code=exc.code)
                if isinstance(exc, UpstreamRateLimited):
                    metrics.inc("upstream_429_total", burst=str(exc.burst).lower())
                    if exc.burst and self.limiter is not None:
                        self.limiter.slow_start()
                if not decision.retry:
                    raise
                metrics.inc("upstream_retries_total", code=exc.code)
                log.info("retrying %s after %s (attempt %d, %.2fs)", job.cache_key[:12], exc.code, attempt,
                         decision.delay)
                await asyncio.sleep(decision.delay)  # backoff outside the window: the slot is free meanwhile
        # Every output was paid for: keep all of them (upstream URLs expire in 24 h).
        urls = outcome.result_urls or (outcome.result_url,)
        datas = await asyncio.gather(*(self._download(url) for url in urls))
        blobs = list(await asyncio.gather(*(self.blobs.put(data) for data in datas)))
        entry = CacheEntry(
            result_blob=blobs[0],
            result_blobs=blobs,
            size=len(datas[0]),
            width=outcome.width or 0,
            height=outcome.height or 0,
            upstream_request_id=outcome.request_id,
            upstream_url=outcome.result_url,
            created_at=time.time(),
        )
        self.entries.put(job.cache_key, entry)
        return entry

    async def _call(self, job: ImageJob, images: list[tuple[bytes, str]], partition: int):  # type: ignore[no-untyped-def]
        model = job.model or self.settings.model
        async with self.windows[partition]:
            if self.limiter is not None:
                await self.limiter.acquire()
            # Checked at the last moment: a job that queued for a slot while the block
            # began must not pay a request for an answer already known.
            block = self.blocks.get(model)
            if block is not None and not self.blocks.claim_probe(model, time.time()):
                raise ModelBlocked(f"{block.message} (model {model} blocked since {block.since:.0f}; "
                                   "no request sent, a probe call retries every 30 s)", code=block.code)
            metrics.inc("upstream_calls_total")
            if block is not None:
                metrics.inc("upstream_probes_total")
            try:
                outcome = await self.editor.edit(images=images, prompt=job.prompt, params=job.params, model=model)
            except UpstreamAccountError as exc:
                self._block(model, exc)
                raise
            if block is not None and self.blocks.lift(model, time.time()):
                log.warning("upstream: model %s works again (probe succeeded); block lifted", model)
                self._tell(BlockEvent(model=model, blocked=False, at=time.time()))
            return outcome

    def _block(self, model: str, exc: UpstreamAccountError) -> None:
        now = time.time()
        if self.blocks.block(model, exc.code, exc.message, now):
            log.error("upstream: model %s blocked after %s; jobs for it fail at once until a probe succeeds",
                      model, exc.code)
        block = self.blocks.get(model)
        assert block is not None
        self._tell(BlockEvent(model=model, blocked=True, at=now, code=block.code, message=block.message,
                              since=block.since))

    def _tell(self, event: BlockEvent) -> None:
        if self.on_block_change is not None:
            try:
                self.on_block_change(event)
            except Exception:  # telling the others must never fail the job
                log.exception("could not publish the upstream block of %s", event.model)

    async def _download(self, url: str) -> bytes:
        last: Exception | None = None
        for attempt in range(1, RESULT_DOWNLOAD_ATTEMPTS + 1):
            try:
                async with self.http.get(url) as resp:
                    if resp.status != 200:
                        raise UpstreamUnavailable(f"result download answered HTTP {resp.status}",
                                                  code="result_download_failed", http_status=resp.status)
                    if (resp.content_length or 0) > MAX_RESULT_BYTES:
                        raise UpstreamUnavailable("result image too large", code="result_download_failed")
                    data = await resp.content.read(MAX_RESULT_BYTES + 1)
                    if len(data) > MAX_RESULT_BYTES:
                        raise UpstreamUnavailable("result image too large", code="result_download_failed")
                    return data
            except (aiohttp.ClientError, asyncio.TimeoutError, UpstreamUnavailable) as exc:
                last = exc
                await asyncio.sleep(min(2.0, 0.2 * 2**attempt) * self.rng.random())
        if isinstance(last, UpstreamUnavailable):
            raise last
        raise UpstreamUnavailable(f"result download failed: {type(last).__name__}", code="result_download_failed")

    # ------------------------------------------------------------------------------
    def _result(self, job: ImageJob, entry: CacheEntry, started: float, *, status: str) -> ImageResult:
        if status != "MISS":
            metrics.inc("cache_hits_total", kind=status.lower())
        else:
            metrics.inc("cache_misses_total")
        metrics.inc("images_completed_total", from_cache=str(status != "MISS").lower())
        return ImageResult(**self._completed(job, entry, started, status=status))

    def _completed(self, job: ImageJob | JobRef, entry: CacheEntry, started: float, *, status: str) -> dict[str, Any]:
        """The fields of a completed ``ImageResult``."""
        model = job.model or self.settings.model
        blobs = entry.blobs()
        price = round(self.prices.get(model, 0.0) * len(blobs), 6)
        paid = status == "MISS"  # only a fresh call generated (and billed) images
        metrics.inc("cost_spent_total" if paid else "cost_saved_total", price, model=model, currency=self.currency)
        return {
            "task_id": job.task_id,
            "index": job.index,
            "filename": job.filename,
            "status": "completed",
            "result_url": result_url_for(self.settings, entry.result_blob),
            "result_urls": [result_url_for(self.settings, blob) for blob in blobs],
            "inputs": list(job.inputs) or [job.index],
            "model": model,
            "cost": {"currency": self.currency, "spent": price if paid else 0.0, "saved": 0.0 if paid else price},
            "from_cache": status != "MISS",
            "error": None,
            "cache_key": job.cache_key,
            "duration_ms": round((time.monotonic() - started) * 1000, 2),
            "cache_status": status,
            "upstream_request_id": entry.upstream_request_id,
            "result_blob": entry.result_blob,
            "source_blob": job.blob,
        }

    def _failed(self, job: ImageJob, exc: ImagestreamError, started: float) -> ImageResult:
        return ImageResult(
            task_id=job.task_id,
            index=job.index,
            filename=job.filename,
            status="failed",
            from_cache=False,
            error=ErrorInfo(code=exc.code, message=exc.message),
            cache_key=job.cache_key,
            cache_status="MISS",
            duration_ms=round((time.monotonic() - started) * 1000, 2),
            upstream_request_id=getattr(exc, "request_id", None),
            source_blob=job.blob,
            model=job.model or self.settings.model,
            inputs=list(job.inputs) or [job.index],
        )

