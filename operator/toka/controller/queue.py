"""A work queue in the manner of client-go's: the one place reconciles are scheduled.

Watch events, deadlines and errors all become `add`s of a key. A key waits in
the queue at most once however often it is added (wake-ups coalesce), is
handed to one worker at a time (per-key serialisation: an `add` while it is
being processed marks it dirty, and it comes back when that worker is done),
and a failing key comes back after an exponential backoff that `forget`
resets. Delayed adds (`add_after`) are how a reconcile asks to be woken at a
deadline. The queue reports its depth, adds, waits and work times to the
controller-runtime metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)


class QueueMetrics(Protocol):
    def queue_added(self, name: str) -> None: ...
    def queue_depth(self, name: str, depth: int) -> None: ...
    def queue_waited(self, name: str, seconds: float) -> None: ...
    def work_done(self, name: str, seconds: float) -> None: ...
    def retried(self, name: str) -> None: ...


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        metrics: QueueMetrics | None = None,
        *,
        base_delay: float = 0.05,
        max_delay: float = 30.0,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._order: asyncio.Queue[K] = asyncio.Queue()
        self._queued: dict[K, float] = {}  # key -> when it was first added (monotonic)
        self._processing: dict[K, float] = {}  # key -> when its work started
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._shut = False

    def __len__(self) -> int:
        return self._order.qsize()

    def __contains__(self, key: object) -> bool:
        return key in self._queued or key in self._processing

    # --- adding -----------------------------------------------------------------

    def add(self, key: K) -> None:
        """Schedule `key` now; a no-op if it is already waiting."""
        if self._shut or key in self._queued:
            return
        if self.metrics:
            self.metrics.queue_added(self.name)
        if key in self._processing:
            self._dirty.add(key)
            return
        self._queued[key] = time.monotonic()
        self._order.put_nowait(key)
        self._report_depth()

    def add_after(self, key: K, delay: float) -> None:
        """Schedule `key` in `delay` seconds; an earlier pending time wins."""
        if delay <= 0:
            self.add(key)
            return
        due = time.monotonic() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, key)
        self._timers[key] = (due, handle)

    def add_rate_limited(self, key: K) -> float:
        """Schedule a failed `key` after its backoff (doubling per failure); the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if self.metrics:
            self.metrics.retried(self.name)
        delay: float = min(self.base_delay * 2.0**failures, self.max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded (or is gone): its next failure starts the backoff afresh."""
        self._failures.pop(key, None)

    def discard(self, key: K) -> None:
        """The object is gone: drop its pending timer and backoff (a queued entry is
        still handed out once, and its reconcile finds nothing to do)."""
        self.forget(key)
        pending = self._timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    # --- taking -----------------------------------------------------------------

    async def get(self) -> K:
        """The next key; its worker must call `done(key)` when finished."""
        key = await self._order.get()
        added = self._queued.pop(key)
        now = time.monotonic()
        self._processing[key] = now
        if self.metrics:
            self.metrics.queue_waited(self.name, now - added)
        self._report_depth()
        return key

    def done(self, key: K) -> None:
        started = self._processing.pop(key, None)
        if started is not None and self.metrics:
            self.metrics.work_done(self.name, time.monotonic() - started)
        if key in self._dirty:
            self._dirty.discard(key)
            self._queued[key] = time.monotonic()
            self._order.put_nowait(key)
            self._report_depth()

    def longest_running(self) -> float:
        """Seconds the longest-running piece of work has been running (0: none)."""
        if not self._processing:
            return 0.0
        return time.monotonic() - min(self._processing.values())

    def unfinished(self) -> float:
        """Seconds of work in progress, summed over the keys being processed."""
        now = time.monotonic()
        return sum(now - started for started in self._processing.values())

    def shutdown(self) -> None:
        """No more adds; pending timers are dropped (workers are cancelled by their owner)."""
        self._shut = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def _report_depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth(self.name, self._order.qsize())
