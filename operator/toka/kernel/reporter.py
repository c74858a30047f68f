"""The kernel's progress reporter: `status.run` of its own Agent, written whole.

- Leading edge: the first change after a quiet second goes out at once;
  later changes coalesce to at most one write per second.
- Task transitions (started, completed, failed) go out at once.
- Every write is the latest full snapshot, sent by one writer in order, so
  an outage loses no transition: the next successful write carries them all.
- Failed writes retry with backoff (a 403 while the RoleBinding propagates,
  5xx, connection refused while the API server is down); the agent is never
  blocked — it only mutates the in-memory state.
- Strings are cut to their schema bounds first, so a 422 cannot stall the queue.
- A heartbeat write every N seconds lets the operator see a stalled kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from toka.api.base import MAX_MESSAGE, MAX_NAME, MAX_SUMMARY, MAX_TASKS
from toka.api.conditions import truncate
from toka.api.models import (
    Denials,
    Observation,
    RunStatus,
    SpawnRequest,
    TaskState,
    TaskStatus,
    Usage,
    WorkspaceStatus,
)
from toka.kube.client import AGENTS, ApiError, AsyncKube

log = logging.getLogger("toka.kernel.reporter")
JSON = dict[str, Any]
MAX_FOLLOW_UPS = 16
MAX_SPAWN_REQUESTS = 8


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Reporter:
    def __init__(
        self,
        kube: AsyncKube,
        namespace: str,
        agent: str,
        *,
        min_interval: float = 1.0,
        heartbeat_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.namespace = namespace
        self.agent = agent
        self.min_interval = min_interval
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.run = RunStatus(tasks=[], usage=Usage(), denials=Denials())
        self._changed = asyncio.Event()
        self._urgent = False
        self._last_write = -1e9
        self.writes = 0
        self.failures = 0
        self._version = 0
        self._written_version = 0
        self._closed = False

    # --- state changes (never block) --------------------------------------------

    def _touch(self, urgent: bool = False) -> None:
        self._version += 1
        self._urgent = self._urgent or urgent
        self._changed.set()

    def adopt(self, run: RunStatus | None, task_names: list[str]) -> None:
        """Start from what an earlier attempt reported; add the spec's tasks not seen yet."""
        if run is not None:
            self.run = run.model_copy(deep=True)
        self.run.tasks = self.run.tasks or []
        self.run.usage = self.run.usage or Usage()
        self.run.denials = self.run.denials or Denials()
        known = {t.name for t in self.run.tasks}
        for name in task_names:
            if name not in known:
                self.run.tasks.append(TaskStatus(name=name[:MAX_NAME], state=TaskState.PENDING))
        for t in self.run.tasks:
            if t.state == TaskState.RUNNING:
                # The attempt that ran it is gone; it runs again in this one.
                t.state = TaskState.PENDING
        self._recount()
        self._touch(urgent=True)

    def _task(self, name: str) -> TaskStatus:
        for t in self.run.tasks or []:
            if t.name == name:
                return t
        raise KeyError(name)

    def has_task(self, name: str) -> bool:
        return any(t.name == name for t in self.run.tasks or [])

    def _recount(self) -> None:
        tasks = self.run.tasks or []
        done = sum(1 for t in tasks if t.state == TaskState.SUCCEEDED)
        self.run.progress = f"{done}/{len(tasks)}"
        self.run.percent = int(100 * done / len(tasks)) if tasks else 0

    def task_started(self, name: str) -> None:
        t = self._task(name)
        t.state, t.started_at, t.finished_at, t.error = TaskState.RUNNING, utcnow(), None, None
        t.attempts += 1
        self.run.current_task = name[:MAX_NAME]
        self._recount()
        self._touch(urgent=True)

    def task_completed(self, name: str, summary: str) -> None:
        t = self._task(name)
        t.state, t.finished_at, t.summary = (
            TaskState.SUCCEEDED,
            utcnow(),
            truncate(summary, MAX_SUMMARY),
        )
        self.run.current_task = None
        self._recount()
        self._touch(urgent=True)

    def task_failed(self, name: str, error: str) -> None:
        t = self._task(name)
        t.state, t.finished_at, t.error = TaskState.FAILED, utcnow(), truncate(error, MAX_MESSAGE)
        self.run.current_task = None
        self._recount()
        self._touch(urgent=True)

    def follow_up(self, name: str, description: str) -> bool:
        """A task the agent scheduled for itself; bounded."""
        if self.has_task(name) or len(self.run.tasks or []) >= MAX_TASKS + MAX_FOLLOW_UPS:
            return False
        assert self.run.tasks is not None
        self.run.tasks.append(
            TaskStatus(
                name=name[:MAX_NAME],
                state=TaskState.PENDING,
                description=truncate(description, MAX_MESSAGE),
            )
        )
        self._recount()
        self._touch(urgent=True)
        return True

    def progress(self, percent: int | None = None, message: str | None = None) -> None:
        if percent is not None:
            self.run.percent = max(0, min(100, int(percent)))
        if message:
            self.observe(message)
        else:
            self._touch()

    def observe(self, message: str) -> None:
        self.run.last_observation = Observation(
            time=utcnow(), message=truncate(message, MAX_MESSAGE)
        )
        self._touch()

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        u = self.run.usage or Usage()
        self.run.usage = Usage(
            requests=u.requests + 1,
            input_tokens=u.input_tokens + input_tokens,
            output_tokens=u.output_tokens + output_tokens,
        )
        self._touch()

    def denial(self, reason: str) -> None:
        d = self.run.denials or Denials()
        self.run.denials = Denials(count=d.count + 1, last=truncate(reason, MAX_MESSAGE))
        self._touch()

    def workspace(self, status: WorkspaceStatus) -> None:
        """The git work tree's state and result: written at once (dependents wait on it)."""
        self.run.workspace = status.model_copy(
            update={"message": truncate(status.message, MAX_MESSAGE) if status.message else None}
        )
        self._touch(urgent=True)

    def spawn_request(self, request: SpawnRequest) -> bool:
        current = self.run.spawn_requests or []
        if len(current) >= MAX_SPAWN_REQUESTS or any(r.id == request.id for r in current):
            return False
        self.run.spawn_requests = [*current, request]
        self._touch(urgent=True)
        return True

    # --- the writer ---------------------------------------------------------------

    def snapshot(self) -> JSON:
        self.run.last_heartbeat_time = utcnow()
        return self.run.merge_patch()

    async def flush_loop(self) -> None:
        """The only writer of status.run; returns after `close()` once the latest state is out.

        Waits use `asyncio.timeout`, not `wait_for`: on 3.11, `wait_for` can
        swallow a cancellation that races with the event it waits on.
        """
        while True:
            if self._closed:
                if self.in_sync:
                    return
            else:
                with contextlib.suppress(TimeoutError):  # a timeout is the heartbeat
                    async with asyncio.timeout(self.heartbeat_seconds):
                        await self._changed.wait()
                wait = self.min_interval - (self.clock() - self._last_write)
                if wait > 0 and not self._urgent and not self._closed:
                    # Coalesce: wait out the second, unless a task transition arrives.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wait_urgent()
            self._urgent = False
            self._changed.clear()
            await self._write()

    async def _wait_urgent(self) -> None:
        while not self._urgent:
            self._changed.clear()
            await self._changed.wait()

    async def _write(self) -> None:
        backoff = 0.2
        while True:
            version = self._version
            body = {"status": {"run": self.snapshot()}}
            try:
                await self.kube.patch(AGENTS, self.agent, body, self.namespace, sub="status")
                self.writes += 1
                self._last_write = self.clock()
                self._written_version = version
                return
            except ApiError as err:
                self.failures += 1
                if err.not_found:
                    log.warning("Agent %s is gone; not reporting", self.agent)
                    return
                log.warning("status write failed (%s), retrying in %.1fs", err.status, backoff)
            except (httpx.TransportError, OSError) as err:
                self.failures += 1
                log.warning(
                    "status write failed (%s), retrying in %.1fs", type(err).__name__, backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    @property
    def in_sync(self) -> bool:
        return self._written_version == self._version

    async def close(self, writer: asyncio.Task[None], timeout: float = 10.0) -> bool:
        """At exit: write the latest state (bounded), then stop the writer. Whether it got out."""
        self._closed = True
        self._urgent = True
        self._changed.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(writer)
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return self.in_sync
