"""The pure plans: given spec and observed objects, what the operator does and reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from toka.api.models import Agent, AgentSession, McpServer, McpServerStatus
from toka.controller.reconcile.agent import compute_agent_plan, mcp_servers_readiness
from toka.controller.reconcile.dag import dependents, find_cycle
from toka.controller.reconcile.session import compute_session_plan

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
JSON = dict[str, Any]


def session(agents: list[JSON], status: JSON | None = None, **spec: Any) -> AgentSession:
    return AgentSession.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "s", "namespace": "ns", "uid": "s-uid", "generation": 1},
            "spec": {"agents": agents, **spec},
            **({"status": status} if status else {}),
        }
    )


def tmpl(name: str, deps: list[str] | None = None, priority: int = 0) -> JSON:
    out: JSON = {"name": name, "priority": priority, "tasks": [{"name": "t", "description": "x"}]}
    if deps:
        out["dependsOn"] = deps
    return out


BASE = "b" * 40


def commit_of(name: str) -> str:
    return (name.encode().hex() + "c" * 40)[:40]


def observed(
    name: str,
    phase: str,
    *,
    tokens: int = 0,
    summary: str | None = None,
    suspend: bool = False,
    result: bool = True,
) -> Agent:
    """An Agent as the operator reads it; a succeeded one has reported its result commit."""
    run: JSON = {
        "usage": {"requests": 1, "inputTokens": tokens, "outputTokens": 0},
        "tasks": [
            {
                "name": "t",
                "state": "Succeeded" if phase == "Succeeded" else "Running",
                **({"summary": summary} if summary else {}),
            }
        ],
    }
    if phase == "Succeeded" and result:
        run["workspace"] = {
            "state": "Ready",
            "base": BASE,
            "start": BASE,
            "result": {"commit": commit_of(name), "filesChanged": 1, "insertions": 2},
        }
    return Agent.model_validate(
        {
            "metadata": {"name": f"s-{name}", "namespace": "ns", "uid": f"{name}-uid"},
            "spec": {
                "name": name,
                "suspend": suspend,
                "tasks": [{"name": "t", "description": "x"}],
            },
            "status": {"phase": phase, "run": run},
        }
    )


def created(plan: Any) -> list[str]:
    return [c["spec"]["name"] for c in plan.create]


@pytest.mark.parametrize(
    ("deps", "cycle"),
    [
        ({"a": [], "b": ["a"]}, None),
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["c"], "b": ["a"], "c": ["b"]}, ["a", "c", "b", "a"]),
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}, None),
    ],
)
def test_cycles_are_found_and_named(deps: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert find_cycle(deps) == cycle


def test_dependents_are_transitive() -> None:
    assert dependents({"a": [], "b": ["a"], "c": ["b"], "d": []}, {"a"}) == {"b", "c"}


CASES = [
    # (case, templates, observed, spec, expected creations)
    ("a chain starts at its root", [tmpl("a"), tmpl("b", ["a"])], {}, {}, ["a"]),
    (
        "the next link starts when its dependency succeeded",
        [tmpl("a"), tmpl("b", ["a"])],
        {"a": observed("a", "Succeeded")},
        {},
        ["b"],
    ),
    (
        "nothing starts while a dependency runs",
        [tmpl("a"), tmpl("b", ["a"])],
        {"a": observed("a", "Running")},
        {},
        [],
    ),
    (
        "parallelism is capped, higher priority first",
        [tmpl("a"), tmpl("b", priority=5), tmpl("c"), tmpl("d", priority=9)],
        {},
        {"limits": {"maxParallelAgents": 2}},
        ["d", "b"],
    ),
    (
        "running agents take slots",
        [tmpl("a"), tmpl("b"), tmpl("c")],
        {"a": observed("a", "Running")},
        {"limits": {"maxParallelAgents": 2}},
        ["b"],
    ),
    ("a suspended session starts nothing", [tmpl("a")], {}, {"suspend": True}, []),
    (
        "a spent budget starts nothing",
        [tmpl("a"), tmpl("b")],
        {"a": observed("a", "Succeeded", tokens=500)},
        {"limits": {"maxTotalTokens": 400}},
        [],
    ),
    (
        "dependents of a failed agent never start",
        [tmpl("a"), tmpl("b", ["a"]), tmpl("c")],
        {"a": observed("a", "Failed")},
        {},
        ["c"],
    ),
]


@pytest.mark.parametrize(
    ("case", "templates", "seen", "spec", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_what_starts_next(
    case: str, templates: list[JSON], seen: dict[str, Agent], spec: JSON, expected: list[str]
) -> None:
    assert created(compute_session_plan(session(templates, **spec), seen, NOW)) == expected


def test_handoff_carries_each_dependencys_summaries() -> None:
    long = observed("b", "Succeeded")
    assert long.status is not None
    assert long.status.run is not None
    first = long.status.run.tasks[0]  # type: ignore[index]
    long.status.run.tasks = [
        first.model_copy(update={"name": f"t{i}", "summary": "x" * 900}) for i in range(3)
    ]
    plan = compute_session_plan(
        session([tmpl("a"), tmpl("b"), tmpl("c", ["a", "b"])]),
        {"a": observed("a", "Succeeded", summary="fixed the build"), "b": long},
        NOW,
    )
    handoff = plan.create[0]["spec"]["handoff"]
    assert (handoff[0]["agent"], handoff[0]["summary"]) == ("a", "t: fixed the build")
    assert len(handoff[1]["summary"]) == 1024


def test_continue_skips_dependents_and_fails_the_session_when_all_is_done() -> None:
    plan = compute_session_plan(
        session([tmpl("a"), tmpl("b", ["a"]), tmpl("c")]),
        {"a": observed("a", "Failed"), "c": observed("c", "Succeeded")},
        NOW,
    )
    members = {m.name: m.phase.value for m in plan.status.members or []}
    assert members == {"a": "Failed", "b": "Skipped", "c": "Succeeded"}
    assert plan.status.phase is not None
    assert plan.status.phase.value == "Failed"
    assert plan.status.agents is not None
    assert plan.status.agents.skipped == 1


def test_fail_fast_suspends_the_running_agents_and_fails_at_once() -> None:
    plan = compute_session_plan(
        session([tmpl("a"), tmpl("b"), tmpl("c")], failurePolicy="FailFast"),
        {"a": observed("a", "Failed"), "b": observed("b", "Running")},
        NOW,
    )
    assert plan.set_suspend == {"s-b": True}
    assert plan.create == []
    assert plan.status.phase is not None
    assert plan.status.phase.value == "Failed"


def test_suspend_and_resume_flip_the_agents_suspend_field() -> None:
    running = {"a": observed("a", "Running")}
    assert compute_session_plan(session([tmpl("a")], suspend=True), running, NOW).set_suspend == {
        "s-a": True
    }
    paused = {"a": observed("a", "Suspended", suspend=True)}
    assert compute_session_plan(session([tmpl("a")]), paused, NOW).set_suspend == {"s-a": False}


def test_the_deadline_stops_everything_and_says_so() -> None:
    started = (NOW - timedelta(seconds=61)).isoformat()
    plan = compute_session_plan(
        session(
            [tmpl("a"), tmpl("b")],
            status={"startTime": started},
            limits={"activeDeadlineSeconds": 60},
        ),
        {"a": observed("a", "Running")},
        NOW,
    )
    assert plan.set_suspend == {"s-a": True}
    assert plan.create == []
    failed = next(c for c in plan.status.conditions or [] if c.type == "Failed")
    assert (failed.status.value, failed.reason) == ("True", "DeadlineExceeded")


def test_rate_and_budget_are_shared_among_running_agents() -> None:
    plan = compute_session_plan(
        session(
            [tmpl("a"), tmpl("b"), tmpl("c")],
            limits={"requestsPerMinute": 60, "maxTotalTokens": 1000},
        ),
        {"a": observed("a", "Running", tokens=100), "b": observed("b", "Running", tokens=300)},
        NOW,
    )
    # c starts too: three share 60/min and the 600 tokens left.
    assert {k: (v.requests_per_minute, v.max_tokens) for k, v in plan.shares.items()} == {
        "s-a": (20, 300),
        "s-b": (20, 500),
        "s-c": (20, 200),
    }
    assert plan.status.budget is not None
    assert plan.status.budget.remaining_tokens == 600


def test_a_finished_sessions_pods_go_after_its_ttl() -> None:
    done = {"phase": "Succeeded", "completionTime": (NOW - timedelta(seconds=30)).isoformat()}
    seen = {"a": observed("a", "Succeeded")}
    assert compute_session_plan(
        session([tmpl("a")], status=done, ttlSecondsAfterFinished=10), seen, NOW
    ).delete_pods
    later = compute_session_plan(
        session([tmpl("a")], status=done, ttlSecondsAfterFinished=60), seen, NOW
    )
    assert not later.delete_pods
    assert later.requeue_after == pytest.approx(30)


# --- agents ------------------------------------------------------------------------


def an_agent(status: JSON | None = None, **spec: Any) -> Agent:
    return Agent.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "ag", "namespace": "ns", "uid": "ag-uid", "generation": 3},
            "spec": {"tasks": [{"name": "t", "description": "x"}], "backoffLimit": 1, **spec},
            **({"status": status} if status else {}),
        }
    )


def pod(
    attempt: int,
    phase: str,
    *,
    reason: str | None = None,
    containers: list[JSON] | None = None,
    deleting: bool = False,
) -> JSON:
    meta: JSON = {"name": f"ag-{attempt}", "ownerReferences": [{"uid": "ag-uid"}]}
    if deleting:
        meta["deletionTimestamp"] = NOW.isoformat()
    return {
        "metadata": meta,
        "spec": {
            "containers": [{"name": "agent", "image": "toka"}],
            "initContainers": [{"name": "kernel", "image": "toka"}],
            "activeDeadlineSeconds": 60,
        },
        "status": {
            "phase": phase,
            **({"reason": reason} if reason else {}),
            "containerStatuses": containers or [],
            "conditions": [{"type": "PodScheduled", "status": "True"}],
        },
    }


def cond(plan: Any, type_: str) -> Any:
    return next(c for c in plan.status.conditions if c.type == type_)


AGENT_CASES = [
    ("no pod yet: the first attempt", [], {}, 1, "Pending"),
    ("a failed attempt within the backoff limit: the next", [pod(1, "Failed")], {}, 2, "Pending"),
    (
        "after a suspend deleted pod 1, attempt numbers go on",
        [],
        {"status": {"attempts": 1}},
        2,
        "Pending",
    ),
    ("a running pod: nothing to create", [pod(1, "Running")], {}, None, "Running"),
    ("a pod still terminating: wait", [pod(1, "Failed", deleting=True)], {}, None, "Pending"),
    ("succeeded", [pod(1, "Succeeded")], {}, None, "Succeeded"),
    ("beyond the backoff limit: failed", [pod(1, "Failed"), pod(2, "Failed")], {}, None, "Failed"),
]


@pytest.mark.parametrize(
    ("case", "pods", "extra", "attempt", "phase"), AGENT_CASES, ids=[c[0] for c in AGENT_CASES]
)
def test_attempts_and_phases(
    case: str, pods: list[JSON], extra: JSON, attempt: int | None, phase: str
) -> None:
    plan = compute_agent_plan(an_agent(extra.get("status")), pods, NOW)
    assert plan.create_attempt == attempt
    assert plan.status.phase is not None
    assert plan.status.phase.value == phase


@pytest.mark.parametrize(
    ("failed_pod", "reason", "words"),
    [
        (
            pod(2, "Failed", reason="DeadlineExceeded"),
            "BackoffLimitExceeded",
            "ran longer than timeoutSeconds",
        ),
        (
            pod(
                2,
                "Failed",
                containers=[
                    {
                        "name": "agent",
                        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    }
                ],
            ),
            "BackoffLimitExceeded",
            "ran out of memory",
        ),
        (
            pod(
                2,
                "Failed",
                containers=[{"name": "agent", "state": {"terminated": {"exitCode": 3}}}],
            ),
            "BackoffLimitExceeded",
            "exited with code 3",
        ),
    ],
)
def test_a_final_failure_says_why(failed_pod: JSON, reason: str, words: str) -> None:
    plan = compute_agent_plan(an_agent(), [pod(1, "Failed"), failed_pod], NOW)
    failed = cond(plan, "Failed")
    assert failed.reason == reason
    assert words in failed.message


def test_an_image_that_cannot_be_pulled_is_named() -> None:
    stuck = pod(
        1,
        "Pending",
        containers=[
            {
                "name": "agent",
                "state": {
                    "waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
                },
            }
        ],
    )
    stuck["spec"]["containers"][0]["image"] = "example.com/x:1"
    plan = compute_agent_plan(an_agent(), [stuck], NOW)
    kernel = cond(plan, "KernelReady")
    assert kernel.reason == "ImagePullBackOff"
    assert "example.com/x:1" in kernel.message
    assert any(e[1] == "ImagePullBackOff" for e in plan.events)


def test_a_missing_reference_blocks_the_pod_and_names_it() -> None:
    plan = compute_agent_plan(
        an_agent(), [], NOW, missing=("SecretNotFound", "Secret 'k' not found")
    )
    assert plan.create_attempt is None
    assert cond(plan, "PodScheduled").reason == "SecretNotFound"


def test_suspend_deletes_the_running_pod() -> None:
    plan = compute_agent_plan(an_agent(suspend=True), [pod(1, "Running")], NOW)
    assert plan.delete_pods == ["ag-1"]
    assert plan.status.phase is not None
    assert plan.status.phase.value == "Suspended"


def test_a_silent_kernel_is_stalled() -> None:
    running = pod(1, "Running", containers=[])
    running["status"]["initContainerStatuses"] = [
        {
            "name": "kernel",
            "started": True,
            "state": {"running": {"startedAt": "2026-11-23T11:00:00Z"}},
        }
    ]
    beat = {"run": {"lastHeartbeatTime": (NOW - timedelta(minutes=5)).isoformat()}}
    assert (
        cond(compute_agent_plan(an_agent(beat), [running], NOW), "Stalled").status.value == "True"
    )
    fresh = {"run": {"lastHeartbeatTime": (NOW - timedelta(seconds=5)).isoformat()}}
    assert (
        cond(compute_agent_plan(an_agent(fresh), [running], NOW), "Stalled").status.value == "False"
    )


SERVERS = [
    {"name": "docs", "url": "https://docs.example/mcp"},
    {"name": "wiki", "url": "https://wiki.example/mcp"},
]


def mcp(name: str, ready: bool, reason: str | None = None, **kw: Any) -> JSON:
    return {"name": name, "ready": ready, **({"reason": reason} if reason else {}), **kw}


READINESS = [
    # (case, status.run.mcpServers, condition status, reason, words in the message)
    (
        "every server connected",
        [mcp("docs", True, "Connected", tools=["search_pages"]), mcp("wiki", True, tools=[])],
        "True",
        "Connected",
        "docs: search_pages; wiki: no tools granted",
    ),
    (
        "one server unreachable",
        [
            mcp("docs", True, "Connected"),
            mcp("wiki", False, "Unreachable", message="connection refused"),
        ],
        "False",
        "Unreachable",
        "MCP server wiki: connection refused",
    ),
    (
        "the first failing server in spec order is named",
        [mcp("wiki", False, "Unauthorized"), mcp("docs", False, "ToolMissing")],
        "False",
        "ToolMissing",
        "MCP server docs",
    ),
    (
        "a failure is named even while another server is not reported yet",
        [mcp("wiki", False, "ProtocolError", message="invalid tools/list answer")],
        "False",
        "ProtocolError",
        "invalid tools/list answer",
    ),
    (
        "a failure the kernel gave no reason for",
        [mcp("docs", True), mcp("wiki", False)],
        "False",
        "NotReady",
        "MCP server wiki",
    ),
    ("nothing reported yet", None, "Unknown", "Connecting", "docs, wiki"),
    (
        "one server still connecting",
        [mcp("docs", True), mcp("wiki", False, "Connecting", message="not listed yet")],
        "Unknown",
        "Connecting",
        "MCP server wiki",
    ),
    (
        "a server no longer in the spec is not counted",
        [mcp("docs", True), mcp("wiki", True), mcp("old", False, "Unreachable")],
        "True",
        "Connected",
        "",
    ),
]


@pytest.mark.parametrize(
    ("case", "reported", "status", "reason", "words"), READINESS, ids=[r[0] for r in READINESS]
)
def test_mcp_servers_ready_summarises_the_kernels_report(
    case: str, reported: list[JSON] | None, status: str, reason: str, words: str
) -> None:
    got = mcp_servers_readiness(
        [McpServer.model_validate(s) for s in SERVERS],
        None if reported is None else [McpServerStatus.model_validate(r) for r in reported],
    )
    assert (got[0].value, got[1]) == (status, reason)
    assert words in got[2]


def running_with_kernel() -> JSON:
    running = pod(1, "Running")
    running["status"]["initContainerStatuses"] = [
        {"name": "kernel", "started": True, "state": {"running": {"startedAt": NOW.isoformat()}}}
    ]
    return running


def test_an_unreachable_mcp_server_sets_the_condition_and_warns_once() -> None:
    run = {"run": {"mcpServers": [mcp("docs", False, "Unreachable", message="timed out")]}}
    plan = compute_agent_plan(an_agent(run, mcpServers=SERVERS[:1]), [running_with_kernel()], NOW)
    ready = cond(plan, "McpServersReady")
    assert (ready.status.value, ready.reason) == ("False", "Unreachable")
    assert ("Warning", "Unreachable", "MCP server docs: timed out") in plan.events
    reported = {**run, "conditions": [c.wire() for c in plan.status.conditions or []]}
    again = compute_agent_plan(
        an_agent(reported, mcpServers=SERVERS[:1]), [running_with_kernel()], NOW
    )
    assert not [e for e in again.events if e[1] == "Unreachable"]


def test_an_agent_without_mcp_servers_has_no_mcp_condition() -> None:
    plan = compute_agent_plan(an_agent(), [running_with_kernel()], NOW)
    assert all(c.type != "McpServersReady" for c in plan.status.conditions or [])


def test_the_operator_never_writes_the_kernels_run() -> None:
    status = {"run": {"progress": "1/1"}, "phase": "Running"}
    plan = compute_agent_plan(an_agent(status), [pod(1, "Running")], NOW)
    assert "run" not in plan.status.merge_patch(exclude=frozenset({"run"}))


def test_a_dependent_waits_until_its_dependency_reported_its_result() -> None:
    spec = session([tmpl("a"), tmpl("b", ["a"])])
    waiting = compute_session_plan(spec, {"a": observed("a", "Succeeded", result=False)}, NOW)
    assert created(waiting) == []
    assert waiting.requeue_after == 2
    ready = compute_session_plan(spec, {"a": observed("a", "Succeeded")}, NOW)
    assert created(ready) == ["b"]


def test_a_dependents_handoff_names_each_dependencys_commit_in_depends_on_order() -> None:
    spec = session([tmpl("a"), tmpl("b"), tmpl("c", ["b", "a"])])
    seen = {"a": observed("a", "Succeeded"), "b": observed("b", "Succeeded")}
    (agent,) = compute_session_plan(spec, seen, NOW).create
    handoff = agent["spec"]["handoff"]
    assert [(h["agent"], h["commit"], h["base"]) for h in handoff] == [
        ("b", commit_of("b"), BASE),
        ("a", commit_of("a"), BASE),
    ]


def test_on_success_the_session_result_merges_the_agents_nothing_depends_on() -> None:
    spec = session([tmpl("a"), tmpl("b", ["a"]), tmpl("c", ["a"])])
    seen = {n: observed(n, "Succeeded") for n in "abc"}
    plan = compute_session_plan(spec, seen, NOW)
    assert plan.status.phase == "Succeeded"
    assert [(i.agent, i.object_name, i.commit) for i in plan.result_inputs] == [
        ("b", "s-b", commit_of("b")),
        ("c", "s-c", commit_of("c")),
    ]
    members = {m.name: m.result.commit for m in plan.status.members or [] if m.result}
    assert members == {n: commit_of(n) for n in "abc"}


def test_a_session_whose_result_is_made_asks_for_it_no_more() -> None:
    done = {"phase": "Succeeded", "result": {"commit": commit_of("b"), "base": BASE}}
    spec = session([tmpl("a"), tmpl("b", ["a"])], status=done)
    plan = compute_session_plan(spec, {n: observed(n, "Succeeded") for n in "ab"}, NOW)
    assert plan.result_inputs == []
    assert plan.status.result is not None
    assert plan.status.result.commit == commit_of("b")


def test_agents_sharing_a_volume_carry_no_results() -> None:
    spec = session(
        [tmpl("a"), tmpl("b", ["a"])], workspace={"persistentVolumeClaim": {"claimName": "pvc"}}
    )
    plan = compute_session_plan(spec, {"a": observed("a", "Succeeded", result=False)}, NOW)
    assert created(plan) == ["b"]


def failed_workspace(reason: str) -> JSON:
    return {
        "run": {"workspace": {"state": "Failed", "reason": reason, "message": f"{reason} in x.py"}}
    }


@pytest.mark.parametrize(
    ("reason", "pod_phase", "outcome"),
    [
        ("MergeConflict", "Failed", "Failed"),  # another attempt would conflict again
        ("GitAuthFailed", "Failed", "Failed"),
        ("ResultTooLarge", "Failed", "Failed"),
        ("PushFailed", "Succeeded", "Failed"),  # the work is done but not delivered
        ("ResultMissing", "Failed", "Pending"),  # maybe not there yet: a new attempt
    ],
)
def test_a_workspace_failure_ends_or_retries_the_agent(
    reason: str, pod_phase: str, outcome: str
) -> None:
    plan = compute_agent_plan(an_agent(failed_workspace(reason)), [pod(1, pod_phase)], NOW)
    assert plan.status.phase == outcome
    if outcome == "Failed":
        failed = next(c for c in plan.status.conditions or [] if c.type == "Failed")
        assert failed.reason == reason
        assert "x.py" in failed.message
        assert plan.create_attempt is None
    else:
        assert plan.create_attempt == 2


# Conditions an earlier reconcile wrote, about a pod and kernel that ran then.
SEEN_RUNNING = [
    {"type": t, "status": s, "reason": r, "lastTransitionTime": "2026-11-23T11:00:00Z"}
    for t, s, r in [
        ("Stalled", "True", "NoHeartbeat"),
        ("KernelReady", "True", "KernelStarted"),
        ("McpServersReady", "False", "Unreachable"),
    ]
]
STALE = [
    # (case, phase before, suspend, pods, each condition's status now; None: removed)
    (
        "its kernel reports again",
        "Running",
        False,
        [running_with_kernel()],
        {"Stalled": "False", "KernelReady": "True", "McpServersReady": "False"},
    ),
    (
        "its kernel restarts",
        "Running",
        False,
        [pod(1, "Running")],
        {"Stalled": None, "KernelReady": "False", "McpServersReady": "False"},
    ),
    (
        "its pod failed and the next attempt starts",
        "Running",
        False,
        [pod(1, "Failed")],
        {"Stalled": None},
    ),
    (
        "it succeeded",
        "Running",
        False,
        [pod(1, "Succeeded")],
        {"Stalled": None, "KernelReady": None, "McpServersReady": None},
    ),
    (
        "it failed",
        "Running",
        False,
        [pod(1, "Failed"), pod(2, "Failed")],
        {"Stalled": None, "KernelReady": None, "McpServersReady": None},
    ),
    (
        "it had finished before",
        "Succeeded",
        False,
        [],
        {"Stalled": None, "KernelReady": None, "McpServersReady": None},
    ),
    (
        "it is suspended",
        "Running",
        True,
        [pod(1, "Running")],
        {"Stalled": None, "KernelReady": None, "McpServersReady": None},
    ),
]


@pytest.mark.parametrize(
    ("case", "phase", "suspend", "pods", "expected"), STALE, ids=[s[0] for s in STALE]
)
def test_conditions_that_no_longer_apply_are_removed(
    case: str, phase: str, suspend: bool, pods: list[JSON], expected: dict[str, str | None]
) -> None:
    run = {
        "lastHeartbeatTime": NOW.isoformat(),
        "mcpServers": [mcp("docs", False, "Unreachable", message="timed out")],
    }
    status = {"phase": phase, "conditions": SEEN_RUNNING, "run": run}
    plan = compute_agent_plan(an_agent(status, suspend=suspend, mcpServers=SERVERS[:1]), pods, NOW)
    now = {c.type: c.status.value for c in plan.status.conditions or []}
    assert {t: now.get(t) for t in expected} == expected
