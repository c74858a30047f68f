"""Everything the operator makes for an object is owned by it and labelled with it: garbage
collection deletes it with its owner, and `kubectl get -l toka.dev/agent=…` finds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from toka.api.models import Agent, AgentSession, SpawnRequest
from toka.controller.builders.agent import build_agent, build_child_agent
from toka.controller.builders.meta import owner_reference
from toka.controller.builders.pod import (
    PodConfig,
    build_agent_configmap,
    build_agent_pod,
    build_role,
    build_role_binding,
    build_service_account,
)

JSON = dict[str, Any]
AGENT_BODY: JSON = {
    "apiVersion": "toka.dev/v1alpha1",
    "kind": "Agent",
    "metadata": {
        "name": "s-ag",
        "namespace": "ns",
        "uid": "ag-uid",
        "labels": {"toka.dev/session": "s", "toka.dev/workstream": "w", "team": "x"},
    },
    "spec": {"name": "ag", "tasks": [{"name": "t", "description": "x"}]},
}
AGENT = Agent.model_validate(AGENT_BODY)
TASKS = AGENT_BODY["spec"]["tasks"]
SESSION = AgentSession.model_validate(
    {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "s", "namespace": "ns", "uid": "s-uid"},
        "spec": {
            "workstream": "w",
            "agents": [{"name": "a", "tasks": TASKS}],
        },
    }
)
REQUEST = SpawnRequest.model_validate(
    {"id": "r1", "name": "kid", "tasks": [{"name": "t", "description": "x"}]}
)


def owned_by(kind: str, name: str, uid: str) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


MANAGED = {"app.kubernetes.io/managed-by": "toka"}
BY_THE_AGENT = owned_by("Agent", "s-ag", "ag-uid")
FOR_THE_AGENT = {"toka.dev/agent": "s-ag", **MANAGED}
MADE = [
    # (what, how it is made, its owner reference, its labels)
    (
        "the pod",
        lambda: build_agent_pod(AGENT, 2, PodConfig()),
        BY_THE_AGENT,
        {
            **FOR_THE_AGENT,
            "toka.dev/attempt": "2",
            "toka.dev/session": "s",
            "toka.dev/workstream": "w",
        },
    ),
    ("the ServiceAccount", lambda: build_service_account(AGENT), BY_THE_AGENT, FOR_THE_AGENT),
    ("the Role", lambda: build_role(AGENT), BY_THE_AGENT, FOR_THE_AGENT),
    ("the RoleBinding", lambda: build_role_binding(AGENT), BY_THE_AGENT, FOR_THE_AGENT),
    (
        "the result ConfigMap",
        lambda: build_agent_configmap(AGENT, "s-ag.result"),
        BY_THE_AGENT,
        FOR_THE_AGENT,
    ),
    (
        "a spawned child",
        lambda: build_child_agent(AGENT, REQUEST, 1, None),
        BY_THE_AGENT,
        {
            "toka.dev/parent": "s-ag",
            "toka.dev/spawn-depth": "1",
            "toka.dev/agent": "s-ag-kid",
            **MANAGED,
        },
    ),
    (
        "a session's agent",
        lambda: build_agent(SESSION, SESSION.spec.agents[0], []),
        owned_by("AgentSession", "s", "s-uid"),
        {"toka.dev/session": "s", "toka.dev/agent": "s-a", **MANAGED, "toka.dev/workstream": "w"},
    ),
]


@pytest.mark.parametrize(("what", "build", "owner", "labels"), MADE, ids=[m[0] for m in MADE])
def test_what_is_made_for_an_object_is_owned_by_it_and_labelled_with_it(
    what: str, build: Callable[[], JSON], owner: JSON, labels: dict[str, str]
) -> None:
    meta = build()["metadata"]
    assert meta["namespace"] == "ns"
    assert meta["ownerReferences"] == [owner]
    assert meta["labels"] == labels


def test_a_parsed_owner_and_its_body_name_the_same_owner() -> None:
    assert owner_reference(AGENT) == owner_reference(AGENT_BODY) == BY_THE_AGENT


def test_an_object_never_stored_owns_nothing() -> None:
    unsaved = AGENT.model_copy(update={"metadata": AGENT.metadata.model_copy(update={"uid": None})})
    with pytest.raises(ValueError, match=r"no metadata\.uid"):
        build_service_account(unsaved)
