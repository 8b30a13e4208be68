"""In-process asyncio concurrency tools for the upstream path (no I/O).

* :class:`SlidingWindow` — at most ``limit`` calls in flight (one per partition);
  a call that ends hands its slot to the longest waiter at once (not batches).
* :class:`SingleFlight` — concurrent calls for one key share one execution; each
  caller learns whether it led (MISS) or joined (COALESCED).
* :class:`RateLimiter` — token bucket on the event-loop clock, with AIMD slow start
  after a burst refusal ("Request rate increased too quickly").

All three are single-event-loop objects: create and use them on one loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Generic, NamedTuple, TypeVar

__all__ = ["Flight", "RateLimiter", "SingleFlight", "SlidingWindow"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SlidingWindow:
    """A FIFO counting semaphore that reports ``in_flight`` and ``max_seen``.

    Use ``async with window:`` around one upstream call.  The slot is freed when
    the block exits, by success, exception or cancellation, and passed straight
    to the next waiter.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._in_flight = 0
        self._max_seen = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        """Slots held right now."""
        return self._in_flight

    @property
    def max_seen(self) -> int:
        """Most slots ever held at once."""
        return self._max_seen

    @property
    def waiting(self) -> int:
        """Callers queued for a slot."""
        return sum(1 for fut in self._waiters if not fut.done())

    def _take(self) -> None:
        self._in_flight += 1
        self._max_seen = max(self._max_seen, self._in_flight)

    async def acquire(self) -> None:
        """Wait for a slot (FIFO) and take it."""
        if self._in_flight < self.limit and not self.waiting:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def release(self) -> None:
        """Free a slot: hand it to the next waiter, or return it to the pool."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without acquire()")
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # ownership passes on; in_flight unchanged
                return
        self._in_flight -= 1

    async def __aenter__(self) -> SlidingWindow:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Flight(NamedTuple, Generic[V]):
    """What :meth:`SingleFlight.run` gives back."""

    value: V
    #: True for the caller whose call ran the work (MISS); False for those who
    #: joined it (COALESCED).
    leader: bool


class _Call(Generic[V]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[V]) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[K, V]):
    """One execution per key among concurrent callers.

    The work runs in its own task, so a cancelled caller does not cancel it for the
    others; it is cancelled only when every caller waiting for it is.  The key is
    forgotten the moment the work ends: a later call runs it again (results are
    cached elsewhere, not here).
    """

    def __init__(self) -> None:
        self._calls: dict[K, _Call[V]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def _forget(self, key: K, call: _Call[V], task: asyncio.Task[V]) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: the callers re-raise it themselves

    def _start(self, key: K, factory: Callable[[], Awaitable[V]]) -> _Call[V]:
        async def work() -> V:
            return await factory()

        call: _Call[V] = _Call(asyncio.ensure_future(work()))
        self._calls[key] = call
        call.task.add_done_callback(lambda task: self._forget(key, call, task))
        return call

    async def run(self, key: K, factory: Callable[[], Awaitable[V]]) -> Flight[V]:
        """The result of ``factory()`` for ``key``, run once for all concurrent callers.

        Every caller gets the same value, or the same exception raised.
        """
        call = self._calls.get(key)
        leader = call is None
        if call is None:
            call = self._start(key, factory)
        call.waiters += 1
        try:
            value = await asyncio.shield(call.task)
        except asyncio.CancelledError:
            if not call.task.done() and call.waiters == 1:
                call.task.cancel()  # nobody is left to want the result
            raise
        finally:
            call.waiters -= 1
        return Flight(value, leader)


class RateLimiter:
    """Async token bucket with AIMD slow start.

    ``acquire()`` admits at most ``rate × t + burst`` calls in any window of ``t``
    seconds.  :meth:`slow_start` (call it on a burst refusal) halves the current rate
    (not below ``min_rate``), empties the bucket and allows no bursts; the rate then
    climbs back by ``recovery_per_s`` every second (additive increase) until it is
    back at the target, where bursts are allowed again.  Several refusals within
    ``cooldown`` seconds count as one (calls already in flight when the rate was
    cut get refused too).

    ``clock`` and ``sleep`` default to the running loop's ``time()`` and
    :func:`asyncio.sleep`; tests inject a fake pair.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int = 1,
        *,
        min_rate: float | None = None,
        recovery_per_s: float | None = None,
        cooldown: float = 1.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.target_rate = float(rate_per_s)
        self.burst = int(burst)
        self.min_rate = min_rate if min_rate is not None else self.target_rate / 16
        self.recovery_per_s = recovery_per_s if recovery_per_s is not None else self.target_rate / 10
        self.cooldown = cooldown
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._rate = self.target_rate
        self._tokens = float(self.burst)
        self._updated: float | None = None
        self._last_cut = float("-inf")
        self._lock = asyncio.Lock()
        #: Number of times the rate was actually cut.
        self.slow_starts = 0

    @property
    def rate(self) -> float:
        """The current admission rate (requests/second)."""
        self._refill(self._now())
        return self._rate

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    def _capacity(self) -> float:
        return float(self.burst) if self._rate >= self.target_rate else 1.0

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
            return
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        if self._rate < self.target_rate:
            self._rate = min(self.target_rate, self._rate + self.recovery_per_s * elapsed)
        self._tokens = min(self._capacity(), self._tokens + elapsed * self._rate)

    async def acquire(self) -> None:
        """Wait until a call may start (FIFO among waiters)."""
        async with self._lock:
            while True:
                self._refill(self._now())
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self._sleep((1.0 - self._tokens) / self._rate)

    def slow_start(self) -> None:
        """A burst refusal: halve the rate (once per cooldown) and drop banked tokens."""
        now = self._now()
        self._refill(now)
        self._tokens = min(self._tokens, 0.0)
        if now - self._last_cut < self.cooldown:
            return
        self._last_cut = now
        self._rate = max(self.min_rate, self._rate / 2)
        self.slow_starts += 1
