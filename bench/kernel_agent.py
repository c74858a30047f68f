"""Kernel and agent runtime: message latency, capability checks, emit → visible, RSS.

Every figure has its baseline measured in the same run, on the same machine:

- agent → kernel message (POST /v1/messages) p50/p99, versus the same HTTP
  client against a bare aiohttp handler that only answers `{"ok": true}`;
- a capability check (`Grant.permits` on a workspace path), versus a
  precompiled `re.fullmatch` of the equivalent pattern;
- emit → visible on the Agent (the reporter's merge patch, seen by a watch),
  versus one raw status PATCH seen by the same watch;
- the RSS of the kernel, tools and agent processes of a real agent pod on the
  dev node (no baseline: absolute figures against the targets in
  docs/architecture.md, Measured targets).

    python -m bench.kernel_agent [--messages N] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.operator_scale import namespace, rss_mb
from toka.api.admission import admission_manifests
from toka.api.capabilities import Grant
from toka.api.crdgen import all_crds
from toka.api.models import AgentSpec
from toka.devcluster.controlplane import ControlPlane
from toka.kernel.policy import Policy
from toka.kernel.reporter import Reporter
from toka.kernel.server import Kernel
from toka.kube.client import AGENTS, CONFIGMAPS, PODS, AsyncKube
from toka.kube.crds import apply_cluster_manifests, ensure_crds
from toka.kube.kubeconfig import load_kubeconfig
from toka.llm.sanitize import Redactor

JSON = dict[str, Any]


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def agent(name: str, **spec: Any) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {"capabilities": ["llm:complete"], "tasks": [{"name": "t", "description": "x"}]}
        | spec,
    }


async def message_latency(kube: AsyncKube, ns: str, n: int) -> None:
    await kube.create(AGENTS, agent("msg"), ns)
    reporter = Reporter(kube, ns, "msg")
    reporter.adopt(None, ["t"])
    writer = asyncio.create_task(reporter.flush_loop())
    kernel = Kernel(
        agent="msg",
        spec=AgentSpec(capabilities=["llm:complete"], tasks=[{"name": "t", "description": "x"}]),
        policy=Policy(
            Grant.from_strings(["llm:complete"]),
            agent="msg",
            redact=Redactor(),
            out=io.StringIO(),  # the audit line is written, as on stdout
        ),
        reporter=reporter,
        gateway=None,
        gateway_error="not needed",
    )
    kernel.ready = True

    async def bare(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    baseline_app = web.Application()
    baseline_app.router.add_post("/v1/messages", bare)
    body = {"type": "EmitObservation", "message": "compiling module 3 of 7"}
    servers = {
        "baseline": TestServer(baseline_app, host="127.0.0.1"),
        "kernel": TestServer(kernel.app(), host="127.0.0.1"),
    }
    results: dict[str, list[float]] = {label: [] for label in servers}
    clients = {}
    for label, server in servers.items():
        await server.start_server()
        clients[label] = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}")
    # Interleaved, so that both see the same machine at the same moments.
    for i in range(n + 20):
        for label, client in clients.items():
            t0 = time.perf_counter()
            resp = await client.post("/v1/messages", json=body)
            if i >= 20:  # warm-up
                results[label].append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, resp.text
    for label, client in clients.items():
        await client.aclose()
        await servers[label].close()
    await reporter.close(writer)
    k, b = results["kernel"], results["baseline"]
    print(
        f"agent → kernel message: p50 {pct(k, 0.5):.2f} ms, p99 {pct(k, 0.99):.2f} ms; "
        f"bare aiohttp p50 {pct(b, 0.5):.2f} ms, p99 {pct(b, 0.99):.2f} ms; "
        f"ratio p50 {pct(k, 0.5) / pct(b, 0.5):.2f}x (target p50 < 1 ms)"
    )


def capability_check(n: int) -> None:
    grant = Grant.from_strings(
        [
            "llm:complete",
            "fs:read:src/**",
            "fs:write:notes/*.md",
            "shell:exec:git",
            "net:http:*.example.com",
        ]
    )
    path = "src/pkg/module/deep/file.py"
    assert grant.permits("fs", "read", path) is not None
    pattern = re.compile(r"src/(?:[^/]+/)*[^/]+")
    ours = min(timeit.repeat(lambda: grant.permits("fs", "read", path), number=n, repeat=5))
    base = min(timeit.repeat(lambda: pattern.fullmatch(path), number=n, repeat=5))
    print(
        f"capability check: {ours / n * 1e9:.0f} ns (Grant.permits, 5 grants); "
        f"baseline re.fullmatch {base / n * 1e9:.0f} ns; ratio {ours / base:.2f}x "
        "(target < 20 µs)"
    )


async def seen_within(kube: AsyncKube, ns: str, name: str, predicate: Any, act: Any) -> float:
    """Milliseconds from `act()` to a watch event for which `predicate` holds."""
    current = await kube.get(AGENTS, name, ns)
    rv = current["metadata"]["resourceVersion"]
    t0 = time.perf_counter()
    await act()
    async for event in kube.watch(
        AGENTS, ns, resource_version=rv, field_selector=f"metadata.name={name}", timeout_seconds=30
    ):
        if event["type"] != "BOOKMARK" and predicate(event["object"]):
            return (time.perf_counter() - t0) * 1000
    raise TimeoutError(f"{name}: not seen")


async def emit_to_visible(kube: AsyncKube, ns: str, n: int) -> None:
    await kube.create(AGENTS, agent("emit"), ns)
    await kube.create(AGENTS, agent("raw"), ns)
    reporter = Reporter(kube, ns, "emit")
    reporter.adopt(None, ["t"])
    writer = asyncio.create_task(reporter.flush_loop())
    await asyncio.sleep(1.5)
    ours, raw = [], []
    for i in range(n):
        text = f"observation {i}"

        async def emit(text: str = text) -> None:
            reporter.observe(text)

        def shows(obj: JSON, text: str = text) -> bool:
            run = (obj.get("status") or {}).get("run") or {}
            return (run.get("lastObservation") or {}).get("message") == text

        async def patch(text: str = text) -> None:
            await kube.patch(
                AGENTS,
                "raw",
                {
                    "status": {
                        "run": {
                            "lastObservation": {"time": "2026-11-25T00:00:00Z", "message": text}
                        }
                    }
                },
                ns,
                sub="status",
            )

        ours.append(await seen_within(kube, ns, "emit", shows, emit))
        raw.append(await seen_within(kube, ns, "raw", shows, patch))
        await asyncio.sleep(1.1)  # a quiet second: each emit is a leading edge
    await reporter.close(writer)
    o, r = statistics.median(ours), statistics.median(raw)
    print(
        f"emit → visible on the Agent: p50 {o:.1f} ms (reporter), raw status PATCH {r:.1f} ms; "
        f"ratio {o / r:.2f}x (target ≤ 1.5x of a raw PATCH for a leading-edge emit)"
    )


async def writes_under_load(kube: AsyncKube, ns: str, seconds: float) -> None:
    """100 emits/s with task transitions among them: writes per second, transitions kept."""
    await kube.create(
        AGENTS, agent("busy", tasks=[{"name": f"t{i}", "description": "x"} for i in range(8)]), ns
    )
    reporter = Reporter(kube, ns, "busy")
    reporter.adopt(None, [f"t{i}" for i in range(8)])
    writer = asyncio.create_task(reporter.flush_loop())
    started = time.perf_counter()
    emits, task = 0, 0
    while time.perf_counter() - started < seconds:
        reporter.observe(f"step {emits}")
        emits += 1
        if emits % 100 == 50 and task < 8:  # a transition every second
            reporter.task_started(f"t{task}")
            reporter.task_completed(f"t{task}", f"t{task} done")
            task += 1
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    await reporter.close(writer)
    final = (await kube.get(AGENTS, "busy", ns))["status"]["run"]["tasks"]
    kept = sum(1 for t in final if t["state"] == "Succeeded")
    transitions = reporter.writes - 1  # the leading-edge write is not steady state
    print(
        f"status writes at {emits / elapsed:.0f} emits/s: {reporter.writes} writes in "
        f"{elapsed:.1f} s ({transitions / elapsed:.2f}/s; baseline: one write per emit would be "
        f"{emits / elapsed:.0f}/s), {kept}/{task} task transitions on the Agent "
        "(target ≤ 1/s steady plus transitions, none lost)"
    )


async def pod_rss(kube: AsyncKube, cp: ControlPlane, work: Path, ns: str) -> None:
    recording = {
        "version": 1,
        "agent": "rss",
        "turns": [
            {
                "task": "t",
                "turn": 1,
                "response": {
                    "content": "",
                    "tool_calls": [
                        {"id": "c1", "name": "shell_exec", "arguments": {"argv": ["sleep", "6"]}}
                    ],
                },
                "usage": {"input_tokens": 10, "output_tokens": 2},
            },
            {
                "task": "t",
                "turn": 2,
                "response": {
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "c2",
                            "name": "finish_task",
                            "arguments": {"status": "succeeded", "summary": "slept"},
                        }
                    ],
                },
                "usage": {"input_tokens": 10, "output_tokens": 2},
            },
        ],
    }
    await kube.create(
        CONFIGMAPS, {"metadata": {"name": "rec"}, "data": {"rss.json": json.dumps(recording)}}, ns
    )
    logs = (work / "processes.log").open("ab")
    env = {**os.environ, "KUBECONFIG": str(cp.admin_kubeconfig)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "toka.cli", "node-agent", "--root", str(work / "node")],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=env,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "toka.cli", "operator", "--no-liveness", "-n", ns],
            stdout=logs,
            stderr=subprocess.STDOUT,
            env=env,
        ),
    ]
    try:
        await kube.create(
            AGENTS,
            agent(
                "rss",
                capabilities=["llm:complete", "shell:exec:sleep"],
                llm={
                    "provider": "replay",
                    "replay": {"configMapRef": {"name": "rec", "key": "rss.json"}},
                },
            ),
            ns,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                pod = await kube.get(PODS, "rss-1", ns)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            statuses = (pod.get("status") or {}).get("initContainerStatuses", []) + (
                pod.get("status") or {}
            ).get("containerStatuses", [])
            running = {c["name"]: c for c in statuses if "running" in (c.get("state") or {})}
            if {"kernel", "tools", "agent"} <= set(running):
                await asyncio.sleep(3)  # past start-up, inside the task
                figures = []
                for name in ("kernel", "tools", "agent"):
                    pid = int(running[name]["containerID"].rsplit("/", 1)[1])
                    figures.append(f"{name} {rss_mb(pid):.0f} MB")
                print(
                    "RSS of a running agent pod: "
                    + ", ".join(figures)
                    + " (targets: kernel ≤ 50 MB, tools ≤ 15 MB, agent ≤ 50 MB)"
                )
                return
            await asyncio.sleep(0.3)
        print("RSS: the agent pod did not start within 90 s (see processes.log)")
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)


async def main(messages: int, emits: int) -> None:
    capability_check(20_000)
    work = Path(tempfile.mkdtemp(prefix="toka-bench-"))
    cp = ControlPlane(work / "cp").start()
    try:
        async with AsyncKube(load_kubeconfig(cp.admin_kubeconfig)) as kube:
            await ensure_crds(kube, all_crds().values())
            await apply_cluster_manifests(kube, admission_manifests())
            await namespace(kube, "bench")
            await message_latency(kube, "bench", messages)
            await emit_to_visible(kube, "bench", emits)
            await writes_under_load(kube, "bench", 3 if emits <= 3 else 10)
            await pod_rss(kube, cp, work, "bench")
    finally:
        cp.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--emits", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="a quick run for CI")
    args = parser.parse_args()
    asyncio.run(main(200, 3) if args.smoke else main(args.messages, args.emits))
