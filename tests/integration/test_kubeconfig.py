"""Any kubeconfig kubectl reads, against the real API server (RBAC on).

The user here is an `exec` plugin (tests/exec_plugin.py) that prints real
ServiceAccount tokens, as `aws eks get-token` or `kubelogin` do; kubeconfigs
are split over two merged files with the wanted context not the current one;
tokens are revoked or reach their stated expiry in the middle of a run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.config.kube_config import EXPIRY_SKEW_PREVENTION_DELAY

from tests.conftest import failed
from tests.helpers import wait_for
from tests.sessions import agent, session
from toka.controller.builders.names import agent_object_name
from toka.devcluster.controlplane import ControlPlane, die_with_parent
from toka.kube.client import (
    AGENTS,
    CLUSTERROLEBINDINGS,
    CONFIGMAPS,
    ROLEBINDINGS,
    ROLES,
    SECRETS,
    SERVICEACCOUNTS,
    SESSIONS,
    ApiError,
    AsyncKube,
)
from toka.kube.config import ConfigError, KubeConfig
from toka.kube.kubeconfig import load_kubeconfig

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
PLUGIN = Path(__file__).resolve().parent.parent / "exec_plugin.py"
REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class Plugin:
    """Where the exec plugin says which tokens it made (one Secret per token)."""

    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []

    def token(self, secret: str) -> str:
        return (self.log.parent / f"{secret}.token").read_text()

    def hang(self, on: bool) -> None:
        """Make the plugin's calls from now on hang (or not): a plugin waiting forever."""
        flag = self.log.parent / "hang"
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def hung(self) -> list[int]:
        """The plugin processes that hung, in the order they started."""
        pids = self.log.parent / "hung.pids"
        return [int(p) for p in pids.read_text().split()] if pids.exists() else []

    def kill_hung(self) -> None:
        for pid in self.hung():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    (tmp_path / "plugin").mkdir()
    made = Plugin(tmp_path / "plugin" / "plugin.log")
    yield made
    made.kill_hung()


async def make_account(kube: AsyncKube, namespace: str, name: str) -> None:
    """A ServiceAccount that may read sessions, agents and config maps here, and no more."""
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": name}}, namespace)
    rules = [
        {
            "apiGroups": ["toka.dev"],
            "resources": ["agentsessions", "agents"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
    ]
    await kube.create(ROLES, {"metadata": {"name": name}, "rules": rules}, namespace)
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    await kube.create(ROLEBINDINGS, binding, namespace)


def cluster_entry(cp: ControlPlane) -> JSON:
    assert cp.ca is not None
    return {"server": cp.server, "certificate-authority": str(cp.ca.cert_path)}


def exec_user(
    cp: ControlPlane, namespace: str, account: str, plugin: Plugin, stated: float | None = None
) -> JSON:
    """A kubeconfig user whose credential is the exec plugin's token for `account`."""
    admin = yaml.safe_load(cp.admin_kubeconfig.read_text())["users"][0]["user"]
    env = {
        "PLUGIN_SERVER": cp.server,
        "PLUGIN_CA": cluster_entry(cp)["certificate-authority"],
        "PLUGIN_CERT": admin["client-certificate"],
        "PLUGIN_KEY": admin["client-key"],
        "PLUGIN_NAMESPACE": namespace,
        "PLUGIN_ACCOUNT": account,
        "PLUGIN_LOG": str(plugin.log),
    }
    if stated is not None:
        env["PLUGIN_STATED_SECONDS"] = str(stated)
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN)],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "interactiveMode": "Never",
        }
    }


def write_kubeconfig(
    path: Path,
    *,
    clusters: dict[str, JSON] | None = None,
    users: dict[str, JSON] | None = None,
    contexts: dict[str, JSON] | None = None,
    current: str | None = None,
) -> Path:
    doc: JSON = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": k, "cluster": v} for k, v in (clusters or {}).items()],
        "users": [{"name": k, "user": v} for k, v in (users or {}).items()],
        "contexts": [{"name": k, "context": v} for k, v in (contexts or {}).items()],
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def merged_kubeconfig(
    tmp_path: Path, cp: ControlPlane, namespace: str, account: str, plugin: Plugin
) -> str:
    """Two files as KUBECONFIG: the first's current context is a user the server refuses;
    the second adds context `laptop` (the plugin's user) on the first file's cluster, and
    names itself current, which kubectl ignores (the first file to say wins)."""
    first = write_kubeconfig(
        tmp_path / "config",
        clusters={"toka-dev": cluster_entry(cp)},
        users={"nobody": {"token": "not-a-token"}},
        contexts={"nobody": {"cluster": "toka-dev", "user": "nobody"}},
        current="nobody",
    )
    second = write_kubeconfig(
        tmp_path / "laptop.yaml",
        users={"laptop": exec_user(cp, namespace, account, plugin)},
        contexts={"laptop": {"cluster": "toka-dev", "user": "laptop", "namespace": namespace}},
        current="laptop",
    )
    return f"{first}{os.pathsep}{second}"


def single_kubeconfig(
    path: Path, cp: ControlPlane, namespace: str, user: JSON, context_namespace: str | None = None
) -> Path:
    return write_kubeconfig(
        path,
        clusters={"toka-dev": cluster_entry(cp)},
        users={"me": user},
        contexts={
            "me": {"cluster": "toka-dev", "user": "me", "namespace": context_namespace or namespace}
        },
        current="me",
    )


async def revoke(kube: AsyncKube, namespace: str, plugin: Plugin, secret: str) -> None:
    """Delete the token's Secret; return once the server refuses the token (its cache
    of good tokens may keep it a few seconds)."""
    old = kube.config.with_token(plugin.token(secret))
    await kube.delete(SECRETS, secret, namespace)
    deadline = time.monotonic() + 30
    async with AsyncKube(old) as stale:
        while True:
            try:
                await stale.list(CONFIGMAPS, namespace)
            except ApiError as err:
                if err.status == 401:
                    return
                raise
            assert time.monotonic() < deadline, "the revoked token is still accepted"
            await asyncio.sleep(0.5)


def toka(*args: str, kubeconfig: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toka.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": kubeconfig, **env},
    )


def kubectl_current_context(kubectl: Path, paths: str) -> str:
    said = subprocess.run(
        [str(kubectl), "config", "current-context"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": paths},
        check=True,
    )
    return said.stdout.strip()


def start_operator(
    paths: str, namespace: str, context: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *(sys.executable, "-m", "toka.cli", "operator", "--no-liveness"),
                *("--namespace", namespace, "--context", context),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": paths, "PYTHONUNBUFFERED": "1", **env},
            preexec_fn=die_with_parent,
        )


async def test_an_exec_plugin_user_is_its_service_account_and_no_more(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, plugin: Plugin, tmp_path: Path
) -> None:
    await make_account(kube, namespace, "laptop")
    path = single_kubeconfig(
        tmp_path / "config",
        controlplane,
        namespace,
        exec_user(controlplane, namespace, "laptop", plugin),
    )
    config = load_kubeconfig(path)
    assert config.namespace == namespace
    async with AsyncKube(config) as laptop:
        names = [c["metadata"]["name"] for c in (await laptop.list(CONFIGMAPS, namespace))["items"]]
        assert "kube-root-ca.crt" in names
        with pytest.raises(ApiError) as refused:
            await laptop.list(SECRETS, namespace)
        assert refused.value.status == 403
    async with AsyncKube(KubeConfig(server=config.server, ca_file=config.ca_file)) as anonymous:
        with pytest.raises(ApiError) as nobody:
            await anonymous.list(CONFIGMAPS, namespace)
        assert nobody.value.status in (401, 403)
    assert len(plugin.calls()) == 1


async def test_merged_files_pick_the_current_context_as_kubectl_does_or_the_one_named(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, plugin: Plugin, tmp_path: Path
) -> None:
    await make_account(kube, namespace, "laptop")
    paths = merged_kubeconfig(tmp_path, controlplane, namespace, "laptop", plugin)
    kubectl = controlplane.binaries.kubectl
    if kubectl is not None:
        assert kubectl_current_context(kubectl, paths) == "nobody"

    current = load_kubeconfig(paths)
    async with AsyncKube(current) as nobody:
        with pytest.raises(ApiError) as refused:
            await nobody.list(CONFIGMAPS, namespace)
        assert refused.value.status == 401

    named = load_kubeconfig(paths, context="laptop")
    assert named.namespace == namespace
    async with AsyncKube(named) as laptop:
        await laptop.list(CONFIGMAPS, namespace)

    with pytest.raises(ConfigError) as unknown:
        load_kubeconfig(paths, context="prod")
    assert "'prod'" in str(unknown.value)
    assert "(contexts: laptop, nobody;" in str(unknown.value)


async def test_the_cli_talks_to_the_cluster_as_the_context_given(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, plugin: Plugin, tmp_path: Path
) -> None:
    await make_account(kube, namespace, "laptop")
    await kube.create(SESSIONS, session("nightly", [agent("a")]), namespace)
    paths = merged_kubeconfig(tmp_path, controlplane, namespace, "laptop", plugin)

    status = toka("status", "-n", namespace, "--context", "laptop", kubeconfig=paths)
    assert status.returncode == 0, status.stderr
    assert "nightly" in status.stdout

    exported = toka(
        "export",
        "nightly",
        "-n",
        namespace,
        "--patch",
        "-",
        "--context",
        "laptop",
        kubeconfig=paths,
    )
    assert exported.returncode == 1
    assert "has no result yet" in exported.stderr

    as_current = toka("status", "-n", namespace, kubeconfig=paths)
    assert as_current.returncode == 1
    assert "401" in as_current.stdout + as_current.stderr

    missing = toka("status", "-n", namespace, "--context", "prod", kubeconfig=paths)
    assert missing.returncode == 2
    assert "no context 'prod'" in missing.stderr
    assert len(plugin.calls()) == 2  # one per command that chose `laptop`


async def test_a_token_revoked_during_a_run_is_replaced_by_running_the_plugin_again(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, plugin: Plugin, tmp_path: Path
) -> None:
    await make_account(kube, namespace, "laptop")
    path = single_kubeconfig(
        tmp_path / "config",
        controlplane,
        namespace,
        exec_user(controlplane, namespace, "laptop", plugin),
    )
    config = load_kubeconfig(path)
    async with AsyncKube(config) as laptop:
        await laptop.list(CONFIGMAPS, namespace)
        await revoke(kube, namespace, plugin, plugin.calls()[-1])

        await laptop.list(CONFIGMAPS, namespace)
        assert len(plugin.calls()) == 2

        await revoke(kube, namespace, plugin, plugin.calls()[-1])
        seen = [
            e["object"]["metadata"]["name"]
            async for e in laptop.watch(CONFIGMAPS, namespace, timeout_seconds=1)
            if e["type"] == "ADDED"
        ]
        assert "kube-root-ca.crt" in seen
        assert len(plugin.calls()) == 3


async def test_a_token_past_its_stated_expiry_is_obtained_again_before_it_is_sent(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, plugin: Plugin, tmp_path: Path
) -> None:
    # The library renews a token this long before its stated expiry, as kubectl does.
    early = EXPIRY_SKEW_PREVENTION_DELAY.total_seconds()
    await make_account(kube, namespace, "laptop")
    user = exec_user(controlplane, namespace, "laptop", plugin, stated=early + 4)
    config = load_kubeconfig(single_kubeconfig(tmp_path / "config", controlplane, namespace, user))
    started = time.monotonic()
    async with AsyncKube(config) as laptop:
        first = config.authorization()
        await laptop.list(CONFIGMAPS, namespace)
        await laptop.list(CONFIGMAPS, namespace)
        assert len(plugin.calls()) == 1  # not once per call

        await asyncio.sleep(max(0.0, started + 4.5 - time.monotonic()))
        await laptop.list(CONFIGMAPS, namespace)
        assert len(plugin.calls()) == 2
        assert config.authorization() != first


async def test_a_plugin_that_hangs_fails_each_call_in_bounded_time_naming_the_user(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, plugin: Plugin, tmp_path: Path
) -> None:
    early = EXPIRY_SKEW_PREVENTION_DELAY.total_seconds()
    await make_account(kube, namespace, "laptop")
    user = exec_user(controlplane, namespace, "laptop", plugin, stated=early + 2)
    path = single_kubeconfig(tmp_path / "config", controlplane, namespace, user)

    # At start: the command stops with an error naming the user, not waiting forever.
    plugin.hang(True)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"user 'me''s exec plugin .* within 1 s"):
        load_kubeconfig(path, plugin_timeout=1)
    assert time.monotonic() - started < 5
    assert plugin.calls() == []

    # Mid-run, when the token nears its stated expiry: each call fails within the timeout
    # (not just the first), the hung plugin is not started again while it runs, and
    # once it has ended the next call runs it again and goes through.
    plugin.hang(False)
    config = load_kubeconfig(path, plugin_timeout=1)
    started = time.monotonic()
    async with AsyncKube(config) as laptop:
        await laptop.list(CONFIGMAPS, namespace)
        plugin.hang(True)
        await asyncio.sleep(max(0.0, started + 2.5 - time.monotonic()))
        for _ in range(3):
            began = time.monotonic()
            with pytest.raises(ConfigError, match=r"user 'me''s exec plugin .* within 1 s"):
                await laptop.list(CONFIGMAPS, namespace)
            assert time.monotonic() - began < 3
        assert len(plugin.hung()) == 2  # the one at start, and one now
        plugin.hang(False)
        plugin.kill_hung()
        await asyncio.sleep(0.5)
        await laptop.list(CONFIGMAPS, namespace)
    assert len(plugin.calls()) == 2


async def test_inline_credentials_leave_no_files_behind(
    kube: AsyncKube, namespace: str, controlplane: ControlPlane, tmp_path: Path
) -> None:
    admin = yaml.safe_load(controlplane.admin_kubeconfig.read_text())["users"][0]["user"]
    assert controlplane.ca is not None

    def data(path: str | Path) -> str:
        return base64.b64encode(Path(path).read_bytes()).decode()

    path = write_kubeconfig(
        tmp_path / "inline",
        clusters={
            "toka-dev": {
                "server": controlplane.server,
                "certificate-authority-data": data(controlplane.ca.cert_path),
            }
        },
        users={
            "admin": {
                "client-certificate-data": data(admin["client-certificate"]),
                "client-key-data": data(admin["client-key"]),
            }
        },
        contexts={"admin": {"cluster": "toka-dev", "user": "admin"}},
        current="admin",
    )
    await kube.create(SESSIONS, session("inline", [agent("a")]), namespace)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    status = toka("status", "-n", namespace, kubeconfig=str(path), TMPDIR=str(scratch))
    assert status.returncode == 0, status.stderr
    assert "inline" in status.stdout
    assert list(scratch.iterdir()) == []


@pytest.fixture
async def cluster_admin_account(kube: AsyncKube, namespace: str) -> AsyncIterator[str]:
    """A ServiceAccount bound to cluster-admin, as an operator run from a laptop would be."""
    name = f"op-{uuid.uuid4().hex[:6]}"
    await kube.create(SERVICEACCOUNTS, {"metadata": {"name": "operator"}}, namespace)
    binding = {
        "metadata": {"name": name},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}],
    }
    await kube.create(CLUSTERROLEBINDINGS, binding)
    yield "operator"
    await kube.delete(CLUSTERROLEBINDINGS, name)


@pytest.fixture
def operator_log(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    log = tmp_path / "operator.log"
    yield log
    if failed(request) and log.exists():
        print(f"--- operator log (last 6000 characters)\n{log.read_text(errors='replace')[-6000:]}")


async def test_the_operator_runs_as_an_exec_plugin_context_and_logs_in_again_after_revocation(
    kube: AsyncKube,
    namespace: str,
    controlplane: ControlPlane,
    plugin: Plugin,
    cluster_admin_account: str,
    tmp_path: Path,
    operator_log: Path,
) -> None:
    paths = merged_kubeconfig(tmp_path, controlplane, namespace, cluster_admin_account, plugin)
    # Kopf only watches: its streams, reopened every few seconds here, are where it meets
    # the revoked credential.
    proc = start_operator(paths, namespace, "laptop", operator_log, TOKA_WATCH_TIMEOUT="5")
    try:
        await kube.create(SESSIONS, session("before", [agent("a")]), namespace)
        await wait_for(
            kube,
            AGENTS,
            agent_object_name("before", "a"),
            namespace,
            lambda _: True,
            what="created",
        )
        assert len(plugin.calls()) == 1  # one credential for Kopf and Toka's client

        await revoke(kube, namespace, plugin, plugin.calls()[0])
        await kube.create(SESSIONS, session("after", [agent("a")]), namespace)
        await wait_for(
            kube, AGENTS, agent_object_name("after", "a"), namespace, lambda _: True, what="created"
        )
        assert proc.poll() is None
        # Written after the 401 too: the session's status (Kopf watches, Toka writes).
        await wait_for(
            kube,
            SESSIONS,
            "after",
            namespace,
            lambda s: bool((s.get("status") or {}).get("phase")),
            what="a status",
        )
        deadline = time.monotonic() + 30
        while "Re-authentication has finished" not in operator_log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "Kopf's watches never logged in again"
            await asyncio.sleep(0.5)
        log = operator_log.read_text(errors="replace")
        assert "Ran out of valid credentials" not in log
        assert len(plugin.calls()) == 2  # the second after the 401, for both clients
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
