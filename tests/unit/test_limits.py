"""Sliding window, single-flight and rate limiter (in-process asyncio)."""

from __future__ import annotations

import asyncio

import pytest

from streams.image_edit.limits import Flight, RateLimiter, SingleFlight, SlidingWindow

WAIT = 2.0  # generous timeout for "this must happen"; never used to synchronise


async def _settle() -> None:
    """Let every ready callback run (a few loop iterations, no wall-clock wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


# --- SlidingWindow --------------------------------------------------------------------
async def test_window_slides_one_slot_at_a_time() -> None:
    window = SlidingWindow(3)
    started = [asyncio.Event() for _ in range(9)]
    finish = [asyncio.Event() for _ in range(9)]

    async def worker(i: int) -> None:
        async with window:
            started[i].set()
            await finish[i].wait()

    tasks = [asyncio.create_task(worker(i)) for i in range(9)]
    await asyncio.wait_for(asyncio.gather(*(started[i].wait() for i in range(3))), WAIT)
    await _settle()
    assert window.in_flight == 3 and window.waiting == 6
    assert not any(e.is_set() for e in started[3:])

    # Finishing the *middle* one starts exactly one more: a sliding window, not batches.
    finish[1].set()
    await asyncio.wait_for(started[3].wait(), WAIT)
    await _settle()
    assert window.in_flight == 3
    assert not started[4].is_set()
    assert not finish[0].is_set() and not finish[2].is_set()

    for i in (0, 2, 3, 4, 5, 6, 7, 8):
        finish[i].set()
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert window.in_flight == 0 and window.max_seen == 3


async def test_window_of_3_over_9_varied_tasks_starts_next_when_one_finishes() -> None:
    """Nine calls of varied length on a fake clock: the test ends whichever running call
    is due first (by its duration) and checks what the window did at that moment."""
    window = SlidingWindow(3)
    durations = [0.06, 0.01, 0.04, 0.02, 0.05, 0.01, 0.03, 0.02, 0.01]
    now = 0.0
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    log: list[tuple[str, int]] = []
    finish = [asyncio.Event() for _ in range(9)]

    async def worker(i: int) -> None:
        async with window:
            starts[i] = now
            log.append(("start", i))
            await finish[i].wait()
            ends[i] = now
            log.append(("end", i))

    tasks = [asyncio.create_task(worker(i)) for i in range(9)]
    await _settle()
    assert log == [("start", 0), ("start", 1), ("start", 2)]
    while len(ends) < 9:
        running = [i for i in starts if i not in ends]
        due = min(running, key=lambda i: (starts[i] + durations[i], i))
        now = starts[due] + durations[due]
        seen = len(log)
        waiting = [i for i in range(9) if i not in starts]
        finish[due].set()
        await _settle()
        # The freed slot goes to the longest waiter at once: exactly one start, the
        # next in FIFO order, at the same (fake) instant.
        expected = [("end", due)] + ([("start", waiting[0])] if waiting else [])
        assert log[seen:] == expected, (now, log)
        assert window.in_flight == min(3, 9 - len(ends)), (now, window.in_flight)
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert window.max_seen == 3 and window.in_flight == 0
    start_times = sorted(starts.values())
    end_times = sorted(ends.values())
    # The k-th start after the first three happens exactly when the k-th call finishes.
    assert start_times[3:] == end_times[:6], (start_times, end_times)
    # Sliding, not batching: task 3 started before the slowest of the first batch ended.
    assert starts[3] < ends[0]


async def test_window_frees_slot_on_exception_and_cancellation() -> None:
    window = SlidingWindow(1)
    with pytest.raises(ZeroDivisionError):
        async with window:
            1 / 0
    assert window.in_flight == 0

    gate = asyncio.Event()

    async def hold() -> None:
        async with window:
            await gate.wait()

    holder = asyncio.create_task(hold())
    await _settle()
    waiter = asyncio.create_task(window.acquire())
    await _settle()
    assert window.waiting == 1
    waiter.cancel()  # a cancelled waiter must not keep a place or a slot
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert window.waiting == 0
    gate.set()
    await asyncio.wait_for(holder, WAIT)
    assert window.in_flight == 0
    async with window:
        assert window.in_flight == 1


async def test_window_guards() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0)
    with pytest.raises(RuntimeError):
        SlidingWindow(1).release()


# --- SingleFlight ---------------------------------------------------------------------
async def test_single_flight_runs_once_for_ten_callers() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()
    calls = 0

    async def work() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "result"

    tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(10)]
    await _settle()
    assert "k" in flights and len(flights) == 1
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
    assert calls == 1
    assert all(isinstance(r, Flight) and r.value == "result" for r in results)
    assert [r.leader for r in results].count(True) == 1
    assert results[0].leader  # the first caller led
    assert "k" not in flights and len(flights) == 0  # forgotten after completion

    again = await flights.run("k", work)
    assert calls == 2 and again.leader


async def test_single_flight_propagates_exception_to_all() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    calls = 0
    boom = RuntimeError("upstream failed")

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise boom

    tasks = [asyncio.create_task(flights.run("k", work)) for _ in range(10)]
    await _settle()
    gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT)
    assert calls == 1
    assert all(o is boom for o in outcomes)
    assert "k" not in flights


async def test_single_flight_keys_are_independent() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()

    async def work(name: str) -> str:
        await gate.wait()
        return name

    a = asyncio.create_task(flights.run("a", lambda: work("a")))
    b = asyncio.create_task(flights.run("b", lambda: work("b")))
    await _settle()
    assert len(flights) == 2
    gate.set()
    assert (await a, await b) == (Flight("a", True), Flight("b", True))


async def test_single_flight_cancel_one_follower_keeps_work_cancel_all_stops_it() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    gate = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "v"

    leader = asyncio.create_task(flights.run("k", work))
    follower = asyncio.create_task(flights.run("k", work))
    await _settle()
    leader.cancel()  # the leader goes away; the follower still gets the result
    with pytest.raises(asyncio.CancelledError):
        await leader
    gate.set()
    assert await asyncio.wait_for(follower, WAIT) == Flight("v", False)
    assert not cancelled.is_set()

    gate.clear()
    only = asyncio.create_task(flights.run("k2", work))
    await _settle()
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    await asyncio.wait_for(cancelled.wait(), WAIT)  # nobody left: the work is cancelled
    await _settle()
    assert "k2" not in flights


# --- RateLimiter ----------------------------------------------------------------------
class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _max_in_window(times: list[float], width: float) -> int:
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - width - 1e-9:
            j += 1
        best = max(best, i - j + 1)
    return best


async def test_rate_limiter_admits_at_most_rate_t_plus_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, burst=3, clock=clock, sleep=clock.sleep)
    admitted: list[float] = []

    async def caller() -> None:
        await limiter.acquire()
        admitted.append(clock())

    await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(40))), WAIT)
    admitted.sort()
    assert len(admitted) == 40
    for width in (0.0, 0.5, 1.0, 2.5, 5.0, 10.0):
        assert _max_in_window(admitted, width) <= 2.0 * width + 3 + 1e-9, width
    assert _max_in_window(admitted, 0.0) == 3  # the burst is really available
    # ...and the limiter is not slower than it must be: 37 after the burst at 2/s.
    assert admitted[-1] - admitted[0] == pytest.approx(37 / 2.0)


async def test_rate_limiter_refills_up_to_burst_only() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, burst=2, clock=clock, sleep=clock.sleep)
    for _ in range(2):
        await limiter.acquire()
    await clock.sleep(100.0)  # idle for long: still only `burst` banked
    start = clock()
    for _ in range(4):
        await limiter.acquire()
    assert clock() - start == pytest.approx(2.0)


async def test_slow_start_halves_then_recovers_additively() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, burst=4, recovery_per_s=0.2, cooldown=1.0, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    limiter.slow_start()
    assert limiter.rate == pytest.approx(1.0) and limiter.slow_starts == 1
    limiter.slow_start()  # a second refusal from the same burst: no further cut
    assert limiter.rate == pytest.approx(1.0) and limiter.slow_starts == 1

    # While recovering: no burst, and at most the (reduced, rising) rate.
    start = clock()
    times = []
    for _ in range(3):
        await limiter.acquire()
        times.append(clock() - start)
    assert times[0] > 0.5  # the bucket was emptied
    assert _max_in_window(times, 0.0) == 1

    await clock.sleep(1.0)
    assert 1.0 < limiter.rate < 2.0  # additive climb, not a jump
    await clock.sleep(10.0)
    assert limiter.rate == pytest.approx(2.0)

    clock.now += 2.0  # past the cooldown: another refusal cuts again
    limiter.slow_start()
    assert limiter.rate == pytest.approx(1.0) and limiter.slow_starts == 2


async def test_slow_start_has_a_floor() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, min_rate=0.5, cooldown=0.0, recovery_per_s=0.0, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        clock.now += 0.1
        limiter.slow_start()
    assert limiter.rate == pytest.approx(0.5)


async def test_rate_limiter_uses_loop_clock_by_default() -> None:
    limiter = RateLimiter(1000.0, burst=5)
    for _ in range(5):
        await asyncio.wait_for(limiter.acquire(), WAIT)
    assert limiter.rate == 1000.0
    with pytest.raises(ValueError):
        RateLimiter(0)
