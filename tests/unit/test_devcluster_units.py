"""Pure pieces of the dev cluster: the Go wrapper module, env expansion, mount paths."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from toka.devcluster.binaries import wrapper_gomod
from toka.devcluster.nodeagent import (
    NodeAgent,
    expand,
    is_toka_image,
    pod_loopback,
    rewrite_kernel_addr,
)
from toka.devcluster.sandbox import _inside

PINNED = """module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
	k8s.io/api v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_the_wrapper_module_replaces_each_staging_module_with_its_published_twin() -> None:
    gomod = wrapper_gomod(PINNED, "1.35.4")
    assert "require k8s.io/kubernetes v1.35.4" in gomod
    assert "\tk8s.io/api => k8s.io/api v0.35.4" in gomod
    assert "\tk8s.io/client-go => k8s.io/client-go v0.35.4" in gomod
    assert "go 1.25.0" in gomod
    assert "godebug default=go1.25" in gomod
    assert "./staging" not in gomod


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("$(A)-$(B)", {"A": "1", "B": "2"}, "1-2"),
        ("$(MISSING)", {}, "$(MISSING)"),
        ("$$(A)", {"A": "1"}, "$(A)"),
        ("$$$(A)", {"A": "1"}, "$1"),
        ("plain $A", {"A": "1"}, "plain $A"),
    ],
)
def test_var_expansion_follows_kubernetes_rules(
    text: str, env: dict[str, str], expected: str
) -> None:
    assert expand(text, env) == expected


@pytest.mark.parametrize(
    ("value", "ip", "expected"),
    [
        ("127.0.0.1:8181", "127.9.0.3", "127.9.0.3:8181"),
        ("localhost:9", "127.9.0.4", "127.9.0.4:9"),
    ],
)
def test_only_the_host_of_the_kernel_address_is_rewritten(
    value: str, ip: str, expected: str
) -> None:
    assert rewrite_kernel_addr(value, ip) == expected


def test_a_pods_loopback_is_an_address_of_its_own_that_no_pod_has_as_its_ip(
    tmp_path: Path,
) -> None:
    # Probes go to the pod IP: were the kernel's loopback address the same, a probe the
    # kubelet could never make succeed would succeed on the dev node.
    kube = SimpleNamespace(config=SimpleNamespace(server="https://127.0.0.1:6443"))
    agent = NodeAgent(kube, tmp_path)  # type: ignore[arg-type]
    ips = [agent.allocate_ip() for _ in range(1000)]
    addrs = ips + [pod_loopback(ip) for ip in ips]
    assert len(set(addrs)) == len(addrs)
    for addr in addrs:
        octets = [int(o) for o in addr.split(".")]
        assert octets[0] == 127
        assert all(0 <= o <= 255 for o in octets), addr
        assert octets[3] not in (0, 255), addr


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("ghcr.io/toka-dev/toka:dev", True),
        ("ghcr.io/toka-dev/toka@sha256:ab", True),
        ("toka:latest", True),
        ("ghcr.io/toka-dev/toka-tools-rust:1", False),
        ("busybox", False),
    ],
)
def test_only_tokas_image_runs_on_the_dev_node(image: str, ok: bool) -> None:
    assert is_toka_image(image, ("ghcr.io/toka-dev/toka", "toka")) is ok


def test_mount_targets_resolve_symlinks_inside_the_container_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "lib").symlink_to("usr/lib")
    assert _inside(str(root), "/var/run/secrets/x") == str(root / "run" / "secrets" / "x")
    assert _inside(str(root), "/lib/python") == str(root / "usr" / "lib" / "python")
    assert _inside(str(root), "/../../etc") == str(root / "etc")
