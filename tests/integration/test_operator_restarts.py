"""Killed at random moments and restarted, the operator finishes and duplicates nothing."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from tests.conftest import OperatorProcess
from tests.helpers import wait_for
from tests.sessions import Recorder, agent, call, finish, put_recordings, recording, session
from toka.kube.client import AGENTS, SESSIONS, AsyncKube

pytestmark = pytest.mark.controlplane
LAYERS, WIDTH = 4, 5


async def test_an_operator_killed_five_times_completes_a_20_agent_session_without_duplicates(
    kube: AsyncKube, namespace: str, operator: OperatorProcess
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    print(f"kill schedule seed: {seed}")
    names = [f"l{i}-{j}" for i in range(LAYERS) for j in range(WIDTH)]
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            n: recording(
                n,
                {
                    "t": [
                        call("fs_write", path=f"out/{n}.txt", content=n),
                        finish(f"{n} wrote out/{n}.txt"),
                    ]
                },
            )
            for n in names
        },
    )
    agents = [
        agent(
            f"l{i}-{j}",
            caps=["llm:complete", "fs:write:out/**"],
            depends=[f"l{i - 1}-{j}"] if i else None,
        )
        for i in range(LAYERS)
        for j in range(WIDTH)
    ]
    body = session("big", agents, limits={"requestsPerMinute": 6000, "maxParallelAgents": 6})

    async with Recorder(kube, namespace) as seen:
        await kube.create(SESSIONS, body, namespace)
        for _ in range(5):
            await asyncio.sleep(rng.uniform(1.0, 4.0))
            operator.kill()
            await asyncio.sleep(rng.uniform(0.1, 1.5))
            operator.start()
        done = await wait_for(
            kube,
            SESSIONS,
            "big",
            namespace,
            lambda s: (s.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
            timeout=300,
            what="a final phase",
        )
    assert operator.starts == 6
    assert done["status"]["phase"] == "Succeeded", done["status"]

    agent_objects = Counter(name for name, _ in seen.created("agent"))
    expected = Counter(f"big-{n}" for n in names)
    assert agent_objects == expected, (
        f"duplicated or missing Agents: {agent_objects - expected}, {expected - agent_objects}"
    )
    pod_objects = Counter(name for name, _ in seen.created("pod"))
    expected_pods = Counter(f"big-{n}-1" for n in names)
    assert pod_objects == expected_pods, (
        f"duplicated or missing pods: {pod_objects - expected_pods}, {expected_pods - pod_objects}"
    )

    for n in names:
        obj = await kube.get(AGENTS, f"big-{n}", namespace)
        tasks = obj["status"]["run"]["tasks"]
        assert [(t["name"], t["state"], t["summary"]) for t in tasks] == [
            ("t", "Succeeded", f"{n} wrote out/{n}.txt")
        ]
        if n.startswith(("l1", "l2", "l3")):
            (dep,) = obj["spec"]["dependsOn"]
            dep_run = (await kube.get(AGENTS, f"big-{dep}", namespace))["status"]["run"]
            assert obj["spec"]["handoff"] == [
                {
                    "agent": dep,
                    "summary": f"t: {dep} wrote out/{dep}.txt",
                    "commit": dep_run["workspace"]["result"]["commit"],
                    "base": dep_run["workspace"]["base"],
                }
            ]
    assert done["status"]["progress"] == "20/20", done["status"]["members"]
