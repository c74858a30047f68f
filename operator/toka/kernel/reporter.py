"""The kernel's progress reporter: `status.run` of its own Agent, written whole.

The agent decides what is reported and how often, and the Agent's status is
read by the operator (each write is a reconcile), by people and by anyone
allowed to `get` Agents. So:

- Every write is rate-limited, whatever changed: the first change after a
  quiet interval goes out at once (leading edge), later ones coalesce into at
  most one write per `min_interval`. Task transitions coalesce too — a burst
  of TaskStarted is a handful of writes, not one each — and none is lost:
  each write is the latest full snapshot (states, attempts, start and end
  times). The last task's completion goes out within one interval; at exit
  (`close`) the last state goes out at once.
- Failed writes retry with backoff (a 403 while the RoleBinding propagates,
  5xx, connection refused while the API server is down); the agent is never
  blocked — it only mutates the in-memory state.
- Every text is redacted (the configured key and token values, known key
  formats) with the redactor the audit lines use, then capped in UTF-8
  bytes, not characters; a cut ends in "…[truncated N bytes]", and
  `truncatedBytes` sums the cuts. The whole `status.run` stays under
  `max_bytes`: when it would not, finished tasks' texts are cut shorter,
  oldest first. Spawn requests are the operator's input, so they are never
  cut to fit; one that would exceed their share is refused instead.
- A heartbeat write every N seconds lets the operator see a stalled kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from toka.api.base import MAX_DESCRIPTION, MAX_MESSAGE, MAX_NAME, MAX_SUMMARY, MAX_TASKS
from toka.api.models import (
    Denials,
    McpServerStatus,
    Observation,
    RunStatus,
    SandboxStatus,
    SpawnRequest,
    TaskState,
    TaskStatus,
    Usage,
    WorkspaceStatus,
)
from toka.contract import MAX_FOLLOW_UPS, MAX_RUN_BYTES, MAX_SPAWN_REQUESTS
from toka.kube.client import AGENTS, ApiError, AsyncKube
from toka.llm.sanitize import Redactor

log = logging.getLogger("toka.kernel.reporter")
JSON = dict[str, Any]
Key = tuple[str, ...]  # where a text lives in status.run, e.g. ("task", name, "summary")
# Spawn requests are never cut to fit, so they get a share; the rest always fits:
# 116 tasks with every text cut to its marker, plus the other fields, is under 20 KiB.
MAX_SPAWN_BYTES = 128 * 1024
SQUEEZED_BYTES = 128
# A text is redacted on its first cap + this many characters, so a key that
# straddles the cut is still redacted whole while the redactor's patterns
# never scan an unbounded text.
REDACT_LOOKAHEAD = 2048
_MARKED = re.compile(r"…\[truncated (\d+) bytes\]\Z")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def marker(cut: int) -> str:
    return f"…[truncated {cut} bytes]"


def json_bytes(value: object) -> int:
    """Size of `value` as JSON in UTF-8, as the API server stores it."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def cap_bytes(body: str, limit: int, cut: int = 0) -> tuple[str, int]:
    """`body` in at most `limit` UTF-8 bytes, and the bytes cut from it in all.

    A cut keeps whole characters and ends in a marker that counts the bytes
    cut, `cut` of them before `body` got here. A limit below the marker's size
    leaves the marker alone."""
    data = body.encode()
    if not cut and len(data) <= limit:
        return body, 0
    room = max(0, limit - len(marker(cut + len(data)).encode()))
    kept = body if len(data) <= room else data[:room].decode(errors="ignore")
    cut += len(data) - len(kept.encode())
    return kept + marker(cut), cut


class Reporter:
    def __init__(
        self,
        kube: AsyncKube,
        namespace: str,
        agent: str,
        *,
        min_interval: float = 1.0,
        heartbeat_seconds: float = 10.0,
        max_bytes: int = MAX_RUN_BYTES,
        redact: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube = kube
        self.namespace = namespace
        self.agent = agent
        self.min_interval = min_interval
        self.heartbeat_seconds = heartbeat_seconds
        self.max_bytes = max_bytes
        self.redact = redact or Redactor()
        self.clock = clock
        self.run = RunStatus(tasks=[], usage=Usage(), denials=Denials())
        self._cuts: dict[Key, int] = {}
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._wrote = asyncio.Event()
        self._last_write = -1e9
        self.writes = 0
        self.failures = 0
        self._version = 0
        self._written_version = 0
        self._closed = False
        self._gone = False

    # --- state changes (never block) --------------------------------------------

    def _touch(self) -> None:
        self._version += 1
        self._changed.set()

    def _clean(self, text: str, limit: int) -> tuple[str, int]:
        """`text` as status may show it: redacted, then capped to `limit` bytes; and the cut."""
        head, tail = text[: limit + REDACT_LOOKAHEAD], text[limit + REDACT_LOOKAHEAD :]
        return cap_bytes(self.redact(_valid(head)), limit, len(_valid(tail).encode()))

    def _text(self, key: Key, text: str, limit: int) -> str:
        out, cut = self._clean(text, limit)
        self._cut(key, cut)
        return out

    def _cut(self, key: Key, cut: int) -> None:
        if cut:
            self._cuts[key] = cut
        else:
            self._cuts.pop(key, None)

    def adopt(
        self, run: RunStatus | None, task_names: list[str], *, restarted: bool = False
    ) -> None:
        """Start from what an earlier attempt reported; add the spec's tasks not seen yet.
        `restarted`: this kernel restarted within the same pod, whose agent still runs its
        task, so a running task stays running."""
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
            if t.state == TaskState.RUNNING and not restarted:
                # The attempt that ran it is gone; it runs again in this one.
                t.state = TaskState.PENDING
        # The earlier attempt's cuts, read back from their markers.
        for key, obj, name in _places(self.run.merge_patch(), spawn=True):
            if found := _MARKED.search(obj.get(name) or ""):
                self._cuts[key] = int(found[1])
        self._recount()
        self._touch()

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
        self._cut(("task", name, "error"), 0)
        t.attempts += 1
        self.run.current_task = name[:MAX_NAME]
        self._recount()
        self._touch()

    def task_completed(self, name: str, summary: str) -> None:
        t = self._task(name)
        t.state, t.finished_at = TaskState.SUCCEEDED, utcnow()
        t.summary = self._text(("task", name, "summary"), summary, MAX_SUMMARY)
        self.run.current_task = None
        self._recount()
        self._touch()

    def task_failed(self, name: str, error: str) -> None:
        t = self._task(name)
        t.state, t.finished_at = TaskState.FAILED, utcnow()
        t.error = self._text(("task", name, "error"), error, MAX_MESSAGE)
        self.run.current_task = None
        self._recount()
        self._touch()

    def follow_up(self, name: str, description: str) -> bool:
        """A task the agent scheduled for itself; bounded. A name the redactor would
        change (key-shaped) is refused: it cannot be shown, nor rewritten."""
        if (
            self.has_task(name)
            or len(self.run.tasks or []) >= MAX_TASKS + MAX_FOLLOW_UPS
            or self.redact(name) != name
        ):
            return False
        assert self.run.tasks is not None
        self.run.tasks.append(
            TaskStatus(
                name=name[:MAX_NAME],
                state=TaskState.PENDING,
                description=self._text(("task", name, "description"), description, MAX_MESSAGE),
            )
        )
        self._recount()
        self._touch()
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
            time=utcnow(), message=self._text(("lastObservation", "message"), message, MAX_MESSAGE)
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

    def sandbox(self, level: dict[str, Any]) -> None:
        self.run.sandbox = SandboxStatus.model_validate(level)
        self._touch()

    def denial(self, reason: str) -> None:
        d = self.run.denials or Denials()
        last = self._text(("denials", "last"), reason, MAX_MESSAGE)
        self.run.denials = Denials(count=d.count + 1, last=last)
        self._touch()

    def mcp_servers(self, servers: list[McpServerStatus]) -> None:
        """Each MCP server's state; written only when it changed, so a kernel that lists
        its servers again does not write status for nothing."""
        clean = [
            s.model_copy(
                update={"message": self._clean(s.message, MAX_MESSAGE)[0] if s.message else None}
            )
            for s in servers
        ]
        if clean != (self.run.mcp_servers or []):
            self.run.mcp_servers = clean or None
            self._touch()

    def workspace(self, status: WorkspaceStatus) -> None:
        """The git work tree's state and result (dependents wait on it)."""
        key = ("workspace", "message")
        message = self._text(key, status.message, MAX_MESSAGE) if status.message else None
        if message is None:
            self._cut(key, 0)
        self.run.workspace = status.model_copy(update={"message": message})
        self._touch()

    def spawn_request(self, request: SpawnRequest) -> bool:
        """Accepted unless there are too many, or too many bytes of them, or a name
        or capability the redactor would change: the operator acts on them as written."""
        current = self.run.spawn_requests or []
        if len(current) >= MAX_SPAWN_REQUESTS or any(r.id == request.id for r in current):
            return False
        names = [request.name, *(t.name for t in request.tasks), *(request.capabilities or [])]
        if any(self.redact(n) != n for n in names):
            return False
        cuts: dict[Key, int] = {}
        tasks = []
        for t in request.tasks:
            key: Key = ("spawnRequests", request.id, t.name, "description")
            text, cuts[key] = self._clean(t.description, MAX_DESCRIPTION)
            tasks.append(t.model_copy(update={"description": text}))
        request = request.model_copy(update={"tasks": tasks})
        if json_bytes([r.wire() for r in [*current, request]]) > MAX_SPAWN_BYTES:
            return False
        for key, cut in cuts.items():
            self._cut(key, cut)
        self.run.spawn_requests = [*current, request]
        self._touch()
        return True

    # --- the writer ---------------------------------------------------------------

    def snapshot(self) -> JSON:
        """The whole `run` as a merge patch, at most `max_bytes` of JSON."""
        self.run.last_heartbeat_time = utcnow()
        out = self.run.merge_patch()
        cuts = dict(self._cuts)
        # A few bytes stay free for `truncatedBytes` itself.
        _fit(out, cuts, self.max_bytes - 32)
        out["truncatedBytes"] = sum(cuts.values()) or None
        return out

    async def flush_loop(self) -> None:
        """The only writer of status.run; returns after `close()` once the latest state is out.

        Waits use `asyncio.timeout`, not `wait_for`: on 3.11, `wait_for` can
        swallow a cancellation that races with the event it waits on.
        """
        while not self._gone:
            if self._closed:
                if self.in_sync:
                    return
            else:
                with contextlib.suppress(TimeoutError):  # a timeout is the heartbeat
                    async with asyncio.timeout(self.heartbeat_seconds):
                        await self._changed.wait()
                wait = self.min_interval - (self.clock() - self._last_write)
                if wait > 0:
                    # Coalesce: whatever arrives until the interval is over goes in one write.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._closing.wait()
            self._changed.clear()
            await self._write()

    async def _write(self) -> None:
        backoff = 0.2
        try:
            while True:
                version = self._version
                body = {"status": {"run": self.snapshot()}}
                self._last_write = self.clock()
                try:
                    await self.kube.patch(AGENTS, self.agent, body, self.namespace, sub="status")
                    self.writes += 1
                    self._written_version = version
                    return
                except ApiError as err:
                    self.failures += 1
                    if err.not_found:
                        log.warning("Agent %s is gone; not reporting", self.agent)
                        self._gone = True
                        return
                    log.warning("status write failed (%s), retrying in %.1fs", err.status, backoff)
                except (httpx.TransportError, OSError) as err:
                    self.failures += 1
                    log.warning(
                        "status write failed (%s), retrying in %.1fs", type(err).__name__, backoff
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            self._wrote.set()

    @property
    def in_sync(self) -> bool:
        return self._written_version == self._version

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the state as of now is written, at the writer's pace; whether it was."""
        version = self._version
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._written_version < version and not self._gone:
                    self._wrote.clear()
                    await self._wrote.wait()
        return self._written_version >= version

    async def close(self, writer: asyncio.Task[None], timeout: float = 10.0) -> bool:
        """At exit: write the latest state at once (bounded), then stop the writer.
        Whether it got out."""
        self._closed = True
        self._closing.set()
        self._changed.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(writer)
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        return self.in_sync


def _valid(text: str) -> str:
    """Lone surrogates (valid in JSON escapes, not in UTF-8) become "?"."""
    return text.encode(errors="replace").decode() if not text.isascii() else text


def _places(run: JSON, *, spawn: bool = False) -> list[tuple[Key, JSON, str]]:
    """Where the texts of a wire `run` are, in the order they give way to the size cap:
    finished tasks' texts, oldest first; then unfinished tasks'; then the rest."""
    tasks = sorted(
        run.get("tasks") or [],
        key=lambda t: (t.get("finishedAt") is None, t.get("finishedAt") or ""),
    )
    out: list[tuple[Key, JSON, str]] = [
        (("task", t["name"], name), t, name)
        for t in tasks
        for name in ("summary", "error", "description")
    ]
    for key in (("lastObservation", "message"), ("denials", "last"), ("workspace", "message")):
        if isinstance(run.get(key[0]), dict):
            out.append((key, run[key[0]], key[1]))
    if spawn:
        out += [
            (("spawnRequests", r["id"], t["name"], "description"), t, "description")
            for r in run.get("spawnRequests") or []
            for t in r["tasks"]
        ]
    return out


def _fit(run: JSON, cuts: dict[Key, int], limit: int) -> None:
    """Cut texts of the wire `run` until it is at most `limit` bytes: to a short
    head each, in `_places` order, then to their markers alone."""
    size = json_bytes(run)
    if size <= limit:
        return
    places = _places(run)
    for keep in (SQUEEZED_BYTES, 0):
        for key, obj, name in places:
            text = obj.get(name)
            if not text:
                continue
            cut = cuts.get(key, 0)
            body = text[: len(text) - len(marker(cut))] if cut else text
            shorter, cut = cap_bytes(body, keep, cut)
            if len(shorter.encode()) >= len(text.encode()):
                continue
            size += json_bytes(shorter) - json_bytes(text)
            obj[name], cuts[key] = shorter, cut
            if size <= limit:
                return
    log.warning("status.run is %d bytes after every cut (cap %d)", size, limit)
