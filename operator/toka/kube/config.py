"""Where the API server is and who we are to it: kubeconfig, in-cluster, token file.

A ServiceAccount token is read from its file on every request (`token_file`),
because projected tokens rotate; a cached token would expire under a
long-running kernel.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(RuntimeError):
    """No usable cluster configuration."""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    namespace: str = "default"
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def bearer(self) -> str | None:
        """The current token; a token file is re-read each time (rotation)."""
        if self.token_file:
            return Path(self.token_file).read_text().strip()
        return self.token

    def with_token_file(self, token_file: str) -> KubeConfig:
        """Same server and CA, authenticated by a token file instead of our credentials."""
        return KubeConfig(
            server=self.server,
            ca_file=self.ca_file,
            token_file=token_file,
            namespace=self.namespace,
            insecure=self.insecure,
        )

    def with_token(self, token: str) -> KubeConfig:
        return KubeConfig(
            server=self.server,
            ca_file=self.ca_file,
            token=token,
            namespace=self.namespace,
            insecure=self.insecure,
        )


def _materialise(data_b64: str, suffix: str) -> str:
    """kubeconfig `*-data` fields as files, since ssl wants paths."""
    fd, path = tempfile.mkstemp(prefix="toka-kubeconfig-", suffix=suffix)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64decode(data_b64))
    os.chmod(path, 0o600)
    return path


def load_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> KubeConfig:
    doc: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    ctx_name = context or doc.get("current-context")
    contexts = {c["name"]: c["context"] for c in doc.get("contexts", [])}
    if ctx_name not in contexts:
        raise ConfigError(f"kubeconfig {path}: context {ctx_name!r} not found")
    ctx = contexts[ctx_name]
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
    user: dict[str, Any] = next(
        (u["user"] for u in doc.get("users", []) if u["name"] == ctx.get("user")), {}
    )
    base = Path(path).parent

    def file_or_data(file_key: str, data_key: str, section: dict[str, Any], sfx: str) -> str | None:
        if section.get(file_key):
            return str((base / section[file_key]).resolve())
        if section.get(data_key):
            return _materialise(section[data_key], sfx)
        return None

    return KubeConfig(
        server=cluster["server"].rstrip("/"),
        ca_file=file_or_data(
            "certificate-authority", "certificate-authority-data", cluster, ".crt"
        ),
        cert_file=file_or_data("client-certificate", "client-certificate-data", user, ".crt"),
        key_file=file_or_data("client-key", "client-key-data", user, ".key"),
        token=user.get("token"),
        token_file=user.get("tokenFile"),
        namespace=ctx.get("namespace", "default"),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
    )


def in_cluster(sa_dir: Path = SA_DIR) -> KubeConfig:
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT"),
    )
    if not host or not port or not (sa_dir / "token").exists():
        raise ConfigError("not running in a cluster (no KUBERNETES_SERVICE_HOST or token)")
    if ":" in host:
        host = f"[{host}]"
    ns_file = sa_dir / "namespace"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_file=str(sa_dir / "ca.crt"),
        token_file=str(sa_dir / "token"),
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
    )


def from_env(context: str | None = None) -> KubeConfig:
    """$KUBECONFIG, else in-cluster, else ~/.kube/config."""
    env = os.environ.get("KUBECONFIG")
    if env:
        return load_kubeconfig(env.split(os.pathsep)[0], context)
    try:
        return in_cluster()
    except ConfigError:
        pass
    default = Path.home() / ".kube" / "config"
    if default.exists():
        return load_kubeconfig(default, context)
    raise ConfigError(
        "no cluster configuration: set KUBECONFIG, run in a pod, or create ~/.kube/config "
        "(for a local cluster: `toka dev up`)"
    )
