"""A real node leaves the machine as it found it: `stop()` undoes what `start()` did."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from toka.devcluster import netns
from toka.devcluster.binaries import ensure_binaries, ensure_node_binaries
from toka.devcluster.image import ensure_images
from toka.devcluster.node import KUBELET_SYSCTLS, RealCluster, cgroup_mounts, node_images

pytestmark = pytest.mark.controlplane
REPO = Path(__file__).resolve().parents[2]


def mounts_under(*roots: Path) -> set[str]:
    tops = [str(r) for r in roots]
    return {
        target
        for target in (
            line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        )
        if any(target == t or target.startswith(t + "/") for t in tops)
    }


def processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def sysctls() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text() for key in KUBELET_SYSCTLS}


def test_a_stopped_node_leaves_no_namespace_mount_cgroup_or_kernel_setting_behind(
    tmp_path: Path,
) -> None:
    images = ensure_images(REPO, export=True)
    crictl = ensure_node_binaries()
    name = f"toka-life-{os.getpid()}"
    pod_netns, settings = set(netns.NETNS_DIR.iterdir()), sysctls()
    cluster = RealCluster(
        tmp_path / "node",
        node_images(images),
        netns_name=name,
        crictl=crictl,
        binaries=ensure_binaries(),
        network_policy=False,
    )
    cluster.start()
    try:
        assert cluster.node is not None
        node = cluster.node
        kubectl = cluster.cp.binaries.kubectl
        assert kubectl is not None
        env = {**os.environ, "KUBECONFIG": str(cluster.cp.admin_kubeconfig)}
        # A pod, so there is a sandbox, a pod netns, volumes and a shim to clean up.
        run = [str(kubectl), "run", "p", f"--image={images.pause}", "--restart=Never"]
        subprocess.run([*run, "--image-pull-policy=Never"], env=env, check=True)
        wait = [str(kubectl), "wait", "--for=condition=Ready", "pod/p", "--timeout=120s"]
        subprocess.run(wait, env=env, check=True)
        roots = (tmp_path, node.kubelet_root, node.run_dir)
        cgroups = [m / name for m in cgroup_mounts()]
        assert netns.netns_path(name).exists()
        assert any(c.is_dir() for c in cgroups)
        assert mounts_under(*roots)  # the kubelet's root and the pod's volumes, at least
        assert processes_naming(str(node.socket))  # containerd and the pod's shim
    finally:
        cluster.stop()
    assert not netns.netns_path(name).exists()
    assert set(netns.NETNS_DIR.iterdir()) <= pod_netns  # the pod's netns went with it
    assert mounts_under(*roots) == set()
    assert not node.kubelet_root.exists()
    assert not node.run_dir.exists()
    assert not any(c.exists() for c in cgroups)
    assert processes_naming(str(node.socket)) == []
    assert sysctls() == settings
