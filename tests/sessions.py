"""Building sessions and replay recordings for end-to-end tests, and watching what happens."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from toka.kube.client import AGENTS, CONFIGMAPS, PODS, ApiError, AsyncKube, Resource

JSON = dict[str, Any]


def finish(summary: str, status: str = "succeeded") -> JSON:
    return {
        "content": "",
        "tool_calls": [
            {
                "id": "fin",
                "name": "finish_task",
                "arguments": {"status": status, "summary": summary},
            }
        ],
        "stop_reason": "tool_use",
    }


def call(tool: str, /, **arguments: Any) -> JSON:
    return {
        "content": "",
        "tool_calls": [{"id": f"c-{tool}", "name": tool, "arguments": arguments}],
        "stop_reason": "tool_use",
    }


def recording(agent: str, tasks: dict[str, list[JSON]], tokens: tuple[int, int] = (100, 10)) -> str:
    turns = [
        {
            "task": task,
            "turn": i,
            "response": resp,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
        }
        for task, responses in tasks.items()
        for i, resp in enumerate(responses, 1)
    ]
    return json.dumps({"version": 1, "agent": agent, "turns": turns})


async def put_recordings(
    kube: AsyncKube, namespace: str, name: str, recordings: dict[str, str]
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {f"{agent}.json": text for agent, text in recordings.items()},
    }
    try:
        await kube.create(CONFIGMAPS, body, namespace)
    except ApiError as err:
        if not err.conflict:
            raise
        await kube.replace(CONFIGMAPS, name, body, namespace)


def session(name: str, agents: list[JSON], *, recordings: str = "rec", **spec: Any) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {
            "llm": {"provider": "replay", "replay": {"configMapRef": {"name": recordings}}},
            "agents": agents,
            **spec,
        },
    }


def agent(
    name: str,
    *,
    tasks: list[str] = ("t",),
    depends: list[str] | None = None,  # type: ignore[assignment]
    caps: list[str] | None = None,
    **extra: Any,
) -> JSON:
    out: JSON = {
        "name": name,
        "capabilities": caps or ["llm:complete"],
        "backoffLimit": 0,
        "tasks": [{"name": t, "description": f"do {t}"} for t in tasks],
        **extra,
    }
    if depends:
        out["dependsOn"] = depends
    return out


@dataclass
class Seen:
    kind: str
    type: str
    name: str
    uid: str
    phase: str | None
    at: float
    obj: JSON


@dataclass
class Recorder:
    """Every watch event on Agents and Pods (or `kinds`) of a namespace, as they happen."""

    kube: AsyncKube
    namespace: str
    kinds: tuple[tuple[str, Resource], ...] = (("agent", AGENTS), ("pod", PODS))
    events: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _uids: set[tuple[str, str]] = field(default_factory=set)

    async def __aenter__(self) -> Recorder:
        for kind, res in self.kinds:
            self._tasks.append(asyncio.create_task(self._watch(kind, res)))
        await asyncio.sleep(0.3)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert not self.errors, f"the recorder's watch failed: {self.errors}"

    async def _watch(self, kind: str, res: Resource) -> None:
        while True:
            try:
                async for event in self.kube.list_and_watch(res, self.namespace):
                    obj = event["object"]
                    meta = obj["metadata"]
                    phase = (obj.get("status") or {}).get("phase")
                    kind_uid = (kind, meta["uid"])
                    # A relist shows known objects as ADDED again: that is not a creation.
                    type_ = event["type"]
                    if type_ == "ADDED" and kind_uid in self._uids:
                        type_ = "RELISTED"
                    self._uids.add(kind_uid)
                    self.events.append(
                        Seen(
                            kind,
                            type_,
                            meta["name"],
                            meta["uid"],
                            phase,
                            time.monotonic(),
                            obj,
                        )
                    )
            except ApiError as err:
                # Recorded, and the test fails at exit: a blind recorder proves nothing.
                self.errors.append(f"{kind}: {err}")
                await asyncio.sleep(0.5)

    def first(
        self, kind: str, name: str, phase: str | None = None, type_: str | None = None
    ) -> float | None:
        for e in self.events:
            if (
                e.kind == kind
                and e.name == name
                and (phase is None or e.phase == phase)
                and (type_ is None or e.type == type_)
            ):
                return e.at
        return None

    def created(self, kind: str) -> list[tuple[str, str]]:
        """(name, uid) of every object seen ADDED (a duplicate would show twice)."""
        out: list[tuple[str, str]] = []
        for e in self.events:
            if e.kind == kind and (e.name, e.uid) not in out:
                out.append((e.name, e.uid))
        return out

    def max_concurrent_pods(self) -> int:
        """The most pods alive (not Succeeded/Failed, not deleted) at any watch event."""
        alive: dict[str, bool] = {}
        peak = 0
        for e in self.events:
            if e.kind != "pod":
                continue
            alive[e.uid] = e.type != "DELETED" and e.phase not in ("Succeeded", "Failed")
            peak = max(peak, sum(alive.values()))
        return peak
