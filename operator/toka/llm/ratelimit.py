"""Token-bucket rate limiting that waits (bounded) and a token budget that stops calls.

The bucket is kept as a GCRA "theoretical arrival time": each caller
reserves the next slot before it sleeps, so concurrent callers are served in
order and the bucket can never grant more than `burst + rate·t/60` calls in
any interval of t seconds. `set_rate` takes effect for the next reservation:
the operator rebalances each agent's share while it runs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from toka.llm.errors import BudgetExceeded, RateLimited
from toka.llm.types import Usage


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TokenBucket:
    def __init__(self, per_minute: float, *, burst: int = 1, clock: Clock | None = None):
        if per_minute <= 0:
            raise ValueError("rate must be positive")
        self._interval = 60.0 / per_minute
        self._burst = max(1, burst)
        self._clock = clock or MonotonicClock()
        self._tat = self._clock.now()

    @property
    def per_minute(self) -> float:
        return 60.0 / self._interval

    def set_rate(self, per_minute: float) -> None:
        if per_minute <= 0:
            raise ValueError("rate must be positive")
        self._interval = 60.0 / per_minute

    def reserve(self, max_wait: float | None = None) -> float:
        """Take the next slot; the seconds to wait before using it. Raises if over `max_wait`."""
        now = self._clock.now()
        tat = max(self._tat, now)
        allowed_at = tat - (self._burst - 1) * self._interval
        wait = max(0.0, allowed_at - now)
        if max_wait is not None and wait > max_wait:
            raise RateLimited(wait)
        self._tat = tat + self._interval
        return wait

    async def acquire(self, max_wait: float | None = None) -> float:
        """Wait for a slot (at most `max_wait` seconds, else RateLimited); the time waited."""
        wait = self.reserve(max_wait)
        if wait > 0:
            await self._clock.sleep(wait)
        return wait


class TokenBudget:
    """Tokens this caller may use in total; `limit=None` is unlimited."""

    def __init__(self, limit: int | None = None, used: int = 0):
        self.limit = limit
        self.used = used

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit

    def ensure_available(self) -> None:
        if self.limit is not None and self.used >= self.limit:
            raise BudgetExceeded(self.limit, self.used)

    def record(self, usage: Usage) -> None:
        self.used += usage.total
