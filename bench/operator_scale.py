"""Operator scale: a 100-agent session's pods versus a raw client, and RSS at 10,000 Agents.

Both measured on one fresh control plane in the same run (no node: pods
need only exist). Targets (docs/architecture.md, Measured targets): pods
≤ 1.5 × the raw client creating the same objects (ServiceAccount, Role,
RoleBinding, Pod × N); 10,000 Agents tracked, all reconciled, at operator
RSS ≤ 400 MB.

    python -m bench.operator_scale [--agents 100] [--tracked 10000] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toka.api.crdgen import all_crds
from toka.api.models import Agent
from toka.controller.builders.pod import (
    PodConfig,
    build_agent_configmap,
    build_agent_pod,
    build_role,
    build_role_binding,
    build_service_account,
)
from toka.controller.io import post_event
from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import (
    AGENTS,
    CONFIGMAPS,
    NAMESPACES,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SESSIONS,
    AsyncKube,
)
from toka.kube.crds import ensure_crds
from toka.kube.kubeconfig import load_kubeconfig

JSON = dict[str, Any]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def namespace(kube: AsyncKube, name: str) -> None:
    await kube.create(NAMESPACES, {"metadata": {"name": name}})
    while True:
        try:
            await kube.get(SERVICEACCOUNTS, "default", name)
            return
        except Exception:
            await asyncio.sleep(0.1)


def agent_body(ns: str, i: int) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": f"raw-{i}", "namespace": ns, "uid": f"uid-{i}"},
        "spec": {"capabilities": ["llm:complete"], "tasks": [{"name": "t", "description": "x"}]},
    }


async def raw_client(kube: AsyncKube, ns: str, n: int) -> float:
    """The baseline: the same four objects per agent, agents concurrently."""
    config = PodConfig()

    async def one(i: int) -> None:
        agent = Agent.model_validate(agent_body(ns, i))
        for res, build in (
            (SERVICEACCOUNTS, build_service_account),
            (ROLES, build_role),
            (ROLEBINDINGS, build_role_binding),
        ):
            obj = build(agent)
            obj["metadata"].pop("ownerReferences")
            await kube.create(res, obj, ns)
        pod = build_agent_pod(agent, 1, config)
        pod["metadata"].pop("ownerReferences")
        await kube.create(PODS, pod, ns)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - started


async def raw_every_write(kube: AsyncKube, ns: str, n: int) -> float:
    """A second baseline: every write the operator makes for an agent, in its order
    (Agent; ServiceAccount, Role, result ConfigMap; RoleBinding; Pod; then two status
    writes and two Events), agents concurrently; timed, as the operator is, until the
    last pod exists. The operator against this is the cost of the control loop alone."""
    config = PodConfig()
    last_pod = 0.0

    async def one(i: int) -> None:
        nonlocal last_pod
        body = agent_body(ns, i)
        body["metadata"].pop("uid")
        created = await kube.create(AGENTS, body, ns)
        agent = Agent.model_validate(created)
        await asyncio.gather(
            kube.create(SERVICEACCOUNTS, build_service_account(agent), ns),
            kube.create(ROLES, build_role(agent), ns),
            kube.create(CONFIGMAPS, build_agent_configmap(agent, f"raw-{i}.result"), ns),
        )
        await kube.create(ROLEBINDINGS, build_role_binding(agent), ns)
        await kube.create(PODS, build_agent_pod(agent, 1, config), ns)
        last_pod = time.perf_counter()
        for message in ("starting attempt 1", "attempt 1: pending"):
            status = {"phase": "Pending", "message": message, "attempts": 1}
            await kube.patch(AGENTS, f"raw-{i}", {"status": status}, ns, sub="status")
        for reason in ("AgentCreated", "PodCreated"):
            await post_event(kube, created, "Normal", reason, reason)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return last_pod - started


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU the processes have used so far."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def operator_session(kube: AsyncKube, ns: str, n: int) -> float:
    session = {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "big"},
        "spec": {
            "agents": [
                {
                    "name": f"a{i}",
                    "capabilities": ["llm:complete"],
                    "tasks": [{"name": "t", "description": "x"}],
                }
                for i in range(n)
            ]
        },
    }
    seen: set[str] = set()

    async def all_pods() -> None:
        async for event in kube.list_and_watch(PODS, ns):
            seen.add(event["object"]["metadata"]["name"])
            if len(seen) >= n:
                return

    watcher = asyncio.create_task(all_pods())
    await asyncio.sleep(0.5)  # the watch is open before the clock starts
    started = time.perf_counter()
    await kube.create(SESSIONS, session, ns)
    await watcher
    return time.perf_counter() - started


async def track(kube: AsyncKube, ns: str, n: int, pid: int) -> tuple[float, float, float]:
    """n suspended standalone Agents, all reconciled; operator RSS before and after."""
    before = rss_mb(pid)
    sem = asyncio.Semaphore(32)

    async def make(i: int) -> None:
        async with sem:
            await kube.create(
                AGENTS,
                {
                    "apiVersion": "toka.dev/v1alpha1",
                    "kind": "Agent",
                    "metadata": {"name": f"t-{i}"},
                    "spec": {"suspend": True, "tasks": [{"name": "t", "description": "x"}]},
                },
                ns,
            )

    reconciled: set[str] = set()
    all_reconciled = asyncio.Event()

    async def watch() -> None:
        # A watch, not repeated lists: 10,000 Agents listed every second would load
        # the API server that both sides share.
        async for event in kube.list_and_watch(AGENTS, ns):
            obj = event["object"]
            if (obj.get("status") or {}).get("phase") == "Suspended":
                reconciled.add(obj["metadata"]["name"])
                if len(reconciled) >= n:
                    all_reconciled.set()
                    return

    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    await asyncio.gather(*(make(i) for i in range(n)))
    await all_reconciled.wait()
    watcher.cancel()
    elapsed = time.perf_counter() - started
    await asyncio.sleep(2)
    return before, rss_mb(pid), elapsed


async def main(agents: int, tracked: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="toka-bench-"))
    cp = ControlPlane(work / "cp").start()
    log = (work / "operator.log").open("ab")
    op: subprocess.Popen[bytes] | None = None
    try:
        async with AsyncKube(load_kubeconfig(cp.admin_kubeconfig)) as kube:
            await ensure_crds(kube, all_crds().values())
            for ns in ("raw", "every", "op", "track"):
                await namespace(kube, ns)
            api = [p.pid for name, p in cp.procs.items() if name in ("etcd", "kube-apiserver")]
            me = [os.getpid()]
            api0, me0 = cpu_seconds(api), cpu_seconds(me)
            baseline = await raw_client(kube, "raw", agents)
            cpu_raw = (cpu_seconds(api) - api0, cpu_seconds(me) - me0)
            api0, me0 = cpu_seconds(api), cpu_seconds(me)
            every = await raw_every_write(kube, "every", agents)
            cpu_every = (cpu_seconds(api) - api0, cpu_seconds(me) - me0)
            op = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "toka.cli",
                    "operator",
                    "--no-liveness",
                    "-n",
                    "op",
                    "-n",
                    "track",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "KUBECONFIG": str(cp.admin_kubeconfig)},
            )
            await asyncio.sleep(3)  # the operator's start-up is not what is measured
            api0, op0 = cpu_seconds(api), cpu_seconds([op.pid])
            measured = await operator_session(kube, "op", agents)
            cpu_op = (cpu_seconds(api) - api0, cpu_seconds([op.pid]) - op0)
            print(
                f"{agents} agents → pods: raw client {baseline:.2f} s (SA, Role, Binding, Pod), "
                f"operator {measured:.2f} s from session create (Agents too)"
            )
            print(f"ratio operator/raw {measured / baseline:.2f}x (target ≤ 1.5x)")
            print(
                f"raw client making every write the operator makes {every:.2f} s; "
                f"operator/that {measured / every:.2f}x (the control loop's own cost)"
            )
            for what, (api_cpu, client_cpu) in (
                ("raw client", cpu_raw),
                ("raw, every write", cpu_every),
                ("operator", cpu_op),
            ):
                print(
                    f"  CPU, {what}: API server + etcd {api_cpu:.2f} s, "
                    f"client or operator {client_cpu:.2f} s"
                )
            before, after, elapsed = await track(kube, "track", tracked, op.pid)
            print(
                f"operator RSS: {before:.0f} MB idle, {after:.0f} MB tracking {tracked} Agents "
                f"(all {tracked} reconciled in {elapsed:.1f} s from the first create; "
                f"target ≤ 400 MB at 10,000)"
            )
    finally:
        if op is not None:
            op.terminate()
            op.wait(20)
        cp.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--tracked", type=int, default=10000)
    parser.add_argument("--smoke", action="store_true", help="10 agents, 50 tracked")
    args = parser.parse_args()
    asyncio.run(main(10, 50) if args.smoke else main(args.agents, args.tracked))
