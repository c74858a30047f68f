"""The token bucket under a controllable clock: accurate, shared fairly, waits (bounded)."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from toka.llm.errors import RateLimited
from toka.llm.ratelimit import TokenBucket


class FakeClock:
    """Time moves only when the test says so; sleepers wake in order."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._ids), fut))
        await fut

    async def run_until_idle(self, tasks: list[asyncio.Task[None]]) -> None:
        """Advance to each next wake-up until every task is done."""
        while not all(t.done() for t in tasks):
            for _ in range(5):
                await asyncio.sleep(0)
            if self._sleepers:
                due, _, fut = heapq.heappop(self._sleepers)
                self.t = max(self.t, due)
                fut.set_result(None)


async def test_sixty_per_minute_grants_one_call_a_second() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock)
    grants: list[float] = []

    async def caller() -> None:
        for _ in range(5):
            await bucket.acquire()
            grants.append(clock.now())

    task = asyncio.create_task(caller())
    await clock.run_until_idle([task])
    assert grants == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("rate", "burst", "callers", "calls"), [(60, 1, 8, 15), (60, 5, 4, 20), (13, 2, 3, 9)]
)
async def test_concurrent_callers_sharing_a_bucket_never_exceed_its_rate(
    rate: int, burst: int, callers: int, calls: int
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst=burst, clock=clock)
    grants: list[float] = []

    async def caller() -> None:
        for _ in range(calls):
            await bucket.acquire()
            grants.append(clock.now())

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await clock.run_until_idle(tasks)
    grants.sort()
    assert len(grants) == callers * calls
    # In any interval [grants[i], grants[j]]: at most burst + rate·Δt/60 grants.
    for i, j in itertools.combinations(range(len(grants)), 2):
        allowed = burst + rate * (grants[j] - grants[i]) / 60
        assert j - i + 1 <= allowed + 1e-9, (i, j, grants[i], grants[j])
    # And the limiter is not slower than its rate either.
    assert grants[-1] == pytest.approx((len(grants) - burst) * 60 / rate)


async def test_a_call_that_would_wait_too_long_is_refused_with_the_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(6, clock=clock)  # one per 10 s
    await bucket.acquire()
    with pytest.raises(RateLimited) as err:
        await bucket.acquire(max_wait=5)
    assert err.value.retry_after == pytest.approx(10)
    # The refused call reserved nothing: the next one still gets the 10 s slot.
    assert bucket.reserve(max_wait=15) == pytest.approx(10)


async def test_the_rate_can_be_changed_while_callers_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(60, clock=clock)
    assert bucket.reserve() == 0
    bucket.set_rate(6)
    assert bucket.reserve() == pytest.approx(1)  # the slot already earned at 60/min
    assert bucket.reserve() == pytest.approx(11)  # then one per 10 s
    assert bucket.per_minute == pytest.approx(6)


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
