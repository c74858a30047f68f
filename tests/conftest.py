"""Fixtures: a real control plane per test session, a fresh namespace per test,
the dev node agent as a real process on demand, private control planes for
tests that stop the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from toka.api.admission import admission_manifests
from toka.api.crdgen import all_crds
from toka.devcluster.binaries import ensure_binaries
from toka.devcluster.controlplane import ControlPlane, die_with_parent
from toka.kube.client import NAMESPACES, NODES, SERVICEACCOUNTS, ApiError, AsyncKube
from toka.kube.crds import apply_cluster_manifests, ensure_crds
from toka.kube.kubeconfig import load_kubeconfig

REPO = Path(__file__).resolve().parent.parent


def install_toka(cp: ControlPlane) -> None:
    """Toka's CRDs and admission policies, as `toka dev up` installs them."""

    async def install() -> None:
        async with AsyncKube(load_kubeconfig(cp.admin_kubeconfig)) as kube:
            await ensure_crds(kube, all_crds().values())
            await apply_cluster_manifests(kube, admission_manifests())

    asyncio.run(install())


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver (RBAC) + kube-controller-manager, with Toka's CRDs installed."""
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), ensure_binaries())
    cp.start()
    try:
        install_toka(cp)
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def private_controlplane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of the test's own, for tests that stop or restart the API server."""
    cp = ControlPlane(tmp_path / "controlplane", ensure_binaries())
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.fixture
def kubeconfig(controlplane: ControlPlane) -> Path:
    return controlplane.admin_kubeconfig


@pytest.fixture
async def kube(kubeconfig: Path) -> AsyncIterator[AsyncKube]:
    async with AsyncKube(load_kubeconfig(kubeconfig)) as client:
        yield client


@pytest.fixture
async def namespace(kube: AsyncKube) -> AsyncIterator[str]:
    """A fresh namespace whose `default` ServiceAccount exists; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    await kube.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            await kube.get(SERVICEACCOUNTS, "default", name)
            break
        except ApiError as err:
            if not err.not_found or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
    yield name
    await kube.delete(NAMESPACES, name)


class NodeAgentProcess:
    def __init__(self, proc: subprocess.Popen[bytes], root: Path, log: Path):
        self.proc = proc
        self.root = root
        self.log = log

    def pod_dir(self, namespace: str, pod: str) -> Path:
        """Where the node keeps a pod: its volumes and container logs."""
        found = next((self.root / "pods").glob(f"{namespace}_{pod}_*"), None)
        if found is None:
            raise FileNotFoundError(f"no pod {namespace}/{pod} on the dev node")
        return found

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        for d in (self.root / "pods").glob(f"{namespace}_{pod}_*"):
            path = d / "logs" / f"{container}.log"
            if path.exists():
                return path.read_text(errors="replace")
        return ""


@contextlib.contextmanager
def running_node_agent(kubeconfig: Path, root: Path) -> Iterator[NodeAgentProcess]:
    """`toka node-agent` as its own process; Node toka-dev Ready before it is yielded."""
    log = root.parent / f"{root.name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "toka.cli",
                "node-agent",
                "--root",
                str(root),
                "--kubeconfig",
                str(kubeconfig),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=die_with_parent,  # no orphan if pytest itself is killed
        )

    async def wait_ready() -> None:
        async with AsyncKube(load_kubeconfig(kubeconfig)) as kube:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"node agent exited: {log.read_text()[-2000:]}")
                try:
                    node = await kube.get(NODES, "toka-dev")
                    if any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in (node.get("status") or {}).get("conditions", [])
                    ):
                        return
                except ApiError:
                    pass
                await asyncio.sleep(0.1)
            raise TimeoutError("node agent did not register Node toka-dev")

    try:
        asyncio.run(wait_ready())
        yield NodeAgentProcess(proc, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def node_agent(
    controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgentProcess]:
    """The dev node agent on the shared control plane."""
    with running_node_agent(controlplane.admin_kubeconfig, tmp_path_factory.mktemp("node")) as na:
        yield na


class OperatorProcess:
    """`toka operator` as a real process for one namespace; it can be killed and restarted."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, extra_args: Sequence[str] = ()):
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "toka.cli",
                    "operator",
                    "--no-liveness",
                    "--namespace",
                    self.namespace,
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"},
                preexec_fn=die_with_parent,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill would leave it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Remember each phase's outcome so fixtures can add their logs to a failure."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


@pytest.fixture
def operator(
    kubeconfig: Path,
    namespace: str,
    node_agent: NodeAgentProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    """The operator as its own process, watching this test's namespace only."""
    op = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()
        if failed(request):
            tail = op.log.read_text(errors="replace")[-6000:] if op.log.exists() else ""
            print(f"--- operator log (last 6000 characters)\n{tail}")
            node_log = node_agent.log.read_text(errors="replace")[-3000:]
            print(f"--- node agent log (last 3000 characters)\n{node_log}")
