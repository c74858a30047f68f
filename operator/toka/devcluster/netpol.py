"""NetworkPolicy enforced on the real node: kube-router's network-policy controller alone.

The node's CNI (a plain bridge) enforces nothing, so a NetworkPolicy on the
dev cluster would be accepted and ignored. kube-router run with only its
firewall on (no routing, no service proxy, no CNI) watches pods, namespaces
and NetworkPolicies and writes iptables chains (filter table: INPUT, FORWARD,
OUTPUT jump to KUBE-ROUTER-*) and ipsets that enforce them, beside
kube-proxy's rules and on the same iptables backend.

It runs like the kubelet: it joins only the node's network namespace, so its
chains and ipsets live there (ipsets are per network namespace: the host's
`ipset list` stays empty) and go with the namespace when it is deleted;
kube-router removes nothing when it stops.

Facts this relies on (kube-router v2.1.0, iptables 1.8.9 nf_tables, ipset 7):
- It needs the `ipset` program (Debian package `ipset`) and iptables,
  iptables-save and iptables-restore; the kernel needs ip_set (hash:ip,
  hash:net), xt_set, physdev, conntrack, addrtype, NFLOG, and the bridge
  calling iptables (`net.bridge.bridge-nf-call-iptables=1`, per namespace and
  1 in a new one), or traffic between two pods on the bridge meets no rule.
- Denied traffic is REJECTed: a client sees "connection refused" at once, not
  a timeout. A policy takes effect within about a second of being applied.
- Policies see addresses after kube-proxy's DNAT: a pod reaching the API server
  by its ClusterIP (10.0.0.1:443) is checked as going to the node's address on
  the server's port (10.88.0.1:6443), so an egress rule must name the
  `kubernetes` endpoints' address and port, not the Service's.
- Traffic from the node itself (the kubelet's probes) to any pod is always let
  in; Services' ClusterIPs are let through INPUT before any policy.

The Go module proxy serves only v2.1.0 of the module (2024-03), which has reported flaws:
acceptable for a throwaway test node with no route off the machine.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from toka.devcluster.binaries import (
    _TOOLS_GO,
    BinariesError,
    _build_lock,
    _executable,
    _go,
    _go_build,
    _install,
    _module_gomod,
    _say,
    cache_dir,
    pinned_replaces,
)
from toka.devcluster.controlplane import ControlPlane, ControlPlaneError
from toka.devcluster.netns import enter as enter_netns

KUBE_ROUTER_VERSION = "2.1.0"
KUBE_ROUTER_MODULE = "github.com/cloudnativelabs/kube-router/v2"
# The client certificate's user, bound to the ClusterRole below.
KUBE_ROUTER_USER = "toka-dev:kube-router"
RBAC_NAME = "toka-dev-kube-router"
# Programs kube-router runs, and the Debian packages that hold them.
PROGRAMS = {
    "ipset": "ipset",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
}
# Written by a completed full sync only (the rules the controller restores in one go).
SYNCED_MARK = "rule to explicitly ACCEPT traffic that comply to network policies"


class NetworkPolicyError(RuntimeError):
    """kube-router cannot be built or started; the message says why."""


def kube_router_path() -> Path:
    return cache_dir() / f"kube-router-v{KUBE_ROUTER_VERSION}" / "kube-router"


def missing_packages() -> list[str]:
    """Debian packages whose programs kube-router needs and this machine lacks."""
    return sorted({pkg for prog, pkg in PROGRAMS.items() if shutil.which(prog) is None})


def ensure_kube_router(log: bool = True) -> Path:
    """kube-router built from its Go module into the cache (once; about 6 minutes cold on
    two busy cores, 60 MB). A wrapper module requires it, repeating any `replace` of its go.mod."""
    path = kube_router_path()
    if _executable(path):
        return path
    go = shutil.which("go")
    if go is None:
        raise BinariesError(
            f"kube-router is not in {path.parent} and Go is not installed to build it"
        )
    with _build_lock(path.parent):
        if _executable(path):
            return path
        _say(log, f"building kube-router v{KUBE_ROUTER_VERSION} into {path.parent} (once)")
        started = time.monotonic()
        module = KUBE_ROUTER_MODULE
        work = cache_dir() / "build" / f"kube-router-v{KUBE_ROUTER_VERSION}"
        work.mkdir(parents=True, exist_ok=True)
        pinned = _module_gomod(go, module, KUBE_ROUTER_VERSION, work)
        go_line = next((ln for ln in pinned.splitlines() if ln.startswith("go ")), "go 1.21")
        replaces = "".join(f"replace {r}\n" for r in pinned_replaces(pinned))
        (work / "go.mod").write_text(
            f"module toka.dev/kube-router-build\n\n{go_line}\n\n"
            f"require {module} v{KUBE_ROUTER_VERSION}\n\n" + replaces
        )
        (work / "tools.go").write_text(
            _TOOLS_GO.format(imports=f'\t_ "{module}/cmd/kube-router"\n')
        )
        _go(go, ["mod", "tidy"], work)
        ldflags = f"-s -w -X {module}/pkg/version.Version=v{KUBE_ROUTER_VERSION}"
        _install(
            path,
            functools.partial(
                _go_build, go, work, ["-ldflags", ldflags], f"{module}/cmd/kube-router"
            ),
        )
        _say(log, f"built kube-router in {time.monotonic() - started:.0f}s")
    return path


def rbac_manifests(user: str = KUBE_ROUTER_USER) -> list[dict[str, Any]]:
    """What the firewall alone reads (kube-router's own daemonset YAML, less the router's
    and load balancer's leases and services/status): every informer it starts must sync,
    so services, endpoints and endpointslices are listed too (pure)."""
    read = ["get", "list", "watch"]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": RBAC_NAME},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["namespaces", "pods", "services", "nodes", "endpoints"],
                "verbs": read,
            },
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": read},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": RBAC_NAME},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": RBAC_NAME,
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    return [role, binding]


def kube_router_argv(
    binary: Path, kubeconfig: Path, *, node_name: str, service_cidr: str
) -> list[str]:
    """The command line: the firewall only, no port opened (pure). NODE_NAME is
    what kube-router looks up first (then the host's name, then --hostname-override)."""
    return [
        "env",
        f"NODE_NAME={node_name}",
        str(binary),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        "--enable-cni=false",
        "--enable-ipv4=true",
        "--enable-ipv6=false",
        # Which addresses are Services' (let through INPUT); its default is 10.96.0.0/12.
        f"--service-cluster-ip-range={service_cidr}",
        # Both would listen on every address of the node's namespace, where pods reach.
        "--health-port=0",
        "--metrics-port=0",
        "--v=1",
    ]


def apply_rbac(cp: ControlPlane, user: str = KUBE_ROUTER_USER) -> None:
    """Server-side apply of `rbac_manifests` as the control plane's admin."""
    try:
        cp.apply_rbac(rbac_manifests(user))
    except ControlPlaneError as err:
        raise NetworkPolicyError(str(err)) from err


def filter_rules(netns: str) -> str:
    """`iptables-save -t filter` inside the node's namespace (setns only)."""
    proc = subprocess.run(
        ["iptables-save", "-t", "filter"],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=functools.partial(enter_netns, netns),
    )
    return proc.stdout if proc.returncode == 0 else ""


def start_kube_router(
    cp: ControlPlane,
    node_workdir: Path,
    logs: Path,
    *,
    binary: Path | None = None,
    node_name: str = "toka-dev",
    service_cidr: str = "10.0.0.0/24",
    timeout: float = 60.0,
) -> subprocess.Popen[bytes]:
    """kube-router's firewall in the node's namespace, running once its first full sync
    has written its rules; the caller stops it (SIGTERM to its process group)."""
    netns = cp.netns
    if netns is None or cp.ca is None:
        raise NetworkPolicyError("kube-router needs a started control plane in a node namespace")
    missing = missing_packages()
    if missing:
        raise NetworkPolicyError(
            f"kube-router needs Debian packages {', '.join(missing)}: "
            f"apt-get install -y {' '.join(missing)}"
        )
    binary = binary or ensure_kube_router()
    apply_rbac(cp)
    pair = cp.ca.issue("kube-router", cn=KUBE_ROUTER_USER)
    kubeconfig = cp.write_kubeconfig(
        Path(node_workdir) / "kube-router.kubeconfig", pair, inside=True
    )
    argv = kube_router_argv(binary, kubeconfig, node_name=node_name, service_cidr=service_cidr)
    log = Path(logs) / "kube-router.log"
    offset = log.stat().st_size if log.exists() else 0
    proc = cp.spawn("kube-router", argv, logs=Path(logs))

    def synced() -> bool:
        # Its own first full sync (the log, at --v=1) and rules in place (a previous run's
        # would already be there); a sync that failed logs an error and leaves no mark.
        with log.open("rb") as f:
            f.seek(offset)
            said = b"sync iptables took" in f.read()
        return said and SYNCED_MARK in filter_rules(netns)

    deadline = time.monotonic() + timeout
    while not synced():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
                state = f"not synced after {timeout:.0f}s"
            else:
                state = f"exited with {proc.returncode}"
            tail = log.read_bytes()[offset:].decode(errors="replace")[-3000:]
            raise NetworkPolicyError(f"kube-router {state}:\n{tail}")
        time.sleep(0.2)
    return proc


__all__ = [
    "KUBE_ROUTER_VERSION",
    "NetworkPolicyError",
    "apply_rbac",
    "ensure_kube_router",
    "kube_router_argv",
    "kube_router_path",
    "rbac_manifests",
    "start_kube_router",
]
