"""The chart installed into a kind cluster, and a session run to Succeeded (pytest-kind-ng).

kind runs Kubernetes in Docker containers. Where no Docker engine answers
(as on Toka's CI machine), this test is skipped and says why; the chart is
still tested against the dev cluster in tests/integration/test_helm.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIND_VERSION = "v0.29.0"
IMAGE = "toka:e2e"


def docker_engine() -> str | None:
    """Why kind cannot run here, or None when it can."""
    if shutil.which("docker") is None:
        return "no docker command"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        return "docker info failed: " + (info.stderr.strip().splitlines() or ["no engine"])[-1]
    return None


WHY = docker_engine()
pytestmark = pytest.mark.skipif(
    WHY is not None,
    reason=f"kind needs a running Docker engine ({WHY}); "
    "the chart is installed with helm on the real dev node instead (tests/e2e/test_real_node.py)",
)


def kind_binary(cache: Path) -> Path:
    path = cache / f"kind-{KIND_VERSION}" / "kind"
    if not path.exists():
        subprocess.run(
            ["go", "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
            env={**os.environ, "GOBIN": str(path.parent)},
            check=True,
        )
    return path


def test_the_chart_installs_into_kind_and_the_demo_session_succeeds(tmp_path: Path) -> None:
    from pytest_kind import KindCluster

    from toka.console.demo import workspace_configmap
    from toka.devcluster.binaries import cache_dir, ensure_binaries, ensure_helm

    subprocess.run(["docker", "build", "-t", IMAGE, str(REPO)], check=True)
    kubectl = ensure_binaries().kubectl
    assert kubectl is not None
    cluster = KindCluster("toka-e2e", kind_path=kind_binary(cache_dir()), kubectl_path=kubectl)
    cluster.create()
    try:
        cluster.load_docker_image(IMAGE)
        env = {"KUBECONFIG": str(cluster.kubeconfig_path)}
        subprocess.run(
            [
                str(ensure_helm()),
                "install",
                "toka",
                str(REPO / "helm" / "toka"),
                "--namespace",
                "toka-system",
                "--create-namespace",
                "--wait",
                "--set",
                "image.repository=toka",
                "--set",
                "image.tag=e2e",
                "--set",
                "image.pullPolicy=Never",
                "--set",
                "watchNamespaces={toka-demo}",
            ],
            env={**os.environ, **env},
            check=True,
        )
        cluster.kubectl("create", "namespace", "toka-demo")
        recordings = sorted((REPO / "examples" / "demo" / "recordings").glob("*.json"))
        cluster.kubectl(
            "create",
            "configmap",
            "build-stabilization-recordings",
            "-n",
            "toka-demo",
            *[f"--from-file={p}" for p in recordings],
        )
        workspace = tmp_path / "workspace.json"
        configmap = workspace_configmap(REPO / "examples" / "demo" / "workspace")
        workspace.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", **configmap}))
        cluster.kubectl("apply", "-n", "toka-demo", "-f", str(workspace))
        cluster.kubectl(
            "apply",
            "-n",
            "toka-demo",
            "-f",
            str(REPO / "examples" / "sessions" / "build-stabilization.yaml"),
        )
        deadline = time.monotonic() + 900
        phase = None
        while time.monotonic() < deadline:
            out = cluster.kubectl(
                "get", "agentsession", "build-stabilization", "-n", "toka-demo", "-o", "json"
            )
            phase = (json.loads(out).get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(5)
        assert phase == "Succeeded"
    finally:
        cluster.delete()
