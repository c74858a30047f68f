"""Kopf's connection, from the same credentials as Toka's own client.

Kopf calls its login handler at start and again only when the API server
refused what it was given (401) or it expired; so a later call renews the
credential first (an exec plugin runs again). Both clients share the one
credential, so a token renewed by one is used by the other.
"""

from __future__ import annotations

import kopf

from toka.kube.config import KubeConfig


def build_connection_info(
    config: KubeConfig, refused: kopf.ConnectionInfo | None = None
) -> kopf.ConnectionInfo:
    """The connection for `config`; `refused` is what the last login gave, if any."""
    if refused is not None and config.credential is not None:
        config.credential.renew(refused.as_http_headers().get("Authorization"))
    scheme, _, token = (config.authorization() or "").partition(" ")
    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_file,
        insecure=config.insecure,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        default_namespace=config.namespace,
    )
