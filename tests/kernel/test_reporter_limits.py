"""The reporter against a real API server: how often it writes, how big, and what never leaks.

An agent controls the text and the pace of its messages; its Agent's status
is read by the operator, by people and by everyone with `get` on Agents.
So the number of writes is bounded whatever the agent sends, status.run is
bounded in bytes (not characters), and no key reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from toka.api.models import SpawnRequest, TaskSpec
from toka.kernel.reporter import Reporter
from toka.kube.client import AGENTS, ApiError, AsyncKube
from toka.llm.sanitize import Redactor

pytestmark = pytest.mark.controlplane

JSON = dict[str, Any]
EMOJI = "🦀"  # 1 character, 4 bytes in UTF-8
FORMATTED_KEY = "sk-ant-api03-" + "Xy7_Q" * 8  # shaped like an Anthropic key
CONFIGURED_KEY = "plain-looking-configured-secret-v4lue"  # only known as the configured value
MARKER = "…[truncated "
CAP = 256 * 1024  # bytes of status.run


def size(run: JSON) -> int:
    """Bytes of status.run as JSON in UTF-8."""
    return len(json.dumps(run, ensure_ascii=False, separators=(",", ":")).encode())


@dataclass
class Changes:
    """Every resourceVersion the API server gave the Agent, as a watch sees them."""

    versions: list[str] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)

    async def follow(self, kube: AsyncKube, namespace: str, name: str, since: str) -> None:
        async for event in kube.watch(
            AGENTS, namespace, resource_version=since, field_selector=f"metadata.name={name}"
        ):
            if event["type"] == "MODIFIED":
                self.versions.append(event["object"]["metadata"]["resourceVersion"])
                self.seen.set()

    async def until(self, version: str) -> int:
        """How many changes there were, up to and including `version`."""
        async with asyncio.timeout(30):
            while version not in self.versions:
                self.seen.clear()
                await self.seen.wait()
        return self.versions.index(version) + 1


@dataclass
class Agent:
    kube: AsyncKube
    namespace: str
    name: str
    changes: Changes

    def reporter(self, tasks: list[str], **kw: Any) -> Reporter:
        r = Reporter(self.kube, self.namespace, self.name, **kw)
        r.adopt(None, tasks)
        return r

    async def read(self) -> JSON:
        body: JSON = await self.kube.get(AGENTS, self.name, self.namespace)
        return body

    async def run(self) -> JSON:
        run: JSON = (await self.read())["status"]["run"]
        return run

    async def writes(self) -> int:
        """Changes the reporter made to the Agent, counted by the API server's watch."""
        return await self.changes.until((await self.read())["metadata"]["resourceVersion"])


@pytest.fixture
async def agent(kube: AsyncKube, namespace: str) -> AsyncIterator[Agent]:
    created = await kube.create(
        AGENTS,
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "ag"},
            "spec": {
                "capabilities": ["llm:complete"],
                "tasks": [{"name": "t", "description": "x"}],
            },
        },
        namespace,
    )
    changes = Changes()
    watching = asyncio.create_task(
        changes.follow(kube, namespace, "ag", created["metadata"]["resourceVersion"])
    )
    yield Agent(kube, namespace, "ag", changes)
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError, ApiError):
        await watching


def texts(run: JSON) -> list[str]:
    """Every free text of a status.run."""
    out = [t.get(k) for t in run.get("tasks") or [] for k in ("summary", "error", "description")]
    out += [
        (run.get("lastObservation") or {}).get("message"),
        (run.get("denials") or {}).get("last"),
    ]
    out += [t["description"] for r in run.get("spawnRequests") or [] for t in r["tasks"]]
    return [t for t in out if t]


# --- rate ---------------------------------------------------------------------------


async def test_a_burst_of_300_task_started_messages_is_a_handful_of_writes(agent: Agent) -> None:
    r = agent.reporter(["t"], min_interval=1.0)
    writer = asyncio.create_task(r.flush_loop())
    started = time.monotonic()
    for _ in range(300):  # about 2 s of TaskStarted spam
        r.task_started("t")
        await asyncio.sleep(2 / 300)
    r.task_completed("t", "done after all")
    assert await r.close(writer)
    spent = time.monotonic() - started
    # The first write, at most one a second, the last: not one per message, however
    # long the burst took on this machine.
    assert await agent.writes() <= 2 + math.ceil(spent / 1.0)
    task = (await agent.run())["tasks"][0]
    assert (task["state"], task["attempts"], task["summary"]) == (
        "Succeeded",
        300,
        "done after all",
    )


async def test_task_transitions_coalesce_and_each_task_ends_in_its_final_state(
    agent: Agent,
) -> None:
    r = agent.reporter(["a", "b", "c"], min_interval=3600)
    writer = asyncio.create_task(r.flush_loop())
    for transition in (
        lambda: r.task_started("a"),
        lambda: r.task_completed("a", "a done"),
        lambda: r.task_started("b"),
        lambda: r.task_failed("b", "b broke"),
        lambda: r.task_started("b"),
        lambda: r.task_completed("b", "b done on the second try"),
        lambda: r.task_started("c"),
    ):
        await asyncio.sleep(0.05)  # the writer could write each one
        transition()
    assert await r.close(writer)
    # The leading-edge write of the adopted tasks, then the last state at exit.
    assert await agent.writes() == 2
    tasks = {t["name"]: t for t in (await agent.run())["tasks"]}
    assert (tasks["a"]["state"], tasks["a"]["attempts"]) == ("Succeeded", 1)
    assert (tasks["b"]["state"], tasks["b"]["attempts"]) == ("Succeeded", 2)
    assert (tasks["b"]["summary"], tasks["b"].get("error")) == ("b done on the second try", None)
    assert (tasks["c"]["state"], tasks["c"].get("finishedAt")) == ("Running", None)
    assert tasks["a"]["startedAt"] <= tasks["a"]["finishedAt"] <= tasks["b"]["startedAt"]


async def test_the_last_task_completed_is_written_without_waiting_for_a_heartbeat(
    agent: Agent,
) -> None:
    r = agent.reporter(["t"], min_interval=0.2, heartbeat_seconds=3600)
    writer = asyncio.create_task(r.flush_loop())
    r.task_started("t")
    r.task_completed("t", "all done")
    assert await r.flush()
    assert (await agent.run())["tasks"][0]["state"] == "Succeeded"
    assert await r.close(writer)


# --- size ---------------------------------------------------------------------------


async def test_each_text_is_capped_in_bytes_with_a_marker_saying_how_much_was_cut(
    agent: Agent,
) -> None:
    r = agent.reporter(["t"])
    writer = asyncio.create_task(r.flush_loop())
    r.task_started("t")
    r.task_completed("t", EMOJI * 1000)  # 1000 characters, 4000 bytes
    r.observe("ok " + EMOJI * 1000)
    assert await r.close(writer)
    run = await agent.run()
    summary, observation = run["tasks"][0]["summary"], run["lastObservation"]["message"]
    assert len(summary.encode()) <= 1024
    assert len(observation.encode()) <= 1024
    assert summary.startswith(EMOJI * 100)
    assert summary.endswith(" bytes]")
    cut = int(summary.rsplit(MARKER, 1)[1].split()[0])
    assert len(summary.rsplit(MARKER, 1)[0].encode()) + cut == 4000
    assert run["truncatedBytes"] >= cut


async def test_status_run_stays_under_its_byte_cap_whatever_the_agent_writes(
    agent: Agent,
) -> None:
    tasks = [f"task-{i}" for i in range(100)]
    r = agent.reporter(tasks)
    writer = asyncio.create_task(r.flush_loop())
    for i in range(16):
        assert r.follow_up(f"more-{i}", EMOJI * 4096)
    for name in tasks:
        r.task_started(name)
        r.task_completed(name, "S" + EMOJI * 4096)
        r.task_started(name)
        r.task_failed(name, "E" + EMOJI * 4096)
    accepted = [
        r.spawn_request(
            SpawnRequest(
                id=f"req-{i}",
                name=f"child-{i}",
                tasks=[TaskSpec(name=f"c{j}", description=EMOJI * 4096) for j in range(16)],
            )
        )
        for i in range(8)
    ]
    r.observe(EMOJI * 100_000)
    r.denial(EMOJI * 100_000)
    assert await r.close(writer)
    run = await agent.run()
    assert size(run) <= CAP
    assert run["truncatedBytes"] > 0
    assert len(run["tasks"]) == 116
    assert all(t["state"] == "Failed" and t["attempts"] == 2 for t in run["tasks"][:100])
    assert accepted[0]
    assert not all(accepted)  # spawn requests beyond their share are refused
    oldest, newest = run["tasks"][0]["summary"], run["tasks"][99]["summary"]
    assert MARKER in oldest
    assert len(oldest.encode()) < len(newest.encode())


# --- redaction ----------------------------------------------------------------------


def send_secrets(r: Reporter, secret: str) -> None:
    r.observe(f"found {secret} in .env")
    r.progress(50, f"halfway, token={secret}")
    r.task_started("t")
    r.task_failed("t", f"401 with {secret}")
    r.task_started("t")
    r.task_completed("t", f"used the key {secret} to call the API")
    r.denial(f"net:http:api.example.com?key={secret} not granted")
    assert r.follow_up("later", f"rotate {secret}")
    assert r.spawn_request(
        SpawnRequest(
            id="req-1", name="child", tasks=[TaskSpec(name="c", description=f"use {secret}")]
        )
    )


async def test_a_key_shaped_string_never_reaches_the_agent_status(agent: Agent) -> None:
    r = agent.reporter(["t"])
    writer = asyncio.create_task(r.flush_loop())
    send_secrets(r, FORMATTED_KEY)
    assert await r.close(writer)
    status = json.dumps(await agent.read())
    assert "sk-ant-" not in status
    assert "[REDACTED]" in (await agent.run())["tasks"][0]["summary"]


async def test_the_configured_key_value_never_reaches_the_agent_status(agent: Agent) -> None:
    r = agent.reporter(["t"], redact=Redactor([CONFIGURED_KEY]))
    writer = asyncio.create_task(r.flush_loop())
    send_secrets(r, CONFIGURED_KEY)
    assert await r.close(writer)
    run = await agent.run()
    assert CONFIGURED_KEY not in json.dumps(await agent.read())
    assert all("[REDACTED]" in text for text in texts(run) if "rotate" in text or "use" in text)
    assert run["lastObservation"]["message"] == "halfway, token=[REDACTED]"
