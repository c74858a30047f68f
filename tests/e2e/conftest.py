"""The e2e tier: a real node (containerd, runc, kubelet, kube-proxy, a NetworkPolicy
engine) in a network namespace of its own, the image built from the Dockerfile, the
chart installed with helm, and the operator running in the cluster as the chart's
Deployment under the chart's ServiceAccount — what a user's cluster does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from toka.devcluster.binaries import ensure_binaries, ensure_helm, ensure_node_binaries
from toka.devcluster.image import Images, ensure_images
from toka.devcluster.netpol import ensure_kube_router
from toka.devcluster.node import RealCluster, node_images
from toka.kube.client import NAMESPACES, ApiError, AsyncKube
from toka.kube.kubeconfig import load_kubeconfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "toka"
RELEASE = "toka"
SYSTEM_NS = "toka-system"
# Test servers for the agent NetworkPolicy: the chart's values allow the first only.
SERVERS_NS = "e2e-servers"
ALLOWED, DENIED = "server-a", "server-b"
SERVER_PORT = 8080


@dataclass
class Cluster:
    real: RealCluster
    images: Images
    helm_bin: Path

    @property
    def kubeconfig(self) -> Path:
        return self.real.cp.admin_kubeconfig

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, input_: str | None = None
    ) -> str:
        kubectl = self.real.cp.binaries.kubectl
        assert kubectl is not None
        proc = subprocess.run(
            [str(kubectl), *args],
            env=self.env(),
            input=input_,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}{proc.stdout}")
        return proc.stdout + (proc.stderr if not check else "")

    def helm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm_bin), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def install_args(self) -> list[str]:
        repository, _, tag = self.images.toka.rpartition(":")
        defaults = yaml.safe_load((CHART / "values.yaml").read_text())
        allowed = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": SERVERS_NS}},
            "podSelector": {"matchLabels": {"app": ALLOWED}},
            "ports": [SERVER_PORT],
        }
        values = self.real.workdir / "values.yaml"
        egress = [*defaults["networkPolicy"]["egress"], allowed]
        values.write_text(yaml.safe_dump({"networkPolicy": {"egress": egress}}))
        return [
            "-f",
            str(values),
            RELEASE,
            str(CHART),
            "-n",
            SYSTEM_NS,
            "--set",
            f"image.repository={repository}",
            "--set",
            f"image.tag={tag}",
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--wait",
            "--timeout",
            "4m",
        ]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The real node, with the image from the Dockerfile imported into its containerd."""
    images = ensure_images(REPO, export=True)
    crictl = ensure_node_binaries()
    ensure_kube_router()
    real = RealCluster(
        tmp_path_factory.mktemp("realnode"),
        node_images(images),
        netns_name=f"toka-e2e-{os.getpid()}",
        crictl=crictl,
        binaries=ensure_binaries(),
        network_policy=True,
    )
    real.start()
    try:
        yield Cluster(real, images, ensure_helm())
    finally:
        real.stop()


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Cluster:
    """The chart, installed with helm: CRDs, admission policies, RBAC, the operator."""
    proc = cluster.helm("install", *cluster.install_args(), "--create-namespace")
    assert proc.returncode == 0, (
        proc.stderr
        + cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False)
        + cluster.kubectl(
            "logs",
            "-n",
            SYSTEM_NS,
            "-l",
            "app.kubernetes.io/component=operator",
            "--previous",
            "--tail=40",
            check=False,
        )
    )
    return cluster


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[AsyncKube]:
    async with AsyncKube(load_kubeconfig(cluster.kubeconfig)) as client:
        yield client


@pytest.fixture
async def namespace(kube: AsyncKube, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    name = "e2e-" + request.node.name.removeprefix("test_")[:40].replace("_", "-").rstrip("-")
    try:
        await kube.create(NAMESPACES, {"metadata": {"name": name}})
    except ApiError as err:
        if not err.conflict:
            raise
    yield name
    try:
        await kube.delete(NAMESPACES, name)
    except ApiError as err:
        if not err.not_found:
            raise
