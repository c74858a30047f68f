"""Spawn requests answered by the operator: narrowing, depth, fan-out and budget."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from toka.api.models import Agent, AgentLimits
from toka.controller.builders.names import LABEL_PARENT, LABEL_SPAWN_DEPTH
from toka.controller.reconcile.agent import compute_agent_plan
from toka.controller.reconcile.spawn import MAX_CHILDREN, compute_spawn_plan

JSON = dict[str, Any]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
PARENT_CAPS = ["agent:spawn", "llm:complete", "fs:write:notes/**", "shell:exec:git"]
MCP_CAPS = [*PARENT_CAPS, "mcp:docs:search_*", "mcp:wiki:*"]


def request(id_: str, caps: list[str], name: str | None = None) -> JSON:
    return {
        "id": id_,
        "name": name or f"child-{id_}",
        "capabilities": caps,
        "tasks": [{"name": "t", "description": "do it"}],
    }


def parent(*args: Any, **kw: Any) -> Agent:
    return Agent.model_validate(parent_body(*args, **kw))


def parent_body(
    requests: list[JSON],
    *,
    caps: list[str] | None = None,
    depth: int | None = None,
    results: list[JSON] | None = None,
    used: int = 0,
) -> JSON:
    labels = {} if depth is None else {LABEL_SPAWN_DEPTH: str(depth)}
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "p-uid",
            "generation": 1,
            "labels": labels,
        },
        "spec": {
            "capabilities": PARENT_CAPS if caps is None else caps,
            "tasks": [{"name": "t", "description": "x"}],
            "llm": {"provider": "replay", "replay": {"configMapRef": {"name": "rec", "key": "p"}}},
        },
        "status": {
            "spawnResults": results or None,
            "run": {
                "spawnRequests": requests,
                "usage": {"requests": 1, "inputTokens": used, "outputTokens": 0},
            },
        },
    }


CASES = [
    ("an equal capability is accepted", {}, ["fs:write:notes/**"], True, None),
    ("a narrower glob is accepted", {}, ["fs:write:notes/a/*.md"], True, None),
    ("no capabilities at all is accepted", {}, [], True, None),
    ("the same program is accepted", {}, ["shell:exec:git"], True, None),
    ("an alias the parent covers is accepted", {}, ["git-access"], True, None),
    ("a wider glob is an escalation", {}, ["fs:write:**"], False, "Escalation"),
    ("another domain is an escalation", {}, ["fs:read:notes/**"], False, "Escalation"),
    ("another program is an escalation", {}, ["shell:exec:rm"], False, "Escalation"),
    ("net the parent lacks is an escalation", {}, ["network-access"], False, "Escalation"),
    (
        "without agent:spawn nothing is spawned",
        {"caps": ["llm:complete"]},
        [],
        False,
        "NotPermitted",
    ),
    ("depth is bounded", {"depth": 2}, [], False, "DepthExceeded"),
    ("a child of a child is allowed", {"depth": 1}, [], True, None),
    ("a spent budget gives a child nothing", {"used": 1000}, [], False, "BudgetExhausted"),
    (
        "a narrower mcp tool glob is accepted",
        {"caps": MCP_CAPS},
        ["mcp:docs:search_p*"],
        True,
        None,
    ),
    (
        "a wider mcp tool glob is an escalation",
        {"caps": MCP_CAPS},
        ["mcp:docs:*"],
        False,
        "Escalation",
    ),
    (
        "an mcp server the parent lacks is an escalation",
        {"caps": MCP_CAPS},
        ["mcp:jira:search_*"],
        False,
        "Escalation",
    ),
]


@pytest.mark.parametrize(
    ("case", "kw", "caps", "accepted", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_a_spawn_request_is_answered_by_the_rules(
    case: str, kw: JSON, caps: list[str], accepted: bool, reason: str | None
) -> None:
    plan = compute_spawn_plan(parent([request("r1", caps)], **kw), AgentLimits(max_tokens=1000))
    (result,) = plan.results
    assert result.accepted is accepted
    assert bool(plan.create) is accepted
    if reason:
        assert result.reason is not None
        assert result.reason.startswith(reason)
        assert plan.events[0][:2] == ("Warning", "SpawnRefused")


def test_an_accepted_child_is_owned_by_its_parent_and_holds_only_what_it_asked_for() -> None:
    plan = compute_spawn_plan(
        parent([request("r1", ["fs:write:notes/x/**"], name="helper")]),
        AgentLimits(max_tokens=1000, requests_per_minute=10),
    )
    (child,) = plan.create
    assert child["metadata"]["name"] == "p-helper"
    assert child["metadata"]["ownerReferences"][0]["uid"] == "p-uid"
    assert child["metadata"]["labels"][LABEL_PARENT] == "p"
    assert child["metadata"]["labels"][LABEL_SPAWN_DEPTH] == "1"
    assert child["spec"]["capabilities"] == ["fs:write:notes/x/**"]
    assert child["spec"]["llm"]["replay"]["configMapRef"] == {"name": "rec", "key": "helper.json"}
    assert child["spec"]["limits"] == {"maxTokens": 500, "requestsPerMinute": 5}
    assert plan.results[0].max_tokens == 500


def test_a_child_gets_only_the_mcp_servers_its_own_grant_names() -> None:
    body = parent_body(
        [request("r1", ["mcp:docs:search_pages"]), request("r2", ["fs:write:notes/x"])],
        caps=MCP_CAPS,
    )
    body["spec"]["mcpServers"] = [
        {"name": "docs", "url": "https://docs.example/mcp", "headersSecretRef": {"name": "d"}},
        {"name": "wiki", "url": "https://wiki.example/mcp", "headersSecretRef": {"name": "w"}},
    ]
    docs_child, plain_child = compute_spawn_plan(Agent.model_validate(body), None).create
    assert docs_child["spec"]["mcpServers"] == [body["spec"]["mcpServers"][0]]
    assert "mcpServers" not in plain_child["spec"]


def test_an_answered_request_is_never_answered_again() -> None:
    answered = parent(
        [request("r1", [])],
        results=[{"id": "r1", "agent": "p-child-r1", "accepted": True, "maxTokens": 10}],
    )
    plan = compute_spawn_plan(answered, AgentLimits(max_tokens=1000))
    assert not plan.create
    assert not plan.events
    assert len(plan.results) == 1


def test_fan_out_is_bounded() -> None:
    requests = [request(f"r{i}", []) for i in range(MAX_CHILDREN + 1)]
    plan = compute_spawn_plan(parent(requests), None)
    assert [r.accepted for r in plan.results] == [True] * MAX_CHILDREN + [False]
    assert (plan.results[-1].reason or "").startswith("TooManyChildren")


def test_children_budgets_come_out_of_the_parents_limits() -> None:
    body = parent_body([request("r1", []), request("r2", [])], used=200)
    body["spec"]["limits"] = {"maxTokens": 1000}
    plan = compute_agent_plan(Agent.model_validate(body), [], NOW)
    # 800 left: the first child gets 400, the second 200; the parent keeps 1000 - 600.
    assert [r.max_tokens for r in plan.status.spawn_results or []] == [400, 200]
    assert plan.status.limits == AgentLimits(max_tokens=400)
    assert next(c for c in plan.status.conditions or [] if c.type == "SpawnRefused").status == (
        "False"
    )


def test_a_refusal_sets_the_spawn_refused_condition_with_its_reason() -> None:
    plan = compute_agent_plan(parent([request("r1", ["fs:write:**"])]), [], NOW)
    refused = next(c for c in plan.status.conditions or [] if c.type == "SpawnRefused")
    assert (refused.status, refused.reason) == ("True", "Escalation")
    assert "fs:write:**" in refused.message


WHY = "Agent ns/p-child-r1 already exists and is not owned by Agent p"
CONFLICTS = [
    # (case, requests, earlier answers, names taken, answers as (id, accepted, reason, tokens),
    #  children created)
    (
        "a name another object holds is refused and nothing is created for it",
        [request("r1", [])],
        None,
        {"p-child-r1": WHY},
        [("r1", False, "NameConflict", None)],
        [],
    ),
    (
        "the other children are made, with the budget the refused one would have had",
        [request("r1", []), request("r2", [])],
        None,
        {"p-child-r1": WHY},
        [("r1", False, "NameConflict", None), ("r2", True, None, 500)],
        ["p-child-r2"],
    ),
    (
        "a request the rules refuse keeps its own reason",
        [request("r1", ["fs:write:**"])],
        None,
        {"p-child-r1": WHY},
        [("r1", False, "Escalation", None)],
        [],
    ),
    (
        "an answer already given becomes a refusal when its Agent could not be made",
        [request("r1", [])],
        [{"id": "r1", "agent": "p-child-r1", "accepted": True, "maxTokens": 500}],
        {"p-child-r1": WHY},
        [("r1", False, "NameConflict", None)],
        [],
    ),
    (
        "a refusal already given stays as it was",
        [request("r1", [])],
        [{"id": "r1", "accepted": False, "reason": "NameConflict: earlier"}],
        {"p-child-r1": WHY},
        [("r1", False, "NameConflict", None)],
        [],
    ),
    (
        "a name no request asks for changes nothing",
        [request("r1", [])],
        None,
        {"p-other": WHY},
        [("r1", True, None, 500)],
        ["p-child-r1"],
    ),
]


@pytest.mark.parametrize(
    ("case", "requests", "results", "taken", "answers", "created"),
    CONFLICTS,
    ids=[c[0] for c in CONFLICTS],
)
def test_a_child_whose_name_is_taken_is_refused_by_the_plan(
    case: str,
    requests: list[JSON],
    results: list[JSON] | None,
    taken: dict[str, str],
    answers: list[tuple[str, bool, str | None, int | None]],
    created: list[str],
) -> None:
    plan = compute_spawn_plan(
        parent(requests, results=results), AgentLimits(max_tokens=1000), taken
    )
    got = [
        (r.id, r.accepted, r.reason.split(":", 1)[0] if r.reason else None, r.max_tokens)
        for r in plan.results
    ]
    assert got == answers
    assert [c["metadata"]["name"] for c in plan.create] == created


def test_a_name_conflict_is_reported_in_the_agents_status_and_a_warning() -> None:
    plan = compute_agent_plan(parent([request("r1", [])]), [], NOW, conflicts={"p-child-r1": WHY})
    assert plan.create_children == []
    (result,) = plan.status.spawn_results or []
    assert (result.accepted, result.reason) == (False, f"NameConflict: {WHY}")
    assert ("Warning", "SpawnRefused", f"spawn request r1: {WHY}") in plan.events
    refused = next(c for c in plan.status.conditions or [] if c.type == "SpawnRefused")
    assert (refused.status, refused.reason) == ("True", "NameConflict")
