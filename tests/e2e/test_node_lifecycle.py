"""A real node leaves the machine as it found it: `stop()` undoes what `start()` did."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from toka.devcluster import netns
from toka.devcluster.binaries import ensure_binaries, ensure_node_binaries
from toka.devcluster.image import ensure_images
from toka.devcluster.node import KUBELET_SYSCTLS, RealCluster, cgroup_mounts, node_images

pytestmark = pytest.mark.controlplane
REPO = Path(__file__).resolve().parents[2]


def mount_targets() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def sysctls() -> dict[str, str]:
    return {key: Path("/proc/sys", key).read_text() for key in KUBELET_SYSCTLS}


def test_a_stopped_node_leaves_no_namespace_mount_cgroup_or_kernel_setting_behind(
    tmp_path: Path,
) -> None:
    images = ensure_images(REPO, export=True)
    crictl = ensure_node_binaries()
    name = f"toka-life-{os.getpid()}"
    mounts, settings = mount_targets(), sysctls()
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
        kubelet_root = cluster.node.kubelet_root
        cgroups = [m / name for m in cgroup_mounts()]
        assert netns.netns_path(name).exists()
        assert any(c.is_dir() for c in cgroups)
        assert mount_targets() - mounts  # the kubelet mounted its root, at least
    finally:
        cluster.stop()
    assert not netns.netns_path(name).exists()
    assert mount_targets() - mounts == set()
    assert not kubelet_root.exists()
    assert not any(c.exists() for c in cgroups)
    assert sysctls() == settings
    assert not Path("/run/toka", name).exists()
