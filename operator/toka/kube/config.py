"""Where the API server is and who we are to it: the lean part, in-cluster included.

A ServiceAccount token is read from its file on every request (`token_file`),
because projected tokens rotate; a cached token would expire under a
long-running kernel. A kubeconfig's credentials (exec plugins, auth
providers, merged files, contexts) come from the `kubernetes` library, in
`toka.kube.kubeconfig`: the kernel imports only this module and must stay
within its memory budget, so nothing here may import that library.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from toka.contract import SERVICE_ACCOUNT_DIR

SA_DIR = Path(SERVICE_ACCOUNT_DIR)


class ConfigError(RuntimeError):
    """No usable cluster configuration."""


class Credential(Protocol):
    """A credential that can be obtained again, such as an exec plugin's token."""

    def authorization(self) -> str | None:
        """The `Authorization` header value, obtained again when it is about to expire."""

    def renew(self, refused: str | None) -> None:
        """The server refused `refused` (401): obtain a new one, unless already done."""


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
    credential: Credential | None = None

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

    def authorization(self) -> str | None:
        """The `Authorization` header value: the credential's, else the bearer token's.

        A credential may run a program (an exec plugin): async callers run this
        in a thread when `credential` is set.
        """
        if self.credential is not None:
            return self.credential.authorization()
        token = self.bearer()
        return f"Bearer {token}" if token else None

    def with_token(self, token: str) -> KubeConfig:
        return KubeConfig(
            server=self.server,
            ca_file=self.ca_file,
            token=token,
            namespace=self.namespace,
            insecure=self.insecure,
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
