"""`toka dev up|down|serve|env`: a development cluster a person can use with kubectl.

`up` builds or finds the binaries in the foreground (so progress shows), then
starts `toka dev serve` detached and waits for it to be ready. `serve` owns
the processes: the control plane dies with it (parent-death signal), and on
SIGTERM it stops everything in order. `down` signals it and removes the
state directory.

Two runs may share a state directory (`make demo` in two terminals): `up` and
`down` hold a lock beside it, so the second `up` waits for the first's cluster
and adopts it instead of wiping its state, and `start` says which of the two
started it, so that only that one stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from toka.api.admission import admission_manifests
from toka.api.crdgen import all_crds
from toka.devcluster.binaries import ensure_binaries
from toka.devcluster.controlplane import ControlPlane
from toka.devcluster.image import Images
from toka.devcluster.node import KUBELET_ROOTS, RealCluster, node_images
from toka.kube.client import AsyncKube
from toka.kube.crds import apply_cluster_manifests, ensure_crds
from toka.kube.kubeconfig import load_kubeconfig

STATE_FILE = "state.json"
REAL, AGENT, NONE = "real", "agent", "none"
OPERATOR_PID = "operator.pid"


class DevClusterError(RuntimeError):
    """The dev cluster did not start; the message holds the tail of its log."""


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


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One `up` or `down` at a time per state directory, across processes. The lock
    file sits beside the directory, which both remove."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    with (state_dir.parent / f".{state_dir.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stop_operator(state_dir: Path, pid: int | None = None) -> None:
    """The operator `toka demo` started (and `--keep` left running), if any; with `pid`,
    that one only, and its pid file only if no other run's has replaced it."""
    pid_file = state_dir / OPERATOR_PID
    recorded = None
    with contextlib.suppress(FileNotFoundError, ValueError):
        recorded = int(pid_file.read_text())
    target = recorded if pid is None else pid
    if target is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(target, signal.SIGTERM)
    if recorded == target:
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


def start(state_dir: Path, *, node: str = REAL, timeout: float = 240) -> bool:
    """The dev cluster in `state_dir`, started unless one runs there: True if this call
    started it (its caller may stop it), False if one was running (another run's: leave it).
    `node`: `real` (kubelet + containerd), `agent` (the stand-in), `none` (no pods run)."""
    with _locked(state_dir):
        if running(state_dir):
            return False
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        ensure_binaries()
        if node == REAL:
            # In the foreground, so their progress shows; `serve` finds them cached.
            _real_node_inputs()
        argv = [sys.executable, "-m", "toka.cli", "dev", "--state-dir", str(state_dir), "serve"]
        argv += ["--node", node]
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
                if proc.poll() is None:
                    proc.terminate()
                raise DevClusterError(f"the dev cluster did not start:\n{tail}")
            time.sleep(0.2)
    return True


def up(state_dir: Path, *, node: str = REAL, timeout: float = 240) -> int:
    try:
        started = start(state_dir, node=node, timeout=timeout)
    except (DevClusterError, RuntimeError) as err:
        print(err, file=sys.stderr)
        return 1
    state = read_state(state_dir)
    if not started:
        print(f"the dev cluster is already running (pid {state['pid']})")
        return env(state_dir)
    what = {
        REAL: f", node toka-dev ready (kubelet + containerd, image {state.get('image')})",
        AGENT: ", node toka-dev ready (the stand-in node agent)",
    }
    print(f"dev cluster is up: {state['server']} (CRDs installed{what.get(node, '')})")
    print(f"kubeconfig: {state['kubeconfig']}")
    print("use it with:")
    print(f"  export KUBECONFIG={state['kubeconfig']} PATH={state['bin_dir']}:$PATH")
    print("  kubectl get toka -A")
    print("stop it with: toka dev down")
    return 0


def down(state_dir: Path, timeout: float = 30, *, pid: int | None = None) -> int:
    """Stop the dev cluster and remove its state; with `pid`, only if the cluster running
    there is still the one that `serve` process started."""
    with _locked(state_dir):
        state = _state(state_dir)
        if pid is not None and (state is None or int(str(state["pid"])) != pid):
            return 0
        stop_operator(state_dir)
        if state is None:
            print("no dev cluster is running")
            shutil.rmtree(state_dir, ignore_errors=True)
            return 0
        serve_pid = int(str(state["pid"]))
        if _alive(serve_pid):
            os.kill(serve_pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(serve_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(serve_pid):
                os.killpg(serve_pid, signal.SIGKILL)
        shutil.rmtree(state_dir, ignore_errors=True)
    print("dev cluster stopped")
    return 0


def netns_name(state_dir: Path) -> str:
    """The real node's network namespace: one per state directory, so a crashed run's is
    found (and replaced) by the next run there, and two clusters never share one."""
    return "toka-" + hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


def _real_node_inputs() -> tuple[Images, Path]:
    from toka.devcluster.binaries import ensure_node_binaries
    from toka.devcluster.image import default_repo_root, ensure_images
    from toka.devcluster.netpol import ensure_kube_router
    from toka.devcluster.nodeagent import require_root

    require_root()
    crictl = ensure_node_binaries()
    ensure_kube_router()
    return ensure_images(default_repo_root(), export=True), crictl


def serve(state_dir: Path, *, node: str = REAL) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    binaries = ensure_binaries()
    extra: dict[str, str] = {}
    cluster: RealCluster | None = None
    if node == REAL:
        images, crictl = _real_node_inputs()
        cluster = RealCluster(
            state_dir / "cluster",
            node_images(images),
            netns_name=netns_name(state_dir),
            crictl=crictl,
            binaries=binaries,
        )
        cp = cluster.cp
        extra = {
            "image": images.toka,
            "netns": cluster.netns,
            "kubelet_root": str(KUBELET_ROOTS / cluster.netns),
        }
    else:
        cp = ControlPlane(state_dir / "controlplane", binaries)
    try:
        if cluster is not None:
            cluster.start()
        else:
            cp.start()
        asyncio.run(_serve(cp, state_dir, node, binaries.kubectl, extra))
    finally:
        if cluster is not None:
            cluster.stop()
        else:
            cp.stop()
    return 0


async def _serve(
    cp: ControlPlane,
    state_dir: Path,
    node: str,
    kubectl: Path | None,
    extra: dict[str, str],
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
        if node == AGENT:
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
            "node": node,
            **extra,
        }
        tmp = state_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state))
        tmp.rename(state_dir / STATE_FILE)
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
