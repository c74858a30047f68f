"""Kubeconfig loading without a server: clear errors, Kopf's connection, a lean kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from toka.controller.login import build_connection_info
from toka.kube.config import ConfigError, KubeConfig
from toka.kube.kubeconfig import from_env, load_kubeconfig

CLUSTER = {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True}
FAILING_PLUGIN = {
    "exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": sys.executable,
        "args": ["-c", "import sys; sys.exit('denied by the identity provider')"],
        "interactiveMode": "Never",
    }
}


def kubeconfig(
    path: Path, user: dict[str, Any], current: str | None = "me", cluster: dict[str, Any] = CLUSTER
) -> Path:
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "me", "user": user}],
        "contexts": [{"name": "me", "context": {"cluster": "c", "user": "me"}}],
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("user", "current", "context", "cluster", "said"),
    [
        ({"token": "t"}, "me", "prod", CLUSTER, "no context 'prod' (contexts: me;"),
        ({"token": "t"}, None, None, CLUSTER, "no current context (contexts: me;"),
        (FAILING_PLUGIN, "me", None, CLUSTER, "user 'me' gave no credentials"),
        (
            {"token": "t"},
            "me",
            None,
            {**CLUSTER, "proxy-url": "http://proxy:3128"},
            "proxy-url and tls-server-name are not supported",
        ),
    ],
    ids=["unknown context", "no current context", "failing exec plugin", "proxy"],
)
def test_a_kubeconfig_that_cannot_be_used_says_why(
    tmp_path: Path,
    user: dict[str, Any],
    current: str | None,
    context: str | None,
    cluster: dict[str, Any],
    said: str,
) -> None:
    path = kubeconfig(tmp_path / "config", user, current, cluster)
    with pytest.raises(ConfigError) as err:
        load_kubeconfig(path, context)
    assert said in str(err.value)
    assert str(path) in str(err.value)


def test_a_missing_kubeconfig_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"kubeconfig .*/nowhere: no such file"):
        load_kubeconfig(tmp_path / "nowhere")


def test_a_static_token_user_is_sent_as_a_bearer_token(tmp_path: Path) -> None:
    config = load_kubeconfig(kubeconfig(tmp_path / "config", {"token": "s3cret"}))
    assert config.server == CLUSTER["server"]
    assert config.insecure
    assert config.authorization() == "Bearer s3cret"


def test_a_context_without_a_kubeconfig_is_an_error_not_in_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="no cluster configuration"):
        from_env(context="prod")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            KubeConfig(server="https://k:6443", ca_file="/ca", token="t", namespace="ns"),
            {"scheme": "Bearer", "token": "t", "ca_path": "/ca", "default_namespace": "ns"},
        ),
        (
            KubeConfig(server="https://k:6443", cert_file="/c", key_file="/k"),
            {"scheme": None, "token": None, "certificate_path": "/c", "private_key_path": "/k"},
        ),
        (
            KubeConfig(server="https://k:6443", insecure=True),
            {"insecure": True, "token": None},
        ),
    ],
    ids=["token", "client certificate", "insecure"],
)
def test_kopf_connects_with_our_credentials(config: KubeConfig, expected: dict[str, Any]) -> None:
    info = build_connection_info(config)
    assert info.server == config.server
    assert {k: getattr(info, k) for k in expected} == expected


def test_the_kernel_never_loads_the_kubernetes_library() -> None:
    """Its memory budget; import-linter checks the imports, this checks what runs."""
    code = "import sys, toka.kernel.main; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "'toka'" in out
    assert "'kubernetes'" not in out
    assert "'kopf'" not in out
