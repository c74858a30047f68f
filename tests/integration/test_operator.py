"""The operator against the real API server, the dev node agent and real agent pods.

Agents here run Toka's own kernel, tools and agent containers with `replay`
recordings, so every status, summary and usage figure below was produced by
the real components.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.conftest import OperatorProcess
from tests.helpers import events_for, wait_for, wait_gone
from tests.sessions import Recorder, agent, call, finish, put_recordings, recording, session
from toka.kube.client import (
    AGENTS,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SESSIONS,
    AsyncKube,
)

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]


def phase(*phases: str) -> Any:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def condition(obj: JSON, type_: str) -> JSON:
    return next(c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_)


async def run_session(kube: AsyncKube, ns: str, body: JSON, timeout: float = 120) -> JSON:
    await kube.create(SESSIONS, body, ns)
    return await wait_for(
        kube,
        SESSIONS,
        body["metadata"]["name"],
        ns,
        phase("Succeeded", "Failed"),
        timeout=timeout,
        what="a final phase",
    )


async def test_a_chain_runs_in_order_and_hands_each_summary_to_the_next(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "first": recording(
                "first",
                {
                    "t": [
                        call("fs_write", path="notes/a.md", content="A"),
                        finish("wrote notes/a.md"),
                    ]
                },
            ),
            "second": recording("second", {"t": [finish("read what first did")]}),
            "third": recording("third", {"t": [finish("all done")]}),
        },
    )
    body = session(
        "chain",
        [
            agent("first", caps=["llm:complete", "fs:write:notes/**"]),
            agent("second", depends=["first"]),
            agent("third", depends=["second"]),
        ],
    )
    async with Recorder(kube, namespace) as seen:
        done = await run_session(kube, namespace, body)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    for before, after in (("first", "second"), ("second", "third")):
        succeeded = seen.first("agent", f"chain-{before}", phase="Succeeded")
        created = seen.first("agent", f"chain-{after}", type_="ADDED")
        assert succeeded is not None
        assert created is not None
        assert succeeded <= created, f"{after} was created before {before} succeeded"
    second = await kube.get(AGENTS, "chain-second", namespace)
    first = await kube.get(AGENTS, "chain-first", namespace)
    result = first["status"]["run"]["workspace"]
    assert second["spec"]["handoff"] == [
        {
            "agent": "first",
            "summary": "t: wrote notes/a.md",
            "commit": result["result"]["commit"],
            "base": result["base"],
        }
    ]
    status = done["status"]
    assert status["progress"] == "3/3"
    assert status["agents"]["succeeded"] == 3
    assert status["usage"] == {"requests": 4, "inputTokens": 400, "outputTokens": 40}
    assert condition(done, "Succeeded")["status"] == "True"


async def test_a_diamond_joins_only_after_both_branches_succeed(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    names = ["top", "left", "right", "join"]
    await put_recordings(
        kube, namespace, "rec", {n: recording(n, {"t": [finish(f"{n} ok")]}) for n in names}
    )
    body = session(
        "dia",
        [
            agent("top"),
            agent("left", depends=["top"]),
            agent("right", depends=["top"]),
            agent("join", depends=["left", "right"]),
        ],
    )
    async with Recorder(kube, namespace) as seen:
        done = await run_session(kube, namespace, body)
    assert done["status"]["phase"] == "Succeeded"
    join_created = seen.first("agent", "dia-join", type_="ADDED")
    for branch in ("left", "right"):
        ok = seen.first("agent", f"dia-{branch}", phase="Succeeded")
        assert ok is not None
        assert join_created is not None
        assert ok <= join_created
    join = await kube.get(AGENTS, "dia-join", namespace)
    assert {h["agent"] for h in join["spec"]["handoff"]} == {"left", "right"}


async def test_never_more_than_max_parallel_agents_run(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"w{i}" for i in range(5)]
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            n: recording(n, {"t": [call("shell_exec", argv=["sleep", "1"]), finish("slept")]})
            for n in names
        },
    )
    body = session(
        "par",
        [agent(n, caps=["llm:complete", "shell:exec:sleep"]) for n in names],
        limits={"maxParallelAgents": 2, "requestsPerMinute": 600},
    )
    async with Recorder(kube, namespace) as seen:
        done = await run_session(kube, namespace, body)
    assert done["status"]["phase"] == "Succeeded"
    assert len(seen.created("pod")) == 5
    assert seen.max_concurrent_pods() == 2


async def test_continue_skips_only_the_dependents_of_a_failed_agent(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "bad": recording("bad", {"t": [finish("could not do it", status="failed")] * 2}),
            "after-bad": recording("after-bad", {"t": [finish("x")]}),
            "other": recording("other", {"t": [finish("independent work done")]}),
        },
    )
    body = session(
        "cont",
        [agent("bad"), agent("after-bad", depends=["bad"]), agent("other")],
        failurePolicy="Continue",
    )
    done = await run_session(kube, namespace, body)
    members = {m["name"]: m["phase"] for m in done["status"]["members"]}
    assert members == {"bad": "Failed", "after-bad": "Skipped", "other": "Succeeded"}
    assert done["status"]["phase"] == "Failed"
    assert condition(done, "Failed")["reason"] == "AgentFailed"
    bad = await kube.get(AGENTS, "cont-bad", namespace)
    assert bad["status"]["run"]["tasks"][0]["error"] == "could not do it"
    assert condition(bad, "Failed")["status"] == "True"


async def test_fail_fast_stops_the_other_agents(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "bad": recording("bad", {"t": [finish("broken", status="failed")] * 2}),
            "slow": recording(
                "slow", {"t": [call("shell_exec", argv=["sleep", "60"]), finish("late")]}
            ),
        },
    )
    body = session(
        "ff",
        [agent("bad"), agent("slow", caps=["llm:complete", "shell:exec:sleep"])],
        failurePolicy="FailFast",
    )
    done = await run_session(kube, namespace, body, timeout=60)
    assert done["status"]["phase"] == "Failed"
    assert "FailFast" in condition(done, "Failed")["message"]
    slow = await wait_for(kube, AGENTS, "ff-slow", namespace, phase("Suspended"))
    assert slow["spec"]["suspend"] is True
    pods = (await kube.list(PODS, namespace, label_selector="toka.dev/agent=ff-slow"))["items"]
    assert all(
        p["metadata"].get("deletionTimestamp")
        or p["status"].get("phase") in ("Succeeded", "Failed")
        for p in pods
    )


async def test_suspend_then_resume_continues_after_the_last_completed_task(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "worker": recording(
                "worker",
                {
                    "one": [finish("first part done")],
                    "two": [call("shell_exec", argv=["sleep", "4"]), finish("second part done")],
                },
            )
        },
    )
    body = session(
        "sus", [agent("worker", tasks=["one", "two"], caps=["llm:complete", "shell:exec:sleep"])]
    )
    await kube.create(SESSIONS, body, namespace)
    await wait_for(
        kube,
        AGENTS,
        "sus-worker",
        namespace,
        lambda a: ((a.get("status") or {}).get("run") or {}).get("currentTask") == "two",
    )
    await kube.patch(SESSIONS, "sus", {"spec": {"suspend": True}}, namespace)
    suspended = await wait_for(kube, SESSIONS, "sus", namespace, phase("Suspended"))
    assert suspended["status"]["phase"] == "Suspended"
    await wait_for(kube, AGENTS, "sus-worker", namespace, phase("Suspended"))
    await wait_gone(kube, PODS, "sus-worker-1", namespace)
    await kube.patch(SESSIONS, "sus", {"spec": {"suspend": False}}, namespace)
    done = await wait_for(
        kube, SESSIONS, "sus", namespace, phase("Succeeded", "Failed"), timeout=90
    )
    assert done["status"]["phase"] == "Succeeded"
    worker = await kube.get(AGENTS, "sus-worker", namespace)
    tasks = {t["name"]: t for t in worker["status"]["run"]["tasks"]}
    assert tasks["one"]["attempts"] == 1, "task one ran again after resume"
    assert tasks["two"]["attempts"] == 2
    assert tasks["two"]["summary"] == "second part done"
    assert worker["status"]["attempts"] == 2


async def test_the_session_deadline_fails_it_and_stops_its_agents(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "slow": recording(
                "slow", {"t": [call("shell_exec", argv=["sleep", "120"]), finish("late")]}
            )
        },
    )
    body = session(
        "dl",
        [agent("slow", caps=["llm:complete", "shell:exec:sleep"])],
        limits={"activeDeadlineSeconds": 4},
    )
    done = await run_session(kube, namespace, body, timeout=60)
    assert done["status"]["phase"] == "Failed"
    assert condition(done, "DeadlineExceeded")["status"] == "True"
    assert condition(done, "Failed")["reason"] == "DeadlineExceeded"
    await wait_for(kube, AGENTS, "dl-slow", namespace, phase("Suspended"))


async def test_deleting_a_session_removes_everything_it_created(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(kube, namespace, "rec", {"a": recording("a", {"t": [finish("ok")]})})
    done = await run_session(kube, namespace, session("gc", [agent("a")]))
    assert done["status"]["phase"] == "Succeeded"
    for res, name in (
        (AGENTS, "gc-a"),
        (PODS, "gc-a-1"),
        (SERVICEACCOUNTS, "gc-a"),
        (ROLES, "gc-a"),
        (ROLEBINDINGS, "gc-a"),
    ):
        await kube.get(res, name, namespace)
    await kube.delete(SESSIONS, "gc", namespace)
    for res, name in (
        (SESSIONS, "gc"),
        (AGENTS, "gc-a"),
        (PODS, "gc-a-1"),
        (SERVICEACCOUNTS, "gc-a"),
        (ROLES, "gc-a"),
        (ROLEBINDINGS, "gc-a"),
    ):
        await wait_gone(kube, res, name, namespace, timeout=60)


async def test_pod_template_shapes_the_pods_and_ttl_removes_them_after_the_end(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(kube, namespace, "rec", {"a": recording("a", {"t": [finish("ok")]})})
    template = {
        "nodeSelector": {"toka.dev/dev-node": "true"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "agents", "effect": "NoSchedule"}
        ],
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccount": {"annotations": {"iam.example.com/role": "agents"}},
    }
    body = session("ttl", [agent("a")], podTemplate=template, ttlSecondsAfterFinished=3)
    async with Recorder(kube, namespace) as seen:
        done = await run_session(kube, namespace, body)
        assert done["status"]["phase"] == "Succeeded"
        await wait_gone(kube, PODS, "ttl-a-1", namespace, timeout=30)
    finished = datetime.fromisoformat(done["status"]["completionTime"].replace("Z", "+00:00"))
    deleted = next(e for e in seen.events if e.kind == "pod" and e.type == "DELETED")
    assert deleted.obj["metadata"]["deletionTimestamp"] >= (
        (finished + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    pod = next(e.obj for e in seen.events if e.kind == "pod" and e.name == "ttl-a-1")
    assert pod["spec"]["nodeSelector"] == {"toka.dev/dev-node": "true"}
    assert template["tolerations"][0] in pod["spec"]["tolerations"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    account = await kube.get(SERVICEACCOUNTS, "ttl-a", namespace)
    assert account["metadata"]["annotations"]["iam.example.com/role"] == "agents"
    # The Agents and their status stay: only the pods go.
    assert (await kube.get(AGENTS, "ttl-a", namespace))["status"]["phase"] == "Succeeded"


async def test_a_dependency_cycle_is_named_and_nothing_is_created(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    body = session(
        "cyc", [agent("a", depends=["c"]), agent("b", depends=["a"]), agent("c", depends=["b"])]
    )
    done = await run_session(kube, namespace, body, timeout=30)
    ready = condition(done, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "dependency cycle: a → c → b → a" in ready["message"]
    assert (await kube.list(AGENTS, namespace))["items"] == []


async def test_a_missing_key_secret_is_named_on_the_agent(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    body = session("nokey", [agent("a")])
    body["spec"]["llm"] = {
        "provider": "anthropic",
        "apiKeySecretRef": {"name": "anthropic", "key": "api-key"},
    }
    await kube.create(SESSIONS, body, namespace)
    ag = await wait_for(
        kube,
        AGENTS,
        "nokey-a",
        namespace,
        lambda a: any(
            c["type"] == "PodScheduled" and c["reason"] == "SecretNotFound"
            for c in (a.get("status") or {}).get("conditions", [])
        ),
    )
    message = condition(ag, "PodScheduled")["message"]
    assert "Secret 'anthropic'" in message
    assert "llm.apiKeySecretRef" in message
    assert "api-key" in message
    assert (await kube.list(PODS, namespace))["items"] == []
    reasons = {
        e["reason"] for e in await events_for(kube, namespace, "nokey-a", until="SecretNotFound")
    }
    assert "SecretNotFound" in reasons


async def test_a_missing_git_credentials_secret_is_named_on_the_agent(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(kube, namespace, "rec", {"a": recording("a", {"t": [finish("ok")]})})
    body = session(
        "nogit",
        [agent("a")],
        workspace={
            "git": {"url": "https://git.example/r.git", "credentialsSecretRef": {"name": "gone"}}
        },
    )
    await kube.create(SESSIONS, body, namespace)
    ag = await wait_for(
        kube,
        AGENTS,
        "nogit-a",
        namespace,
        lambda a: any(
            c["type"] == "PodScheduled" and c["reason"] == "SecretNotFound"
            for c in (a.get("status") or {}).get("conditions", [])
        ),
    )
    message = condition(ag, "PodScheduled")["message"]
    assert "Secret 'gone'" in message
    assert "workspace.git.credentialsSecretRef" in message
    assert (await kube.list(PODS, namespace))["items"] == []


async def test_a_session_agent_gets_merged_mcp_servers_and_a_missing_headers_secret_is_named(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(kube, namespace, "rec", {"a": recording("a", {"t": [finish("ok")]})})
    docs = {"name": "docs", "url": "https://docs.example/mcp", "headersSecretRef": {"name": "gone"}}
    wiki = {"name": "wiki", "url": "https://wiki.example/mcp"}
    mine = {"name": "wiki", "url": "http://wiki.internal:8080/mcp"}
    body = session("nomcp", [agent("a", mcpServers=[mine])], mcpServers=[docs, wiki])
    await kube.create(SESSIONS, body, namespace)
    ag = await wait_for(
        kube,
        AGENTS,
        "nomcp-a",
        namespace,
        lambda a: any(
            c["type"] == "PodScheduled" and c["reason"] == "SecretNotFound"
            for c in (a.get("status") or {}).get("conditions", [])
        ),
    )
    assert ag["spec"]["mcpServers"] == [docs, mine]
    message = condition(ag, "PodScheduled")["message"]
    assert "Secret 'gone'" in message
    assert "mcpServers[docs].headersSecretRef" in message
    assert (await kube.list(PODS, namespace))["items"] == []


async def test_an_image_that_cannot_start_is_named_on_the_agent(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(kube, namespace, "rec", {"a": recording("a", {"t": [finish("ok")]})})
    await kube.create(
        SESSIONS,
        session("img", [agent("a", image="registry.example.com/agents/custom:1")]),
        namespace,
    )
    ag = await wait_for(
        kube,
        AGENTS,
        "img-a",
        namespace,
        lambda a: any(
            c["type"] == "KernelReady" and c["reason"] == "ImagePullBackOff"
            for c in (a.get("status") or {}).get("conditions", [])
        ),
        timeout=60,
    )
    message = condition(ag, "KernelReady")["message"]
    assert "registry.example.com/agents/custom:1" in message
    assert "spec.image" in message


async def test_a_standalone_agent_runs_without_a_session(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    await put_recordings(
        kube, namespace, "rec", {"solo": recording("solo", {"t": [finish("alone and fine")]})}
    )
    await kube.create(
        AGENTS,
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "solo"},
            "spec": {
                "llm": {"provider": "replay", "replay": {"configMapRef": {"name": "rec"}}},
                "capabilities": ["llm:complete"],
                "tasks": [{"name": "t", "description": "x"}],
            },
        },
        namespace,
    )
    done = await wait_for(kube, AGENTS, "solo", namespace, phase("Succeeded", "Failed"), timeout=60)
    assert done["status"]["phase"] == "Succeeded"
    assert done["status"]["run"]["tasks"][0]["summary"] == "alone and fine"
    reasons = [
        e["reason"] for e in await events_for(kube, namespace, "solo", until="AgentSucceeded")
    ]
    assert "PodCreated" in reasons
    assert "AgentSucceeded" in reasons


async def test_a_denied_tool_call_shows_in_status_and_as_an_event(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    # Tools the agent is offered, used beyond its grant: the kernel is what says no.
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "nosy": recording(
                "nosy",
                {
                    "t": [
                        call("fs_read", path="../etc/passwd"),
                        call("shell_exec", argv=["curl", "http://169.254.169.254/"]),
                        finish("tried and was stopped"),
                    ]
                },
            )
        },
    )
    caps = ["llm:complete", "fs:read:**", "shell:exec:sleep"]
    done = await run_session(kube, namespace, session("deny", [agent("nosy", caps=caps)]))
    assert done["status"]["phase"] == "Succeeded"
    nosy = await kube.get(AGENTS, "deny-nosy", namespace)
    denials = nosy["status"]["run"]["denials"]
    assert denials["count"] == 2
    assert "shell:exec:curl" in denials["last"]
    warnings = [
        e
        for e in await events_for(kube, namespace, "deny-nosy", until="CapabilityDenied")
        if e["reason"] == "CapabilityDenied"
    ]
    assert warnings
    assert "shell:exec:curl" in warnings[-1]["message"]


async def test_an_older_operators_finalizer_is_removed_so_deleting_is_not_blocked(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    legacy = "toka.dev/finalizer"
    for kind, res, body in (
        (
            "Agent",
            AGENTS,
            {"spec": {"suspend": True, "tasks": [{"name": "t", "description": "x"}]}},
        ),
        ("AgentSession", SESSIONS, session("old", [agent("a")], suspend=True)),
    ):
        meta = {"name": "old", "finalizers": [legacy, "example.com/keep"]}
        await kube.create(
            res,
            {**body, "apiVersion": "toka.dev/v1alpha1", "kind": kind, "metadata": meta},
            namespace,
        )
        cleared = await wait_for(
            kube,
            res,
            "old",
            namespace,
            lambda o: legacy not in (o["metadata"].get("finalizers") or []),
            what=f"the {kind}'s old finalizer removed",
        )
        assert cleared["metadata"]["finalizers"] == ["example.com/keep"]  # nobody else's
        await kube.patch(res, "old", {"metadata": {"finalizers": None}}, namespace)
        await kube.delete(res, "old", namespace)
        await wait_gone(kube, res, "old", namespace)
