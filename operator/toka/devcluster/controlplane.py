"""A real control plane on loopback: etcd, kube-apiserver (RBAC on), kube-controller-manager.

What envtest does, plus the controller-manager for garbage collection,
namespace deletion, ServiceAccounts and the `kube-root-ca.crt` ConfigMaps
that projected tokens need. Every process gets a parent-death signal and
its own process group, so a crashed test run leaves no orphans; `stop()`
terminates them in reverse order.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from toka.devcluster.binaries import Binaries, ensure_binaries
from toka.devcluster.certs import CertificateAuthority, KeyPair, service_account_keys
from toka.devcluster.netns import enter as enter_netns

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1
# Loaded once: `die_with_parent` runs in a forked child before exec.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
INNER_API_PORT = 6443
KUBELET_CLIENT_BINDING: dict[str, Any] = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "toka-dev:kube-apiserver-kubelet-client"},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "system:kubelet-api-admin",
    },
    "subjects": [
        {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": "kube-apiserver-kubelet-client",
        }
    ],
}
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "validatingadmissionpolicy-status-controller",
)


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


def inside_netns(name: str, fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`, run on a thread of its own that first enters network namespace `name`
    (setns moves only the calling thread)."""

    def call() -> T:
        result: list[T] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                enter_netns(name)
                result.append(fn())
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    return call


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ControlPlaneError(RuntimeError):
    pass


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        binaries: Binaries | None = None,
        *,
        controller_manager: bool = True,
        die_with_parent: bool = True,
        netns: str | None = None,
        node_ip: str | None = None,
        controllers: tuple[str, ...] = CONTROLLERS,
    ):
        """With `netns`, every component runs inside that network namespace (a real
        node's, see `toka.devcluster.netns`), the API server listens there on the node's
        address too, and the host reaches it through a forwarder on the same port."""
        self.workdir = Path(workdir)
        self.binaries = binaries or ensure_binaries()
        self.controller_manager = (
            controller_manager and self.binaries.kube_controller_manager is not None
        )
        self._die_with_parent = die_with_parent
        self.netns = netns
        self.node_ip = node_ip
        self.controllers = controllers
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.etcd_port = 0
        self.api_port = 0
        self.server = ""
        # Inside a node's namespace the API server listens where clusters usually do;
        # the host's forwarder maps its own free port there.
        self.inner_server = ""
        self.ca: CertificateAuthority | None = None
        self.admin_kubeconfig = self.workdir / "kubeconfig"

    # --- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 90.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.ca = CertificateAuthority(self.pki)
        self._serving = self.ca.issue(
            "apiserver",
            cn="kube-apiserver",
            server=True,
            hosts=(
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default.svc",
                *((self.node_ip,) if self.node_ip else ()),
            ),
        )
        self._sa = service_account_keys(self.pki)
        admin = self.ca.issue("admin", cn="toka-admin", orgs=("system:masters",))
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self.write_kubeconfig(self.admin_kubeconfig, admin)
            if self.node_ip:
                # kubectl exec/logs: the API server's client may use the kubelet's API.
                self.apply_rbac([KUBELET_CLIENT_BINDING])
            if self.controller_manager:
                self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 10.0) -> None:
        for name in reversed(list(self.procs)):
            self._terminate(name, grace)
        self.procs.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (for outage tests); `restart_apiserver` brings it back."""
        self._terminate("kube-apiserver", 10.0)
        self.procs.pop("kube-apiserver", None)

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        self._start_apiserver(timeout, port=self.api_port)

    def _terminate(self, name: str, grace: float) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def spawn(
        self, name: str, argv: list[str], *, logs: Path, inside: bool = True
    ) -> subprocess.Popen[bytes]:
        """A process beside the control plane: its own process group, dying with this
        one, inside the cluster's network namespace (if any) unless `inside` is False."""
        log = (logs / f"{name}.log").open("ab")
        start = die_with_parent if self._die_with_parent else os.setpgrp
        netns = self.netns if inside else None

        def preexec() -> None:
            start()
            if netns:
                enter_netns(netns)

        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
            cwd=self.workdir,
        )
        log.close()
        return proc

    def _spawn(self, name: str, argv: list[str], *, inside: bool = True) -> subprocess.Popen[bytes]:
        proc = self.spawn(name, argv, logs=self.logs, inside=inside)
        self.procs[name] = proc
        return proc

    def get_json(self, path: str) -> dict[str, Any] | None:
        """GET `path` as the admin; None when it is not there (or not yet answering)."""
        try:
            with urllib.request.urlopen(  # noqa: S310 - https to our own apiserver
                f"{self.server}{path}", context=self._admin_context(), timeout=5
            ) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def apply_rbac(self, docs: list[dict[str, Any]]) -> None:
        """Server-side apply of cluster-scoped RBAC objects as the admin."""
        plural = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}
        for doc in docs:
            url = (
                f"{self.server}/apis/rbac.authorization.k8s.io/v1/{plural[doc['kind']]}/"
                f"{doc['metadata']['name']}?fieldManager=toka-dev&force=true"
            )
            req = urllib.request.Request(  # noqa: S310 - https to our own apiserver
                url,
                data=json.dumps(doc).encode(),
                method="PATCH",
                headers={"Content-Type": "application/apply-patch+yaml"},
            )
            try:
                with urllib.request.urlopen(req, context=self._admin_context(), timeout=10):  # noqa: S310
                    pass
            except urllib.error.HTTPError as err:
                raise ControlPlaneError(
                    f"applying {doc['kind']} {doc['metadata']['name']}: {err.code} "
                    f"{err.read().decode(errors='replace')}"
                ) from err

    def _admin_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        admin = self.pki / "admin"
        ctx.load_cert_chain(f"{admin}.crt", f"{admin}.key")
        return ctx

    def _wait(self, name: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{tail}")
            if check():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} not ready after {timeout:.0f}s; see {self.logs / name}.log"
        )

    # --- components ------------------------------------------------------------

    def _start_etcd(self, timeout: float) -> None:
        self.etcd_port, peer = (2379, 2380) if self.netns else (free_port(), free_port())
        client = f"http://127.0.0.1:{self.etcd_port}"
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=4294967296",
            ],
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1) as resp:  # noqa: S310
                    return b'"true"' in resp.read()
            except (OSError, urllib.error.URLError):
                return False

        if self.netns:
            healthy = inside_netns(self.netns, healthy)

        self._wait("etcd", healthy, timeout)

    def _start_apiserver(self, timeout: float, port: int | None = None) -> None:
        self.api_port = port or free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        inner_port = INNER_API_PORT if self.netns else self.api_port
        self.inner_server = f"https://127.0.0.1:{inner_port}"
        assert self.ca is not None
        node: list[str] = []
        if self.node_ip:
            kubelet_client = self.ca.issue(
                "apiserver-kubelet-client", cn="kube-apiserver-kubelet-client"
            )
            node = [
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        if self.netns and "forwarder" not in self.procs:
            self._spawn(
                "forwarder",
                [
                    sys.executable,
                    "-m",
                    "toka.devcluster.netns",
                    "forward",
                    self.netns,
                    str(self.api_port),
                    str(inner_port),
                ],
                inside=False,
            )
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                # Inside the node's namespace: all of it is this machine's own.
                f"--bind-address={'0.0.0.0' if self.node_ip else '127.0.0.1'}",  # noqa: S104
                f"--advertise-address={self.node_ip or '127.0.0.1'}",
                f"--secure-port={inner_port}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self.ca.cert_path}",
                *(node or ["--authorization-mode=RBAC"]),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self._sa.cert}",
                f"--service-account-signing-key-file={self._sa.key}",
                "--allow-privileged=true",
                "--profiling=false",
                f"--cert-dir={self.pki}",
                "--v=1",
            ],
        )
        ctx = self._admin_context()

        def ready() -> bool:
            try:
                with urllib.request.urlopen(  # noqa: S310 - https to our own apiserver
                    f"{self.server}/readyz", context=ctx, timeout=2
                ) as resp:
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        self._wait("kube-apiserver", ready, timeout)

    def _start_controller_manager(self) -> None:
        assert self.ca is not None
        assert self.binaries.kube_controller_manager is not None
        pair = self.ca.issue("kcm", cn="system:kube-controller-manager")
        kubeconfig = self.workdir / "kcm.kubeconfig"
        self.write_kubeconfig(kubeconfig, pair, inside=True)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--service-account-private-key-file={self._sa.key}",
                f"--root-ca-file={self.ca.cert_path}",
                "--use-service-account-credentials=true",
                f"--controllers={','.join(self.controllers)}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--concurrent-gc-syncs=10",
                "--v=1",
            ],
        )

    # --- credentials -----------------------------------------------------------

    def write_kubeconfig(
        self, path: Path, pair: KeyPair, namespace: str = "default", *, inside: bool = False
    ) -> Path:
        """A kubeconfig for `pair`; `inside`: for a component in the node's namespace."""
        assert self.ca is not None
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "toka-dev",
                    "cluster": {
                        "server": self.inner_server if inside else self.server,
                        "certificate-authority": str(self.ca.cert_path),
                    },
                }
            ],
            "users": [
                {
                    "name": "user",
                    "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
                }
            ],
            "contexts": [
                {
                    "name": "toka-dev",
                    "context": {"cluster": "toka-dev", "user": "user", "namespace": namespace},
                }
            ],
            "current-context": "toka-dev",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for an arbitrary user (client certificate), for RBAC tests."""
        assert self.ca is not None
        safe = "".join(c if c.isalnum() else "-" for c in user)
        pair = self.ca.issue(f"user-{safe}", cn=user, orgs=groups)
        return self.write_kubeconfig(self.workdir / f"kubeconfig-{safe}", pair)

    def token_kubeconfig(self, path: Path, token: str) -> Path:
        assert self.ca is not None
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "toka-dev",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.ca.cert_path),
                    },
                }
            ],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "toka-dev", "context": {"cluster": "toka-dev", "user": "user"}}],
            "current-context": "toka-dev",
        }
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path
