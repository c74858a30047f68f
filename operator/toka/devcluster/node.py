"""A real node for the dev cluster: containerd + runc, a kubelet, kube-proxy and kube-scheduler.

Every agent pod of `make demo` and of the e2e tier runs here, under the
same kubelet and runtime as on any cluster, so UIDs, `fsGroup`, read-only
roots, native-sidecar ordering, probes and projected tokens behave as they
will for users. The whole node lives in a network namespace of its own
(`toka.devcluster.netns`: no route off the machine), its cgroups under a
root of its own, its state under its work directory, so two dev clusters
can run side by side and `stop()` leaves the machine as it found it: pods
removed, mounts undone, cgroups removed, the kernel settings the kubelet
changes put back, the namespace deleted.

Facts this relies on (Debian 12 packages: containerd 1.6, runc 1.1):
containerd's CRI must `restrict_oom_score_adj` (root here lacks
CAP_SYS_RESOURCE) and use a locally built pause image (no registry is
reachable); containerd and the kubelet join the namespace with setns
alone, never `ip netns exec`, which would give them a mount namespace of
their own and hide the kubelet's volume mounts from containerd.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from toka.devcluster import netns
from toka.devcluster.binaries import Binaries, BinariesError, kube_dir
from toka.devcluster.controlplane import (
    CONTROLLERS,
    ControlPlane,
    ControlPlaneError,
)
from toka.devcluster.image import Images
from toka.devcluster.netpol import start_kube_router

NODE_NAME = "toka-dev"
NODE_IP = "10.88.0.1"
POD_CIDR = "10.89.0.0/24"
POD_GATEWAY = "10.89.0.1"
SERVICE_CIDR = "10.0.0.0/24"
CLUSTER_ROUTES = ("10.89.0.0/16", SERVICE_CIDR, f"{NODE_IP}/32")
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-scheduler")
# The controllers a node needs on top of the control plane's (Deployments for the
# chart's operator, Services' endpoints for kube-proxy, taints for scheduling).
NODE_CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "endpoints-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
    "ttl-controller",
)
# Host-wide kernel settings the kubelet writes at start; put back on stop.
KUBELET_SYSCTLS = (
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
PACKAGES = (
    "containerd",
    "runc",
    "containernetworking-plugins",
    "buildah",
    "umoci",
    "debootstrap",
    "ipset",
)
CNI_BIN_DIR = Path("/usr/lib/cni")
# Not /var/lib/toka: agent pods mount volumes there, and the stand-in node's containers
# see the host's root.
KUBELET_ROOTS = Path("/var/lib/toka-nodes")
# Each running node's sockets and state; the host's sysctls saved while any runs.
RUN_ROOT = Path("/run/toka")
SAVED_SYSCTLS = RUN_ROOT / "host-sysctls.json"
STOP_ORDER = ("kube-router", "kube-scheduler", "kube-proxy", "kubelet")


class NodeError(RuntimeError):
    """The real node cannot start; the message says what is missing."""


@dataclass(frozen=True)
class NodeImages:
    """Images containerd must hold before the kubelet starts (oci-archive paths)."""

    pause: str
    pause_archive: Path
    archives: tuple[Path, ...] = ()


def missing_packages() -> list[str]:
    need = {
        "containerd": "containerd",
        "ctr": "containerd",
        "runc": "runc",
        "buildah": "buildah",
        "umoci": "umoci",
        "debootstrap": "debootstrap",
        "ipset": "ipset",
    }
    out = sorted({pkg for prog, pkg in need.items() if shutil.which(prog) is None})
    if not (CNI_BIN_DIR / "bridge").exists():
        out.append("containernetworking-plugins")
    return out


def containerd_config(root: Path, state: Path, address: Path, cni_conf: Path, pause: str) -> str:
    """containerd's config (pure, tested)."""
    return f"""version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt",
]

[grpc]
  address = "{address}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
"""


def cni_config(ipam_dir: Path) -> dict[str, Any]:
    """A bridge with routes only to the cluster's own ranges: no default route, no
    masquerade, so nothing a pod sends can leave the node's namespace (pure, tested)."""
    return {
        "cniVersion": "1.0.0",
        "name": "toka",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": r} for r in CLUSTER_ROUTES],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *,
    ca: Path,
    cert: Path,
    key: Path,
    runtime: Path,
    resolv: Path,
    logs: Path,
    cgroup_root: str,
) -> dict[str, Any]:
    """The KubeletConfiguration (pure, tested)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(cert),
        "tlsPrivateKeyFile": str(key),
        "containerRuntimeEndpoint": f"unix://{runtime}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "resolvConf": str(resolv),
        "podLogsDir": str(logs),
        "serializeImagePulls": False,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "2s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "maxPods": 250,
        "podPidsLimit": 4096,
        "shutdownGracePeriod": "0s",
        "logging": {"verbosity": 1},
    }


def kube_proxy_config(kubeconfig: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_CIDR,
        "bindAddress": NODE_IP,
        # No NodePorts on localhost, so kube-proxy leaves route_localnet off: nothing a pod
        # sends is routed to the namespace's 127.0.0.1, where etcd listens.
        "iptables": {"localhostNodePorts": False},
        # On the namespace's own loopback (kube-proxy refuses port 0).
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        # Leave the host's conntrack table sizes alone (they are not per namespace).
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


def cgroup_mounts() -> list[Path]:
    """Each cgroup hierarchy's mount point (v1 controllers and the unified one)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] in (["cgroup"], ["cgroup2"]):
            out.append(Path(left.split()[4]))
    return out


def remove_cgroup_tree(root: Path) -> None:
    """rmdir leaf-first: a cgroup is removed with rmdir once it holds no process."""
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with (RUN_ROOT / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _mounts() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def unmount_under(root: Path) -> None:
    """Lazily unmount every mount at or below `root`, deepest first (the volumes the
    kubelet made, and its root, which it bind-mounts onto itself)."""
    top = str(root.resolve()).rstrip("/")
    mounts = [
        target
        for target in (line.split()[4] for line in _mounts())
        if target == top or target.startswith(top + "/")
    ]
    for target in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


class RealNode:
    """One node: containerd, kubelet, kube-proxy, kube-scheduler, beside `cp` in its netns."""

    def __init__(
        self,
        cp: ControlPlane,
        workdir: Path,
        images: NodeImages,
        crictl: Path | None = None,
        *,
        network_policy: bool = True,
    ):
        if cp.netns is None or cp.node_ip != NODE_IP:
            raise NodeError("the control plane must run in the node's namespace at NODE_IP")
        self.cp = cp
        self.netns = cp.netns
        self.workdir = Path(workdir)
        self.images = images
        self.crictl = crictl
        self.network_policy = network_policy
        self.run_dir = RUN_ROOT / self.netns
        # Short, whatever the work directory: the kubelet makes Unix sockets under it.
        self.kubelet_root = KUBELET_ROOTS / self.netns
        self.socket = self.run_dir / "containerd.sock"
        self.cgroup_root = f"/{self.netns}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = self.workdir / "logs"

    # --- lifecycle -----------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> RealNode:
        missing = missing_packages()
        if missing:
            raise NodeError(
                f"the real node needs Debian packages {', '.join(missing)}: "
                f"apt-get install -y {' '.join(PACKAGES)}"
            )
        binaries = {b: kube_dir() / b for b in NODE_BINARIES}
        absent = [b for b, p in binaries.items() if not os.access(p, os.X_OK)]
        if absent:
            raise BinariesError(f"{', '.join(absent)} missing: run `toka dev binaries --node`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._save_sysctls()
        try:
            self._start_containerd(timeout)
            self._import_images()
            self._start_kubelet(binaries["kubelet"])
            self._start_kube_proxy(binaries["kube-proxy"])
            self._start_scheduler(binaries["kube-scheduler"])
            self._wait_ready(timeout)
            if self.network_policy:
                self.procs["kube-router"] = start_kube_router(
                    self.cp, self.workdir, self.logs, node_name=NODE_NAME, service_cidr=SERVICE_CIDR
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Every step is tried whatever the one before it did: a step that fails is logged,
        and the rest still put the machine back."""
        steps: list[tuple[str, Callable[[], object]]] = [
            *((f"stop {n}", functools.partial(self._terminate, n, 10)) for n in STOP_ORDER),
            ("remove pods", self._remove_pods),
            ("stop containerd", functools.partial(self._terminate, "containerd", 10)),
            ("stop what containerd left", self._kill_shims),
            ("unmount", self._unmount),
            ("remove cgroups", self._remove_cgroups),
            ("restore kernel settings", self._restore_sysctls),
            ("remove directories", self._remove_dirs),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as err:
                print(f"[toka devcluster] {what}: {err}", file=sys.stderr, flush=True)
        self.procs.clear()

    def _kill_shims(self) -> None:
        """containerd's shims (and the containers under them) run in process groups of
        their own; any this node's containerd started, and `rmp` did not end, go now."""
        needle = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if needle in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def _unmount(self) -> None:
        unmount_under(self.workdir)
        unmount_under(self.kubelet_root)
        unmount_under(self.run_dir)

    def _remove_cgroups(self) -> None:
        """Whatever still runs in the node's cgroups (a container whose shim went first)
        is killed; then the cgroups go, leaf first."""
        roots = [mount / self.cgroup_root.lstrip("/") for mount in cgroup_mounts()]
        for root in roots:
            for procs in root.rglob("cgroup.procs") if root.is_dir() else ():
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        for _ in range(50):
            for root in roots:
                remove_cgroup_tree(root)
            if not any(root.exists() for root in roots):
                return
            time.sleep(0.1)

    def _remove_dirs(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        top = str(self.kubelet_root)
        if not any(m.split()[4] == top or m.split()[4].startswith(top + "/") for m in _mounts()):
            shutil.rmtree(self.kubelet_root, ignore_errors=True)

    def _other_nodes(self) -> list[Path]:
        """The run directories of the other nodes running on this machine."""
        return [
            d
            for d in RUN_ROOT.iterdir()
            if d.is_dir() and d != self.run_dir and netns.netns_path(d.name).exists()
        ]

    def _save_sysctls(self) -> None:
        """The host's own values, kept once for all nodes on this machine: a node that
        starts while another runs would otherwise take the kubelet's values for the host's.
        Kept by a node that crashed, they are stale once no node runs."""
        with _host_lock():
            if not SAVED_SYSCTLS.exists() or not self._other_nodes():
                values = {k: Path("/proc/sys", k).read_text() for k in KUBELET_SYSCTLS}
                SAVED_SYSCTLS.write_text(json.dumps(values))

    def _restore_sysctls(self) -> None:
        """Put the host's values back when the last node on this machine stops."""
        with _host_lock():
            if self._other_nodes() or not SAVED_SYSCTLS.exists():
                return
            for key, value in json.loads(SAVED_SYSCTLS.read_text()).items():
                with contextlib.suppress(OSError):
                    Path("/proc/sys", key).write_text(value)
            SAVED_SYSCTLS.unlink()

    # --- components ------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.procs[name] = self.cp.spawn(name, argv, logs=self.logs)

    def _terminate(self, name: str, grace: float) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def _wait(self, name: str, check: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for component, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.logs / f"{component}.log").read_text(errors="replace")[-3000:]
                    raise NodeError(f"{component} exited with {proc.returncode}:\n{tail}")
            if check():
                return
            time.sleep(0.2)
        raise NodeError(f"{name} not ready after {timeout:.0f}s; see {self.logs / name}.log")

    def _start_containerd(self, timeout: float) -> None:
        config = self.workdir / "containerd.toml"
        cni_conf = self.workdir / "cni" / "net.d"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-toka.conflist").write_text(
            json.dumps(cni_config(self.workdir / "cni" / "ipam"), indent=2)
        )
        config.write_text(
            containerd_config(
                self.workdir / "containerd",
                self.run_dir / "containerd",
                self.socket,
                cni_conf,
                self.images.pause,
            )
        )
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait("containerd", lambda: self._ctr("version").returncode == 0, timeout)

    def _ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def _import_images(self) -> None:
        for archive in (self.images.pause_archive, *self.images.archives):
            proc = self._ctr("images", "import", "--no-unpack=false", str(archive))
            if proc.returncode != 0:
                raise NodeError(f"importing {archive} into containerd failed: {proc.stderr}")

    def _issue_kubeconfig(self, name: str, cn: str, orgs: tuple[str, ...] = ()) -> Path:
        assert self.cp.ca is not None
        pair = self.cp.ca.issue(name, cn=cn, orgs=orgs)
        return self.cp.write_kubeconfig(self.workdir / f"{name}.kubeconfig", pair, inside=True)

    def _start_kubelet(self, kubelet: Path) -> None:
        assert self.cp.ca is not None
        kubeconfig = self._issue_kubeconfig(
            "kubelet", f"system:node:{NODE_NAME}", ("system:nodes",)
        )
        serving = self.cp.ca.issue("kubelet-serving", cn=NODE_NAME, server=True, hosts=(NODE_IP,))
        for mount in cgroup_mounts():
            (mount / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
        resolv = self.workdir / "resolv.conf"
        # No cluster DNS: pods resolve nothing but what /etc/hosts says.
        resolv.write_text("options ndots:0\n")
        config = self.workdir / "kubelet.yaml"
        config.write_text(
            yaml.safe_dump(
                kubelet_config(
                    ca=self.cp.ca.cert_path,
                    cert=serving.cert,
                    key=serving.key,
                    runtime=self.socket,
                    resolv=resolv,
                    logs=self.workdir / "pod-logs",
                    cgroup_root=self.cgroup_root,
                )
            )
        )
        self._spawn(
            "kubelet",
            [
                str(kubelet),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--node-ip={NODE_IP}",
                f"--hostname-override={NODE_NAME}",
            ],
        )

    def _start_kube_proxy(self, proxy: Path) -> None:
        kubeconfig = self._issue_kubeconfig("kube-proxy", "system:kube-proxy")
        config = self.workdir / "kube-proxy.yaml"
        config.write_text(yaml.safe_dump(kube_proxy_config(kubeconfig)))
        self._spawn("kube-proxy", [str(proxy), f"--config={config}"])

    def _start_scheduler(self, scheduler: Path) -> None:
        kubeconfig = self._issue_kubeconfig("kube-scheduler", "system:kube-scheduler")
        self._spawn(
            "kube-scheduler",
            [
                str(scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
            ],
        )

    def _wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            node = self.cp.get_json(f"/api/v1/nodes/{NODE_NAME}")
            conditions = (node or {}).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        self._wait("kubelet", ready, timeout)

    def _remove_pods(self) -> None:
        """Every sandbox stopped and removed: CNI tears down its netns and addresses."""
        if self.crictl is None:
            return
        subprocess.run(
            [str(self.crictl), "--runtime-endpoint", f"unix://{self.socket}", "rmp", "-a", "-f"],
            capture_output=True,
            timeout=120,
            check=False,
        )


def node_images(images: Images) -> NodeImages:
    """What the node's containerd imports: the pause image and Toka's, as built."""
    if images.pause_archive is None or images.toka_archive is None:
        raise NodeError("the images were not exported: ensure_images(..., export=True)")
    return NodeImages(images.pause, images.pause_archive, (images.toka_archive,))


class RealCluster:
    """The node's namespace, the control plane inside it, and the node: one unit, so
    whatever started is stopped, in reverse order, whichever step failed."""

    def __init__(
        self,
        workdir: Path,
        images: NodeImages,
        *,
        netns_name: str,
        crictl: Path | None = None,
        binaries: Binaries | None = None,
        network_policy: bool = True,
    ):
        self.workdir = Path(workdir)
        self.network_policy = network_policy
        self.netns = netns_name
        self.images = images
        self.crictl = crictl
        self.cp = ControlPlane(
            self.workdir / "controlplane",
            binaries,
            netns=netns_name,
            node_ip=NODE_IP,
            controllers=CONTROLLERS + NODE_CONTROLLERS,
        )
        self.node: RealNode | None = None

    def start(self) -> RealCluster:
        netns.delete(self.netns)  # a namespace a crashed run of the same name left
        netns.create(self.netns, NODE_IP)
        try:
            self.cp.start()
            self.node = RealNode(
                self.cp,
                self.workdir / "node",
                self.images,
                self.crictl,
                network_policy=self.network_policy,
            )
            self.node.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.cp.stop()
        netns.delete(self.netns)

    def __enter__(self) -> RealCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "NODE_IP",
    "NODE_NAME",
    "ControlPlaneError",
    "NodeError",
    "NodeImages",
    "RealCluster",
    "RealNode",
]
