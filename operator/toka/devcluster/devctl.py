"""`toka dev up|down|serve|env`: a development cluster a person can use with kubectl.

`up` builds or finds the binaries in the foreground (so progress shows), then
starts `toka dev serve` detached and waits for it to be ready. `serve` owns
the processes: the control plane dies with it (parent-death signal), and on
SIGTERM it stops everything in order. `down` signals it and removes the
state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from toka.api.admission import admission_manifests
from toka.api.crdgen import all_crds
from toka.devcluster.binaries import ensure_binaries
from toka.devcluster.controlplane import ControlPlane
from toka.kube.client import AsyncKube
from toka.kube.crds import apply_cluster_manifests, ensure_crds
from toka.kube.kubeconfig import load_kubeconfig

STATE_FILE = "state.json"
OPERATOR_PID = "operator.pid"


def default_state_dir() -> Path:
    from toka.cli import _default_state_dir

    return Path(_default_state_dir())


def _state(state_dir: Path) -> dict[str, object] | None:
    path = state_dir / STATE_FILE
    if not path.exists():
        return None
    data: dict[str, object] = json.loads(path.read_text())
    return data


def running(state_dir: Path) -> bool:
    state = _state(state_dir)
    return state is not None and _alive(int(str(state["pid"])))


def read_state(state_dir: Path) -> dict[str, object]:
    state = _state(state_dir)
    if state is None:
        raise RuntimeError(f"no dev cluster state in {state_dir}: run `toka dev up`")
    return state


def stop_operator(state_dir: Path) -> None:
    """The operator `toka demo` started (and `--keep` left running), if any."""
    pid_file = state_dir / OPERATOR_PID
    if not pid_file.exists():
        return
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def env(state_dir: Path) -> int:
    state = _state(state_dir)
    if state is None:
        print("no dev cluster is running; start one with `toka dev up`", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={state['kubeconfig']}")
    print(f"export PATH={state['bin_dir']}:$PATH")
    return 0


def up(state_dir: Path, *, with_node_agent: bool = True, timeout: float = 120) -> int:
    state = _state(state_dir)
    if state is not None and _alive(int(str(state["pid"]))):
        print(f"the dev cluster is already running (pid {state['pid']})")
        return env(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    ensure_binaries()
    argv = [sys.executable, "-m", "toka.cli", "dev", "--state-dir", str(state_dir), "serve"]
    if not with_node_agent:
        argv.append("--no-node-agent")
    with (state_dir / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while _state(state_dir) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (state_dir / "serve.log").read_text(errors="replace")[-3000:]
            print(f"the dev cluster did not start:\n{tail}", file=sys.stderr)
            if proc.poll() is None:
                proc.terminate()
            return 1
        time.sleep(0.2)
    state = _state(state_dir)
    assert state is not None
    print(
        f"dev cluster is up: {state['server']} (CRDs installed"
        f"{', node toka-dev ready' if with_node_agent else ''})"
    )
    print(f"kubeconfig: {state['kubeconfig']}")
    print("use it with:")
    print(f"  export KUBECONFIG={state['kubeconfig']} PATH={state['bin_dir']}:$PATH")
    print("  kubectl get toka -A")
    print("stop it with: toka dev down")
    return 0


def down(state_dir: Path, timeout: float = 30) -> int:
    stop_operator(state_dir)
    state = _state(state_dir)
    if state is None:
        print("no dev cluster is running")
        shutil.rmtree(state_dir, ignore_errors=True)
        return 0
    pid = int(str(state["pid"]))
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(state_dir, ignore_errors=True)
    print("dev cluster stopped")
    return 0


def serve(state_dir: Path, *, with_node_agent: bool = True) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    binaries = ensure_binaries()
    cp = ControlPlane(state_dir / "controlplane", binaries)
    cp.start()
    try:
        asyncio.run(_serve(cp, state_dir, with_node_agent, binaries.kubectl))
    finally:
        cp.stop()
    return 0


async def _serve(
    cp: ControlPlane, state_dir: Path, with_node_agent: bool, kubectl: Path | None
) -> None:
    config = load_kubeconfig(cp.admin_kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncKube(config) as kube:
        await ensure_crds(kube, all_crds().values())
        await apply_cluster_manifests(kube, admission_manifests())
        tasks = []
        if with_node_agent:
            from toka.devcluster.nodeagent import NodeAgent, require_root

            require_root()
            agent = NodeAgent(kube, state_dir / "node", hidden_paths=(cp.workdir,))
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(agent.run(stop, ready)))
            await ready.wait()
        state = {
            "pid": os.getpid(),
            "server": cp.server,
            "kubeconfig": str(cp.admin_kubeconfig),
            "bin_dir": str(kubectl.parent if kubectl else ""),
        }
        tmp = state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state))
        tmp.rename(state_dir / STATE_FILE)
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
