"""`toka demo`: a real session on the built-in dev cluster, from a fresh clone, one command.

It starts the dev cluster (or uses the one `toka dev up` left running), runs
the operator, applies `examples/sessions/build-stabilization.yaml` with its
replay recordings and sample workspace from `examples/demo/`, shows live
progress, prints a summary and exits 0 only if the session succeeded. It
tears down what it started unless `--keep`. With `--provider` it uses a real
LLM instead of the recordings, with the key from the environment.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from toka.console.export import ExportError, export
from toka.console.status import read_views
from toka.console.view import SessionView, render_session
from toka.devcluster import devctl
from toka.kube.client import CONFIGMAPS, NAMESPACES, SECRETS, SESSIONS, ApiError, AsyncKube
from toka.kube.kubeconfig import load_kubeconfig
from toka.tools import sandbox

JSON = dict[str, Any]
SESSION_NAME = "build-stabilization"
SESSION_FILE = Path("sessions") / f"{SESSION_NAME}.yaml"
PROVIDERS = {
    # provider: (key variable, default model)
    "anthropic": ("ANTHROPIC_API_KEY", "claude-sonnet-4-5"),
    "openai": ("OPENAI_API_KEY", "gpt-4o"),
    "openai-compatible": ("OPENAI_API_KEY", "llama3.1"),
}


class DemoError(Exception):
    """Something the person must fix before the demo can run; the message says what."""


def examples_dir() -> Path:
    here = Path(__file__).resolve().parents[3] / "examples"
    if not (here / SESSION_FILE).exists():
        raise DemoError(f"examples not found at {here}: run `toka demo` from a clone of Toka")
    return here


def workspace_configmap(root: Path) -> JSON:
    """Files of the sample workspace as ConfigMap keys (`src/calc.py` is `src__calc.py`)."""
    data = {
        str(p.relative_to(root)).replace("/", "__"): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    return {"metadata": {"name": "sample-workspace"}, "data": data}


def llm_override(provider: str, env: dict[str, str]) -> tuple[JSON, JSON | None]:
    """The session's `llm` for a real provider, and the Secret holding its key (if any)."""
    key_var, default_model = PROVIDERS[provider]
    llm: JSON = {"provider": provider, "model": env.get("LLM_MODEL") or default_model}
    key = env.get(key_var)
    if provider == "openai-compatible":
        if not env.get("LLM_BASE_URL"):
            raise DemoError("--provider openai-compatible needs LLM_BASE_URL (e.g. Ollama's)")
        llm["baseURL"] = env["LLM_BASE_URL"]
    elif not key:
        raise DemoError(f"--provider {provider} needs {key_var} in the environment")
    secret = None
    if key:
        secret = {"metadata": {"name": "demo-llm-key"}, "stringData": {"api-key": key}}
        llm["apiKeySecretRef"] = {"name": "demo-llm-key", "key": "api-key"}
    return llm, secret


async def _put(kube: AsyncKube, res: Any, body: JSON, ns: str) -> None:
    try:
        await kube.create(res, body, ns)
    except ApiError as err:
        if not err.conflict:
            raise
        await kube.replace(res, body["metadata"]["name"], body, ns)


async def apply_demo(kube: AsyncKube, ns: str, examples: Path, provider: str | None) -> str:
    """Namespace, recordings, workspace and a fresh session; returns the session's name."""
    try:
        await kube.create(NAMESPACES, {"metadata": {"name": ns}})
    except ApiError as err:
        if not err.conflict:
            raise
    session: JSON = yaml.safe_load((examples / SESSION_FILE).read_text())
    name = str(session["metadata"]["name"])
    recordings = {
        p.name: p.read_text() for p in sorted((examples / "demo" / "recordings").glob("*.json"))
    }
    replay_ref = session["spec"]["llm"]["replay"]["configMapRef"]["name"]
    await _put(kube, CONFIGMAPS, {"metadata": {"name": replay_ref}, "data": recordings}, ns)
    await _put(kube, CONFIGMAPS, workspace_configmap(examples / "demo" / "workspace"), ns)
    if provider is not None:
        llm, secret = llm_override(provider, dict(os.environ))
        if secret is not None:
            await _put(kube, SECRETS, secret, ns)
        session["spec"]["llm"] = llm
    try:
        await kube.delete(SESSIONS, name, ns)
        while True:  # a fresh run: the previous one's agents go with it
            await kube.get(SESSIONS, name, ns)
            await asyncio.sleep(0.3)
    except ApiError as err:
        if not err.not_found:
            raise
    await kube.create(SESSIONS, session, ns)
    return name


def summary(view: SessionView) -> Table:
    table = Table(title=f"{view.name}: {view.phase}", title_justify="left")
    for col in ("agent", "phase", "tasks", "tokens", "result"):
        table.add_column(col, overflow="fold")
    for row in view.agents:
        table.add_row(row.name, row.phase, f"{row.done}/{row.total}", f"{row.tokens:,}", row.note)
    return table


async def follow(
    kube: AsyncKube, ns: str, name: str, console: Console, timeout: float
) -> SessionView:
    deadline = time.monotonic() + timeout
    while True:
        try:
            (view,) = await read_views(kube, ns, name)
            break
        except ApiError as err:
            if not err.transient or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    with Live(render_session(view), console=console, refresh_per_second=4) as live:
        while not view.finished and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                (view,) = await read_views(kube, ns, name)
            except (ApiError, OSError):
                continue
            live.update(render_session(view))
    if not console.is_terminal:
        console.print()  # Live's last frame ends without a newline off a terminal
    return view


def result_path(state_dir: Path, session: str) -> Path:
    return state_dir.parent / "results" / f"{session}.patch"


def start_operator(state_dir: Path, kubeconfig: str, ns: str) -> subprocess.Popen[bytes]:
    with (state_dir / "operator.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "toka.cli", "operator", "--no-liveness", "-n", ns],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": kubeconfig},
            start_new_session=True,  # --keep leaves it running; `toka dev down` stops it
        )
    (state_dir / devctl.OPERATOR_PID).write_text(str(proc.pid))
    return proc


def run(
    state_dir: Path,
    *,
    keep: bool = False,
    provider: str | None = None,
    namespace: str = "toka-demo",
    timeout: float = 900,
) -> int:
    console = Console()
    try:
        examples = examples_dir()
        if provider is not None:
            llm_override(provider, dict(os.environ))  # fail before starting anything
        if sandbox.abi_version() < 1:
            # The dev node's pods run on this kernel: their programs would all be refused.
            raise DemoError(
                "this machine's kernel has no Landlock, which confines the programs the "
                "agents run (Linux 5.13+ with Landlock enabled, e.g. lsm=...,landlock); "
                "see the README's Security model"
            )
    except DemoError as err:
        console.print(f"[red]toka demo: {err}[/red]")
        return 2
    console.print(
        "[bold]toka demo[/bold]: LLM "
        + (
            f"provider {provider} (a real one, key from the environment)"
            if provider
            else "replay (recordings in examples/demo/recordings)"
        )
    )
    running = devctl.running(state_dir)
    if not running and devctl.up(state_dir) != 0:
        return 1
    state = devctl.read_state(state_dir)
    kubeconfig = str(state["kubeconfig"])
    devctl.stop_operator(state_dir)  # one operator: a previous --keep run's goes
    start_operator(state_dir, kubeconfig, namespace)
    view: SessionView | None = None
    try:
        view = asyncio.run(_run(kubeconfig, namespace, examples, provider, console, timeout))
        console.print(summary(view))
        if not view.finished:
            console.print(f"[red]the session did not finish within {timeout:.0f} s[/red]")
        elif view.result:
            # Beside the cluster's state, which goes with the cluster: the result stays.
            patch = result_path(state_dir, view.name)
            patch.parent.mkdir(parents=True, exist_ok=True)
            said = asyncio.run(
                export(load_kubeconfig(kubeconfig), namespace, view.name, patch=str(patch))
            )
            console.print(
                f"[bold]result[/bold] {view.result}\n{said}\n"
                f"try it: cp -r examples/demo/workspace /tmp/calc && git -C /tmp/calc apply "
                f"{patch} && (cd /tmp/calc && python3 -m unittest discover -s tests)",
                soft_wrap=True,  # paths and commands stay whole, to be copied
            )
    except (ApiError, OSError, ExportError) as err:
        console.print(f"[red]toka demo: {err}[/red]")
    finally:
        if not keep:
            devctl.stop_operator(state_dir)
            if not running:
                devctl.down(state_dir)
    if keep:
        console.print(
            f"kept running. Try:\n  export KUBECONFIG={kubeconfig} "
            f"PATH={state['bin_dir']}:$PATH\n  kubectl get toka -n {namespace}\n"
            f"  toka status -n {namespace} --watch\n"
            f"  toka export {SESSION_NAME} -n {namespace} --dir /tmp/result\n"
            "stop it with: toka dev down"
        )
    return 0 if view is not None and view.phase == "Succeeded" else 1


async def _run(
    kubeconfig: str,
    ns: str,
    examples: Path,
    provider: str | None,
    console: Console,
    timeout: float,
) -> SessionView:
    async with AsyncKube(load_kubeconfig(kubeconfig)) as kube:
        name = await apply_demo(kube, ns, examples, provider)
        console.print(f"applied AgentSession {ns}/{name}; following it")
        return await follow(kube, ns, name, console, timeout)
