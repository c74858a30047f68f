"""The real node's configuration, as generated: what keeps its traffic on this machine
and what lets it run here (containerd without CAP_SYS_RESOURCE, a local pause image)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from toka.devcluster.node import (
    CLUSTER_ROUTES,
    NODE_IP,
    POD_CIDR,
    SERVICE_CIDR,
    cni_config,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
)


def test_pods_get_routes_to_the_clusters_own_ranges_only_and_no_masquerade() -> None:
    bridge = cni_config(Path("/x/ipam"))["plugins"][0]
    routes = [r["dst"] for r in bridge["ipam"]["routes"]]
    assert "0.0.0.0/0" not in routes
    assert bridge["ipMasq"] is False
    for route in routes:
        net = ipaddress.ip_network(route)
        assert net.is_private, route
    assert set(routes) == set(CLUSTER_ROUTES)
    assert ipaddress.ip_network(POD_CIDR).subnet_of(ipaddress.ip_network(CLUSTER_ROUTES[0]))
    assert SERVICE_CIDR in routes
    assert f"{NODE_IP}/32" in routes


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ("restrict_oom_score_adj = true", "root here lacks CAP_SYS_RESOURCE"),
        ('sandbox_image = "localhost/pause:x"', "no registry is reachable"),
        ('conf_dir = "/cni"', "the node's own CNI config"),
        ('address = "/run/toka/n/containerd.sock"', "a socket of its own per cluster"),
        ("SystemdCgroup = false", "no systemd"),
    ],
)
def test_containerd_is_configured_for_a_machine_without_registry_or_systemd(
    setting: str, why: str
) -> None:
    config = containerd_config(
        Path("/root"),
        Path("/state"),
        Path("/run/toka/n/containerd.sock"),
        Path("/cni"),
        "localhost/pause:x",
    )
    assert setting in config, why


def test_the_kubelet_serves_on_the_node_address_and_keeps_its_cgroups_under_its_own_root() -> None:
    config = kubelet_config(
        ca=Path("/ca"),
        cert=Path("/c"),
        key=Path("/k"),
        runtime=Path("/s"),
        resolv=Path("/r"),
        logs=Path("/l"),
        cgroup_root="/toka-abc",
    )
    assert config["address"] == NODE_IP
    assert config["cgroupRoot"] == "/toka-abc"
    assert config["readOnlyPort"] == 0
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["healthzBindAddress"] == "127.0.0.1"


def test_kube_proxy_leaves_the_hosts_conntrack_table_alone() -> None:
    config = kube_proxy_config(Path("/kc"))
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["mode"] == "iptables"
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
