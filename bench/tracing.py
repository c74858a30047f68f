"""What tracing costs the kernel: message and LLM-call latency, and RSS, on versus off.

Two real kernel processes (`toka.kernel.main.serve`) serve two identical Agents
on a real control plane; they differ only in `OTEL_EXPORTER_OTLP_ENDPOINT`.
One exports every span over OTLP/HTTP to a real Jaeger on loopback, the other
has tracing off: the baseline, measured in the same run. Requests alternate
between the two so both see the same machine at the same moments:

- agent → kernel message (POST /v1/messages, EmitObservation) p50/p99;
- an LLM call through the kernel (POST /v1/llm/complete) to one local
  OpenAI-format server: with tracing on, a chat span and a policy span each;

then each kernel's RSS, after the load. Target (docs/architecture.md, Measured
targets): tracing on ≤ 1.1× off for the message p50 and the kernel's RSS.

    python -m bench.tracing [--calls N] [--smoke]
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

import httpx
from tests.jaeger import running_jaeger
from tests.llm_servers import ProviderServer

from bench.operator_scale import namespace, rss_mb
from toka.api.admission import admission_manifests
from toka.api.crdgen import all_crds
from toka.devcluster.controlplane import ControlPlane, die_with_parent, free_port
from toka.kube.client import AGENTS, AsyncKube
from toka.kube.crds import apply_cluster_manifests, ensure_crds
from toka.kube.kubeconfig import load_kubeconfig
from toka.tracing import trace_id_hex

JSON = dict[str, Any]
KEY = "sk-bench-0123456789abcdef"
KERNEL = (
    "import asyncio, sys\n"
    "from toka.kernel.main import serve\n"
    "from toka.kube.kubeconfig import load_kubeconfig\n"
    "from toka.logs import configure\n"
    "configure()\n"
    "asyncio.run(serve(load_kubeconfig(sys.argv[1])))\n"
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def agent(name: str, base_url: str) -> JSON:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "capabilities": ["llm:complete"],
            "tasks": [{"name": "t", "description": "x"}],
            "llm": {"provider": "openai-compatible", "baseURL": base_url, "model": "m"},
        },
    }


def start_kernel(
    kubeconfig: Path, ns: str, name: str, port: int, log: Path, tracing: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "LLM_", "TOKA_", "KUBERNETES_"))
    }
    env |= {
        "TOKA_AGENT_NAME": name,
        "TOKA_NAMESPACE": ns,
        "TOKA_KERNEL_ADDR": f"127.0.0.1:{port}",
        "OPENAI_API_KEY": KEY,
        "LLM_RATE_LIMIT": "10000000",
        **tracing,
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", KERNEL, str(kubeconfig)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the kernel exited: {tail(log)}")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the kernel is not ready: {tail(log)}")


async def alternate(
    clients: dict[str, httpx.AsyncClient], path: str, body: JSON, n: int, warmup: int = 20
) -> dict[str, list[float]]:
    """Milliseconds per request, the kernels taking turns request by request."""
    results: dict[str, list[float]] = {label: [] for label in clients}
    for i in range(n + warmup):
        for label, client in clients.items():
            t0 = time.perf_counter()
            resp = await client.post(path, json=body)
            if i >= warmup:
                results[label].append((time.perf_counter() - t0) * 1000)
            assert resp.status_code == 200, resp.text
    return results


def report(what: str, results: dict[str, list[float]]) -> None:
    on, off = results["on"], results["off"]
    print(
        f"{what}: tracing on p50 {pct(on, 0.5):.2f} ms, p99 {pct(on, 0.99):.2f} ms; "
        f"off p50 {pct(off, 0.5):.2f} ms, p99 {pct(off, 0.99):.2f} ms; "
        f"ratio p50 {pct(on, 0.5) / pct(off, 0.5):.2f}x"
    )


async def measure(cp: ControlPlane, work: Path, calls: int, messages: int) -> None:
    server = await ProviderServer("openai", KEY).start()
    with running_jaeger(work) as jaeger:
        async with AsyncKube(load_kubeconfig(cp.admin_kubeconfig)) as kube:
            await ensure_crds(kube, all_crds().values())
            await apply_cluster_manifests(kube, admission_manifests())
            await namespace(kube, "bench")
            uids = {}
            for label in ("on", "off"):
                created = await kube.create(AGENTS, agent(f"traced-{label}", server.url), "bench")
                uids[label] = created["metadata"]["uid"]
        tracing = {"on": jaeger.env(), "off": {}}
        procs, clients = {}, {}
        try:
            for label in ("on", "off"):
                port = free_port()
                log = work / f"kernel-{label}.log"
                procs[label] = start_kernel(
                    cp.admin_kubeconfig, "bench", f"traced-{label}", port, log, tracing[label]
                )
                clients[label] = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
                await ready(clients[label], procs[label], log)
            message = {"type": "EmitObservation", "message": "compiling module 3 of 7"}
            report(
                "agent → kernel message",
                await alternate(clients, "/v1/messages", message, messages),
            )
            llm = {
                "messages": [
                    {"role": "system", "content": "You are an agent."},
                    {"role": "user", "content": "Fix the build. " * 20},
                ],
                "task": "t",
                "turn": 1,
            }
            report(
                "LLM call through the kernel",
                await alternate(clients, "/v1/llm/complete", llm, calls),
            )
            await asyncio.sleep(1.0)  # the last batch exported, memory settled
            rss = {label: rss_mb(p.pid) for label, p in procs.items()}
            print(
                f"kernel RSS after the load: tracing on {rss['on']:.1f} MB, "
                f"off {rss['off']:.1f} MB; ratio {rss['on'] / rss['off']:.2f}x "
                "(target ≤ 1.1x; kernel ≤ 50 MB)"
            )
        finally:
            for client in clients.values():
                await client.aclose()
            for proc in procs.values():
                proc.terminate()
                proc.wait(30)
            await server.stop()
        # The kernel flushed at exit: its spans are in Jaeger, in the Agent's trace.
        trace = await asyncio.to_thread(jaeger.trace, trace_id_hex(uids["on"]))
        chats = sum(1 for s in (trace or {}).get("spans", []) if s["operationName"] == "chat m")
        print(f"spans received by Jaeger: {chats} chat spans of {calls + 20} LLM calls")


async def main(calls: int, messages: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="toka-bench-tracing-"))
    cp = ControlPlane(work / "cp").start()
    try:
        await measure(cp, work, calls, messages)
    finally:
        cp.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="a quick run for CI")
    args = parser.parse_args()
    asyncio.run(main(100, 200) if args.smoke else main(args.calls, args.messages))
