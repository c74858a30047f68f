"""The reconciler against an in-memory API: given what is observed, which calls it makes.

Plans are tested on their own (test_reconcile.py); these tests cover what
sits between the watch and the API: the store, write-through, name
conflicts fed back into the plan, the legacy finalizer, and forgetting.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakekube import FakeKube
from toka.controller.reconciler import Kind, OperatorConfig, Reconciler
from toka.kube.client import AGENTS, PODS, SESSIONS

JSON = dict[str, Any]
NS = "ns"
TASKS = [{"name": "t", "description": "x"}]


def agent_body(name: str = "a", status: JSON | None = None, **meta: Any) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name, "namespace": NS, **meta},
        "spec": {"capabilities": ["llm:complete"], "tasks": TASKS},
        **({"status": status} if status else {}),
    }


def session_body(*agents: str) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "s", "namespace": NS},
        "spec": {"agents": [{"name": a, "tasks": TASKS} for a in agents]},
    }


def running_pod(kube: FakeKube, agent: JSON) -> JSON:
    """Attempt 1 of `agent`, running."""
    return kube.add(
        PODS,
        {
            "metadata": {
                "name": f"{agent['metadata']['name']}-1",
                "labels": {"toka.dev/agent": agent["metadata"]["name"]},
                "ownerReferences": [{"uid": agent["metadata"]["uid"], "kind": "Agent"}],
            },
            "status": {"phase": "Running"},
        },
        NS,
    )


async def settle(reconciler: Reconciler) -> None:
    """Post the queued Events (no poster runs: the tests call `reconcile` directly)."""
    await reconciler.flush_events()


def writes(kube: FakeKube, *skip: str) -> list[tuple[str, str, str]]:
    return [w for w in kube.writes() if w[1] not in ("events", *skip)]


@pytest.fixture
async def kube() -> FakeKube:
    return FakeKube()


async def reconcile_once(kube: FakeKube, kind: Kind, body: JSON) -> Reconciler:
    reconciler = Reconciler(kube, OperatorConfig())
    stored = kube.add(kind.resource, body, NS)
    reconciler.observe(kind, None, stored)
    await reconciler.reconcile((kind, NS, body["metadata"]["name"]))
    await settle(reconciler)
    return reconciler


async def test_a_new_agent_gets_its_identity_before_its_pod_and_a_status(kube: FakeKube) -> None:
    await reconcile_once(kube, Kind.AGENT, agent_body())
    made = writes(kube)
    assert sorted(made[:3]) == [
        ("create", "configmaps", "a.result"),
        ("create", "roles", "a"),
        ("create", "serviceaccounts", "a"),
    ]
    assert made[3:] == [
        ("create", "rolebindings", "a"),
        ("create", "pods", "a-1"),
        ("patch/status", "agents", "a"),
    ]


async def test_an_agent_reconciled_again_with_nothing_new_writes_nothing(kube: FakeKube) -> None:
    reconciler = await reconcile_once(kube, Kind.AGENT, agent_body())
    kube.calls.clear()
    await reconciler.reconcile((Kind.AGENT, NS, "a"))
    # Its pod is in the store (write-through): no second pod, only the status that
    # describes the pod it now sees.
    assert kube.calls == [("patch/status", "agents", "a")]
    kube.calls.clear()
    await reconciler.reconcile((Kind.AGENT, NS, "a"))
    await settle(reconciler)
    # And the status it wrote too: nothing to do, not even a read.
    assert kube.calls == []


async def test_a_session_creates_its_agents_and_starts_them_without_waiting_for_the_watch(
    kube: FakeKube,
) -> None:
    reconciler = await reconcile_once(kube, Kind.SESSION, session_body("x", "y"))
    assert sorted(w for w in writes(kube) if w[0] == "create") == [
        ("create", "agents", "s-x"),
        ("create", "agents", "s-y"),
    ]
    assert ("patch/status", "agentsessions", "s") in writes(kube)
    # Queued at once: their pods need not wait for the watch to report them.
    assert {(kind, name) for kind, _, name in _queued(reconciler)} >= {
        (Kind.AGENT, "s-x"),
        (Kind.AGENT, "s-y"),
    }
    kube.calls.clear()
    await reconciler.reconcile((Kind.SESSION, NS, "s"))
    assert writes(kube) == []  # its Agents are known: nothing created twice


def _queued(reconciler: Reconciler) -> list[tuple[Kind, str, str]]:
    queue = reconciler.queues[Kind.AGENT]
    out = []
    while len(queue):
        key = queue._order.get_nowait()
        out.append(key)
    return out


async def test_a_taken_child_name_becomes_a_refusal_in_the_next_plan(kube: FakeKube) -> None:
    kube.add(AGENTS, agent_body("a-helper"), NS)  # someone else's Agent, with the child's name
    status = {
        "phase": "Running",
        "run": {
            "spawnRequests": [
                {
                    "id": "r1",
                    "name": "helper",
                    "tasks": [{"name": "h", "description": "help"}],
                    "capabilities": ["llm:complete"],
                }
            ]
        },
    }
    body = agent_body(status=status)
    body["spec"]["capabilities"] = ["llm:complete", "agent:spawn"]
    reconciler = Reconciler(kube, OperatorConfig())
    stored = kube.add(AGENTS, body, NS)
    reconciler.observe(Kind.AGENT, None, stored)
    pod = running_pod(kube, stored)
    reconciler.observe_pod(None, pod)
    first = await reconciler.reconcile((Kind.AGENT, NS, "a"))
    assert ("create", "agents", "a-helper") in kube.calls
    assert first is not None
    assert first < 1  # soon: to report the refusal
    kube.calls.clear()
    await reconciler.reconcile((Kind.AGENT, NS, "a"))
    await settle(reconciler)
    assert ("create", "agents", "a-helper") not in kube.calls
    answer = kube.objects[("agents", NS, "a")]["status"]["spawnResults"]
    assert answer[0]["id"] == "r1"
    assert answer[0]["accepted"] is False
    assert "already exists" in answer[0]["reason"]


async def test_an_older_operators_finalizer_is_removed(kube: FakeKube) -> None:
    body = agent_body(finalizers=["toka.dev/finalizer", "someone.else/keep"])
    await reconcile_once(kube, Kind.AGENT, body)
    assert writes(kube)[0] == ("patch", "agents", "a")
    assert kube.objects[("agents", NS, "a")]["metadata"]["finalizers"] == ["someone.else/keep"]


async def test_a_deleted_object_is_forgotten_everywhere(kube: FakeKube) -> None:
    reconciler = await reconcile_once(kube, Kind.AGENT, agent_body())
    assert reconciler.states
    reconciler.observe(Kind.AGENT, "DELETED", kube.objects[("agents", NS, "a")])
    assert reconciler.states == {}
    assert reconciler.store.agents == {}
    assert reconciler.metrics.agents == {}
    kube.calls.clear()
    assert await reconciler.reconcile((Kind.AGENT, NS, "a")) is None
    assert kube.calls == []


async def test_an_object_gone_while_the_watch_was_down_is_forgotten_at_its_next_write(
    kube: FakeKube,
) -> None:
    reconciler = Reconciler(kube, OperatorConfig())
    reconciler.observe(Kind.SESSION, None, kube.add(SESSIONS, session_body(), NS))
    del kube.objects[("agentsessions", NS, "s")]
    await reconciler.reconcile((Kind.SESSION, NS, "s"))
    assert reconciler.store.sessions == {}


async def test_a_restarted_operator_lists_pods_before_it_reconciles_and_starts_no_new_attempt(
    kube: FakeKube,
) -> None:
    status = {"phase": "Pending", "attempts": 1, "podName": "a-1"}
    stored = kube.add(AGENTS, agent_body(status=status), NS)
    running_pod(kube, stored)
    reconciler = Reconciler(kube, OperatorConfig(namespaces=(NS,)))
    reconciler.observe(Kind.AGENT, None, stored)  # the Agent's watch was first; pods not yet
    await reconciler.sync()
    await reconciler.reconcile((Kind.AGENT, NS, "a"))
    assert ("create", "pods", "a-2") not in kube.calls
    assert [c for c in kube.calls if c[0] == "create"] == []
