"""The work queue: wake-ups coalesce, one worker per key, failures back off."""

from __future__ import annotations

import asyncio

import pytest

from toka.controller.queue import WorkQueue


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def queue_added(self, name: str) -> None:
        self.calls.append(("added", name))

    def queue_depth(self, name: str, depth: int) -> None:
        self.calls.append(("depth", depth))

    def queue_waited(self, name: str, seconds: float) -> None:
        self.calls.append(("waited", name))

    def work_done(self, name: str, seconds: float) -> None:
        self.calls.append(("done", name))

    def retried(self, name: str) -> None:
        self.calls.append(("retried", name))


async def test_a_key_added_many_times_while_waiting_is_handed_out_once() -> None:
    queue: WorkQueue[str] = WorkQueue("t")
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]
    assert len(queue) == 0


async def test_a_key_added_while_being_processed_comes_back_once_its_worker_is_done() -> None:
    queue: WorkQueue[str] = WorkQueue("t")
    queue.add("a")
    key = await queue.get()
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0  # not handed to a second worker while the first has it
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_two_workers_never_hold_the_same_key() -> None:
    queue: WorkQueue[int] = WorkQueue("t")
    holding: set[int] = set()
    overlaps: list[int] = []
    handled: list[int] = []

    async def worker() -> None:
        while True:
            key = await queue.get()
            if key in holding:
                overlaps.append(key)
            holding.add(key)
            await asyncio.sleep(0.001)
            holding.discard(key)
            handled.append(key)
            queue.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for i in range(200):
        queue.add(i % 3)
        await asyncio.sleep(0)
    while len(queue) or any(k in queue for k in range(3)):  # noqa: ASYNC110  (polls the queue)
        await asyncio.sleep(0.01)
    for w in workers:
        w.cancel()
    assert overlaps == []
    assert set(handled) == {0, 1, 2}
    assert len(handled) < 200  # wake-ups coalesced


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(1, 0.05), (2, 0.1), (3, 0.2), (5, 0.8), (20, 30.0)],
)
async def test_a_failing_key_backs_off_exponentially_to_a_cap(failures: int, delay: float) -> None:
    queue: WorkQueue[str] = WorkQueue("t", base_delay=0.05, max_delay=30.0)
    delays = [queue.add_rate_limited("a") for _ in range(failures)]
    assert delays[-1] == pytest.approx(delay)
    assert queue.failures("a") == failures
    queue.forget("a")
    assert queue.add_rate_limited("a") == pytest.approx(0.05)
    queue.shutdown()


async def test_a_delayed_add_arrives_after_its_delay_and_the_earlier_of_two_wins() -> None:
    queue: WorkQueue[str] = WorkQueue("t")
    queue.add_after("a", 5.0)
    queue.add_after("a", 0.05)
    queue.add_after("a", 10.0)
    assert len(queue) == 0
    assert await asyncio.wait_for(queue.get(), 1.0) == "a"


async def test_a_discarded_key_loses_its_pending_wake_up() -> None:
    queue: WorkQueue[str] = WorkQueue("t")
    queue.add_after("gone", 0.05)
    queue.discard("gone")
    await asyncio.sleep(0.15)
    assert len(queue) == 0


async def test_the_queue_reports_adds_depth_waits_work_and_retries() -> None:
    metrics = Recorded()
    queue: WorkQueue[str] = WorkQueue("agent", metrics)
    queue.add("a")
    queue.add("a")
    key = await queue.get()
    queue.done(key)
    queue.add_rate_limited("a")
    assert metrics.calls[:5] == [
        ("added", "agent"),
        ("depth", 1),
        ("waited", "agent"),
        ("depth", 0),
        ("done", "agent"),
    ]
    assert ("retried", "agent") in metrics.calls
    queue.shutdown()
