"""What kubeconfig credentials cost: a request with an exec plugin's token, and the kernel's RSS.

Requests: the same GET, as the same ServiceAccount with the same token, once
through an exec-plugin kubeconfig (the library's credential, asked in a
thread on each request so a plugin run never blocks the event loop) and once
with that token given directly (the path the in-cluster token file takes);
the ratio is the credential's per-request cost. RSS: a process importing the
kernel, and the same process importing the `kubernetes` library as well,
which the kernel does not (an import-linter contract): what staying lean saves.

    python -m bench.kube_credentials [--rounds N] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import CONFIGMAPS, ROLEBINDINGS, SERVICEACCOUNTS, ApiError, AsyncKube
from toka.kube.kubeconfig import load_kubeconfig

PLUGIN = Path(__file__).resolve().parent.parent / "tests" / "exec_plugin.py"
RSS = (
    "import sys, toka.kernel.main{extra}; "
    "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
)


async def p50_ms(kube: AsyncKube, rounds: int) -> float:
    await kube.get(CONFIGMAPS, "kube-root-ca.crt", "default")
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        await kube.get(CONFIGMAPS, "kube-root-ca.crt", "default")
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def exec_kubeconfig(cp: ControlPlane, work: Path) -> Path:
    assert cp.ca is not None
    admin = yaml.safe_load(cp.admin_kubeconfig.read_text())["users"][0]["user"]
    env = {
        "PLUGIN_SERVER": cp.server,
        "PLUGIN_CA": str(cp.ca.cert_path),
        "PLUGIN_CERT": admin["client-certificate"],
        "PLUGIN_KEY": admin["client-key"],
        "PLUGIN_NAMESPACE": "default",
        "PLUGIN_ACCOUNT": "bench",
        "PLUGIN_LOG": str(work / "plugin.log"),
    }
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "interactiveMode": "Never",
        }
    }
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": cp.server, "certificate-authority": env["PLUGIN_CA"]},
            }
        ],
        "users": [{"name": "bench", "user": user}],
        "contexts": [{"name": "bench", "context": {"cluster": "c", "user": "bench"}}],
        "current-context": "bench",
    }
    path = work / "exec.kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return path


async def allowed(kube: AsyncKube, timeout: float = 60) -> None:
    """Until the binding takes effect: `view` is an aggregated ClusterRole, empty until the
    controller-manager's aggregation controller has filled it on a fresh control plane."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await kube.get(CONFIGMAPS, "kube-root-ca.crt", "default")
            return
        except ApiError as err:
            if err.status not in (403, 404) or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def requests(cp: ControlPlane, work: Path, rounds: int) -> None:
    async with AsyncKube(load_kubeconfig(cp.admin_kubeconfig)) as admin:
        await admin.create(SERVICEACCOUNTS, {"metadata": {"name": "bench"}}, "default")
        await admin.create(
            ROLEBINDINGS,
            {
                "metadata": {"name": "bench"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "view",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "bench", "namespace": "default"}],
            },
            "default",
        )
    config = load_kubeconfig(exec_kubeconfig(cp, work))
    header = config.authorization() or ""
    direct = config.with_token(header.removeprefix("Bearer "))
    async with AsyncKube(config) as plugin, AsyncKube(direct) as token:
        await allowed(token)
        base = await p50_ms(token, rounds)
        cred = await p50_ms(plugin, rounds)
        base = min(base, await p50_ms(token, rounds))  # interleaved, best of two
    print(f"GET p50 over {rounds}: exec-plugin credential {cred:.3f} ms, token {base:.3f} ms,")
    print(f"  ratio {cred / base:.2f}× (the credential asked in a thread on each request)")


def kernel_rss() -> None:
    def rss(extra: str) -> int:
        code = RSS.format(extra=extra)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        return int(out.stdout.strip()) // 1024

    lean, heavy = rss(""), rss(", kubernetes.config")
    print(f"kernel imports: {lean} MB RSS; with the kubernetes library too: {heavy} MB")
    print(f"  (+{heavy - lean} MB the kernel does not pay; its target: ≤ 50 MB)")


def main(rounds: int) -> None:
    kernel_rss()
    work = Path(tempfile.mkdtemp(prefix="toka-bench-"))
    cp = ControlPlane(work / "cp").start()
    try:
        asyncio.run(requests(cp, work, rounds))
    finally:
        cp.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="a quick run for CI")
    args = parser.parse_args()
    main(100 if args.smoke else args.rounds)
