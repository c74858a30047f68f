"""The dev cluster's lifecycle: clean stop, no orphans, tokens refreshed, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import phase_is, py, toka_pod, wait_for
from toka.devcluster import binaries
from toka.devcluster.binaries import BinariesError, ensure_binaries
from toka.devcluster.controlplane import ControlPlane
from toka.devcluster.nodeagent import NodeAgent
from toka.kube.client import NAMESPACES, PODS, SERVICEACCOUNTS, ApiError, AsyncKube
from toka.kube.kubeconfig import load_kubeconfig

pytestmark = pytest.mark.controlplane


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_leaves_no_process_behind(private_controlplane: ControlPlane) -> None:
    pids = [p.pid for p in private_controlplane.procs.values()]
    assert len(pids) == 3  # etcd, kube-apiserver, kube-controller-manager
    assert all(_alive(p) for p in pids)
    private_controlplane.stop()
    assert not any(_alive(p) for p in pids)


def test_a_killed_parent_takes_its_control_plane_with_it(tmp_path: Path) -> None:
    """Even when a test run dies hard, no etcd or apiserver is orphaned."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from toka.devcluster.controlplane import ControlPlane
        cp = ControlPlane({str(tmp_path / "cp")!r}).start()
        print(json.dumps([p.pid for p in cp.procs.values()]), flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pids = json.loads(parent.stdout.readline())
    assert all(_alive(p) for p in pids)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)


def test_without_binaries_or_go_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKA_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-go-here"))
    with pytest.raises(BinariesError) as err:
        ensure_binaries(log=False)
    message = str(err.value)
    assert "Install Go" in message
    assert "KUBEBUILDER_ASSETS" in message
    assert binaries.KUBERNETES_VERSION in message


def test_kubebuilder_assets_without_the_binaries_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(BinariesError, match="has no kube-apiserver and etcd"):
        ensure_binaries(log=False)


def test_kubebuilder_assets_is_used_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = ensure_binaries(log=False)
    for name, src in (("kube-apiserver", found.kube_apiserver), ("etcd", found.etcd)):
        (tmp_path / name).symlink_to(src)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    assets = ensure_binaries(log=False)
    assert assets.kube_apiserver == tmp_path / "kube-apiserver"
    assert assets.etcd == tmp_path / "etcd"


READ_TOKEN_TWICE = textwrap.dedent(
    """
    import time
    path = '/var/run/secrets/kubernetes.io/serviceaccount/token'
    first = open(path).read()
    deadline = time.time() + 30
    while open(path).read() == first and time.time() < deadline:
        time.sleep(0.2)
    print('REFRESHED', open(path).read() != first)
    """
)


async def test_the_projected_token_is_refreshed_before_it_expires(
    private_controlplane: ControlPlane, tmp_path: Path
) -> None:
    # A node agent of this test's own, refreshing at 0.5% of the lifetime
    # (600 s → 3 s) instead of the kubelet's 80%, so the test sees a rotation.
    config = load_kubeconfig(private_controlplane.admin_kubeconfig)
    async with AsyncKube(config) as kube:
        await kube.create(NAMESPACES, {"metadata": {"name": "rot"}})
        deadline = time.monotonic() + 30
        while True:
            try:
                await kube.get(SERVICEACCOUNTS, "default", "rot")
                break
            except ApiError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        agent = NodeAgent(kube, tmp_path / "node", token_refresh_fraction=0.005)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(agent.run(stop, ready))
        await ready.wait()
        try:
            pod = toka_pod(
                "rotate",
                [
                    py(
                        "main",
                        READ_TOKEN_TWICE,
                        volumeMounts=[
                            {
                                "name": "token",
                                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            }
                        ],
                    )
                ],
                volumes=[
                    {
                        "name": "token",
                        "projected": {
                            "sources": [
                                {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}}
                            ]
                        },
                    }
                ],
            )
            await kube.create(PODS, pod, "rot")
            done = await wait_for(kube, PODS, "rotate", "rot", phase_is("Succeeded", "Failed"))
            log = next((tmp_path / "node" / "pods").glob("rot_rotate_*")) / "logs" / "main.log"
            assert done["status"]["phase"] == "Succeeded", log.read_text()
            assert "REFRESHED True" in log.read_text()
        finally:
            stop.set()
            await task
