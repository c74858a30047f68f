"""A real control plane on loopback: etcd, kube-apiserver (RBAC on), kube-controller-manager.

What envtest does, plus the controller-manager for garbage collection,
namespace deletion, ServiceAccounts and the `kube-root-ca.crt` ConfigMaps
that projected tokens need. Every process gets a parent-death signal and
its own process group, so a crashed test run leaves no orphans; `stop()`
terminates them in reverse order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from toka.devcluster.binaries import Binaries, ensure_binaries
from toka.devcluster.certs import CertificateAuthority, KeyPair, service_account_keys

_PR_SET_PDEATHSIG = 1
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
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


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
    ):
        self.workdir = Path(workdir)
        self.binaries = binaries or ensure_binaries()
        self.controller_manager = (
            controller_manager and self.binaries.kube_controller_manager is not None
        )
        self._die_with_parent = die_with_parent
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.etcd_port = 0
        self.api_port = 0
        self.server = ""
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
            hosts=("127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default.svc"),
        )
        self._sa = service_account_keys(self.pki)
        admin = self.ca.issue("admin", cn="toka-admin", orgs=("system:masters",))
        try:
            self._start_etcd(timeout)
            self._start_apiserver(timeout)
            self.write_kubeconfig(self.admin_kubeconfig, admin)
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

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent if self._die_with_parent else os.setpgrp,
            cwd=self.workdir,
        )
        log.close()
        self.procs[name] = proc
        return proc

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
        self.etcd_port, peer = free_port(), free_port()
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

        self._wait("etcd", healthy, timeout)

    def _start_apiserver(self, timeout: float, port: int | None = None) -> None:
        self.api_port = port or free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        assert self.ca is not None
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                f"--tls-cert-file={self._serving.cert}",
                f"--tls-private-key-file={self._serving.key}",
                f"--client-ca-file={self.ca.cert_path}",
                "--authorization-mode=RBAC",
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
        ctx = ssl.create_default_context(cafile=str(self.ca.cert_path))
        admin = self.pki / "admin"
        ctx.load_cert_chain(f"{admin}.crt", f"{admin}.key")

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
        self.write_kubeconfig(kubeconfig, pair)
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
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--concurrent-gc-syncs=10",
                "--v=1",
            ],
        )

    # --- credentials -----------------------------------------------------------

    def write_kubeconfig(self, path: Path, pair: KeyPair, namespace: str = "default") -> Path:
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
