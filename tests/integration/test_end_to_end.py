"""A whole session on the dev cluster: real kernel, tools and agent containers.

Three agents with dependencies read a seeded workspace, write files, run a
program, try a tool they were not granted and ask for sub-agents, all from
`replay` recordings; the operator runs them in order and answers the spawn
requests. The second test stops the API server for 20 s in the middle of
such a session.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    NodeAgentProcess,
    OperatorProcess,
    failed,
    install_toka,
    running_node_agent,
)
from tests.helpers import events_for, phase_is, wait_for
from tests.sessions import Recorder, agent, call, finish, put_recordings, recording, session
from toka.devcluster.binaries import ensure_binaries
from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import (
    AGENTS,
    CONFIGMAPS,
    NAMESPACES,
    SERVICEACCOUNTS,
    SESSIONS,
    AsyncKube,
)
from toka.kube.kubeconfig import load_kubeconfig

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
FINAL = ("Succeeded", "Failed")


async def seed_workspace(kube: AsyncKube, ns: str) -> None:
    await kube.create(
        CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "seed"},
            "data": {"README.md": "# Project\nBuild the thing.\n"},
        },
        ns,
    )


def three_agent_session(name: str) -> tuple[JSON, dict[str, str]]:
    """The session and its recordings: planner → builder → reviewer, planner spawns."""
    recordings = {
        "planner": recording(
            "planner",
            {
                "read": [
                    call("fs_read", path="README.md"),
                    call("fs_write", path="notes/plan.md", content="1. build\n2. review\n"),
                    finish("planned two steps from README.md"),
                ],
                "delegate": [
                    call(
                        "spawn_agent",
                        name="helper",
                        capabilities=["llm:complete", "fs:read:notes/**"],
                        tasks=[{"name": "t", "description": "check the notes"}],
                    ),
                    call(
                        "spawn_agent",
                        name="rogue",
                        capabilities=["shell:exec:rm"],
                        tasks=[{"name": "t", "description": "clean up everything"}],
                    ),
                    finish("asked for a helper and a rogue"),
                ],
            },
        ),
        "builder": recording(
            "builder",
            {
                "build": [
                    call("fs_write", path="out/log.txt", content="built\n"),
                    call("shell_exec", argv=["cp", "README.md", "out/copy.md"]),
                    call("fs_write", path="secrets/stolen.txt", content="x"),
                    finish("built out/log.txt and copied README.md"),
                ]
            },
        ),
        "reviewer": recording(
            "reviewer", {"review": [call("fs_list", path=""), finish("reviewed the workspace")]}
        ),
        "helper": recording("helper", {"t": [finish("the notes look fine")]}),
    }
    body = session(
        name,
        [
            agent(
                "planner",
                tasks=["read", "delegate"],
                caps=["llm:complete", "fs:read:**", "fs:write:notes/**", "agent:spawn"],
            ),
            agent(
                "builder",
                tasks=["build"],
                depends=["planner"],
                caps=["llm:complete", "fs:read:**", "fs:write:out/**", "shell:exec:cp"],
            ),
            agent(
                "reviewer",
                tasks=["review"],
                depends=["planner", "builder"],
                caps=["llm:complete", "fs:read:**"],
            ),
        ],
        workspace={"configMap": "seed"},
    )
    return body, recordings


def workspace_file(node: NodeAgentProcess, ns: str, pod: str, path: str) -> Path | None:
    candidate = node.pod_dir(ns, pod) / "volumes" / "workspace" / path
    return candidate if candidate.exists() else None


async def test_a_three_agent_session_works_files_runs_programs_and_answers_spawns(
    kube: AsyncKube, namespace: str, operator: OperatorProcess, node_agent: NodeAgentProcess
) -> None:
    await seed_workspace(kube, namespace)
    body, recordings = three_agent_session("e2e")
    await put_recordings(kube, namespace, "rec", recordings)
    async with Recorder(kube, namespace) as seen:
        await kube.create(SESSIONS, body, namespace)
        done = await wait_for(
            kube, SESSIONS, "e2e", namespace, phase_is(*FINAL), timeout=180, what="a final phase"
        )
        child = await wait_for(
            kube, AGENTS, "e2e-planner-helper", namespace, phase_is(*FINAL), timeout=120
        )
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert done["status"]["progress"] == "4/4"

    agents = {a: await kube.get(AGENTS, f"e2e-{a}", namespace) for a in recordings if a != "helper"}
    for name, obj in agents.items():
        run = obj["status"]["run"]
        assert all(t["state"] == "Succeeded" and t["summary"] for t in run["tasks"]), name
        assert run["usage"]["requests"] >= 2, name
        assert run["usage"]["inputTokens"] > 0, name
    assert agents["planner"]["status"]["run"]["tasks"][0]["summary"] == (
        "planned two steps from README.md"
    )

    progress = [
        (e.obj.get("status") or {}).get("run", {}).get("progress")
        for e in seen.events
        if e.kind == "agent" and e.name == "e2e-planner"
    ]
    assert "1/2" in progress, "the planner's progress never showed the first task done"
    assert progress.index("1/2") < progress.index("2/2")

    # Files and a program, for real, in each agent's own workspace.
    planner_pod = agents["planner"]["status"]["podName"]
    builder_pod = agents["builder"]["status"]["podName"]
    plan = workspace_file(node_agent, namespace, planner_pod, "notes/plan.md")
    assert plan is not None
    assert plan.read_text() == "1. build\n2. review\n"
    copy = workspace_file(node_agent, namespace, builder_pod, "out/copy.md")
    assert copy is not None, "cp did not run in the builder's workspace"
    assert copy.read_text() == "# Project\nBuild the thing.\n"
    assert workspace_file(node_agent, namespace, builder_pod, "secrets/stolen.txt") is None

    # The write outside fs:write:out/** was denied, in status and as an Event.
    denials = agents["builder"]["status"]["run"]["denials"]
    assert denials["count"] == 1
    assert "secrets/stolen.txt" in denials["last"]
    reasons = {
        e["reason"]
        for e in await events_for(kube, namespace, "e2e-builder", until="CapabilityDenied")
    }
    assert "CapabilityDenied" in reasons

    # One spawn accepted, one refused as an escalation, each answered once.
    results = {r["id"]: r for r in agents["planner"]["status"]["spawnResults"]}
    requests = {r["name"]: r["id"] for r in agents["planner"]["status"]["run"]["spawnRequests"]}
    helper, rogue = results[requests["helper"]], results[requests["rogue"]]
    assert helper["accepted"] is True
    assert helper["agent"] == "e2e-planner-helper"
    assert rogue["accepted"] is False
    assert rogue["reason"].startswith("Escalation")
    assert "shell:exec:rm" in rogue["reason"]
    assert child["status"]["phase"] == "Succeeded", child["status"]
    assert child["spec"]["capabilities"] == ["llm:complete", "fs:read:notes/**"]
    assert child["metadata"]["ownerReferences"][0]["uid"] == agents["planner"]["metadata"]["uid"]
    planner_events = await events_for(kube, namespace, "e2e-planner", until="SpawnRefused")
    assert [e["reason"] for e in planner_events].count("SpawnRefused") == 1
    assert [e["reason"] for e in planner_events].count("SpawnAccepted") == 1
    creations = [e for e in seen.events if e.kind == "agent" and e.type == "ADDED"]
    assert [e.name for e in creations].count("e2e-planner-helper") == 1
    assert not any("rogue" in e.name for e in creations)


@pytest.fixture
def outage_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """A control plane of this test's own, with Toka installed and a node agent on it."""
    cp = ControlPlane(tmp_path / "controlplane", ensure_binaries())
    cp.start()
    try:
        install_toka(cp)
        with running_node_agent(cp.admin_kubeconfig, tmp_path / "node") as node:
            yield cp
            if failed(request):
                print(f"--- node agent log\n{node.log.read_text(errors='replace')[-4000:]}")
    finally:
        cp.stop()


async def test_a_session_survives_the_api_server_stopping_for_20_seconds(
    outage_cluster: ControlPlane,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    cp = outage_cluster
    ns = "outage"
    op = OperatorProcess(cp.admin_kubeconfig, ns, tmp_path / "operator.log")
    async with AsyncKube(load_kubeconfig(cp.admin_kubeconfig)) as kube:
        await kube.create(
            NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        await wait_for(kube, NAMESPACES, ns, None, lambda _: True)
        # Each task takes a few seconds (a real `sleep`), so the outage lands mid-task.
        steps = ["one", "two", "three"]
        recordings = {
            a: recording(
                a,
                {
                    s: [call("shell_exec", argv=["sleep", "3"]), finish(f"{a} {s} done")]
                    for s in steps
                },
            )
            for a in ("first", "second")
        }
        await put_recordings(kube, ns, "rec", recordings)
        caps = ["llm:complete", "shell:exec:sleep"]
        body = session(
            "out",
            [
                agent("first", tasks=steps, caps=caps),
                agent("second", tasks=steps, caps=caps, depends=["first"]),
            ],
        )
        await wait_for_default_service_account(kube, ns)
        op.start()
        try:
            await kube.create(SESSIONS, body, ns)
            await wait_for(
                kube,
                AGENTS,
                "out-first",
                ns,
                lambda a: ((a.get("status") or {}).get("run") or {}).get("currentTask") == "one",
                timeout=90,
                what="the first task running",
            )
            cp.stop_apiserver()
            stopped = time.monotonic()
            await asyncio.sleep(20)
            cp.restart_apiserver()
            outage = time.monotonic() - stopped
            done = await wait_for(
                kube, SESSIONS, "out", ns, phase_is(*FINAL), timeout=240, what="a final phase"
            )
            assert outage >= 20
            assert done["status"]["phase"] == "Succeeded", done["status"]
            for name in ("out-first", "out-second"):
                tasks = (await kube.get(AGENTS, name, ns))["status"]["run"]["tasks"]
                assert [(t["name"], t["state"]) for t in tasks] == [
                    (s, "Succeeded") for s in steps
                ], name
                assert [t["summary"] for t in tasks] == [
                    f"{name.removeprefix('out-')} {s} done" for s in steps
                ]
                # Each task ran once: no transition was lost and replayed as a new attempt.
                assert all(t["attempts"] == 1 for t in tasks), tasks
        finally:
            op.stop()
            if failed(request):
                print(f"--- operator log\n{op.log.read_text(errors='replace')[-6000:]}")


async def wait_for_default_service_account(kube: AsyncKube, ns: str) -> None:
    await wait_for(kube, SERVICEACCOUNTS, "default", ns, lambda _: True, timeout=30)
