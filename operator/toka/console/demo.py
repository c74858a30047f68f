"""`toka demo`: a real session on the built-in dev cluster, from a fresh clone, one command.

It starts the dev cluster with its real node (or uses the one `toka dev up`
left running), installs the chart with helm so the operator runs in the
cluster as the chart's Deployment, applies `examples/sessions/build-stabilization.yaml` with its
replay recordings and sample workspace from `examples/demo/`, shows live
progress, prints a summary and exits 0 only if the session succeeded. It
tears down what it started unless `--keep`, and only that: a cluster another
run started stays up. Its session replaces any of the same name in the demo's
namespace (a previous run's, or one another run made a moment ago); nothing
else there is touched. With `--provider` it uses a real LLM instead of the
recordings, with the key from the environment.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
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
from toka.devcluster.binaries import ensure_helm
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
    await replace_session(kube, session, ns)
    return name


async def replace_session(kube: AsyncKube, session: JSON, ns: str, timeout: float = 120) -> None:
    """Create the session; one of its name already there is deleted, and gone (its agents
    with it), before the next try. Another run may create it in between: then again."""
    name = str(session["metadata"]["name"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await kube.create(SESSIONS, session, ns)
            return
        except ApiError as err:
            if not err.conflict or loop.time() > deadline:
                raise
        await kube.delete(SESSIONS, name, ns)
        while True:
            try:
                await kube.get(SESSIONS, name, ns)
            except ApiError as err:
                if not err.not_found:
                    raise
                break
            if loop.time() > deadline:
                raise TimeoutError(
                    f"AgentSession {ns}/{name} of an earlier run was not deleted within "
                    f"{timeout:.0f} s (a finalizer holds it; an older Toka's is removed only "
                    "while an operator runs)"
                )
            await asyncio.sleep(0.3)


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


RELEASE = "toka"
SYSTEM_NAMESPACE = "toka-system"


def helm_chart() -> Path:
    return examples_dir().parent / "helm" / "toka"


def _helm(kubeconfig: str, *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_helm()), *args],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def install_operator(kubeconfig: str, image: str) -> bool:
    """The chart, installed (or upgraded) with helm, its operator running in the cluster
    as a user's would; True if this call installed the release (it was not there)."""
    there = _helm(kubeconfig, "status", RELEASE, "-n", SYSTEM_NAMESPACE).returncode == 0
    repository, _, tag = image.rpartition(":")
    proc = _helm(
        kubeconfig,
        "upgrade",
        "--install",
        RELEASE,
        str(helm_chart()),
        "-n",
        SYSTEM_NAMESPACE,
        "--create-namespace",
        # `toka dev up` installed the CRDs and admission policies for kubectl users.
        "--take-ownership",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=IfNotPresent",
        "--wait",
        "--timeout",
        "5m",
    )
    if proc.returncode != 0:
        raise DemoError(f"helm install of the chart failed: {proc.stderr.strip()}")
    return not there


def uninstall_operator(kubeconfig: str) -> None:
    _helm(kubeconfig, "uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--wait", "--timeout", "2m")


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
    try:
        started = devctl.start(state_dir)
    except devctl.DevClusterError as err:
        console.print(f"[red]toka demo: {err}[/red]")
        return 1
    state = devctl.read_state(state_dir)
    kubeconfig = str(state["kubeconfig"])
    console.print(
        f"started the dev cluster ({state['server']}), node toka-dev: kubelet + containerd, "
        f"image {state.get('image')} built from the Dockerfile"
        if started
        else f"using the dev cluster already running in {state_dir} (it stays running)"
    )
    view: SessionView | None = None
    installed = False
    try:
        if state.get("node") != devctl.REAL:
            raise DemoError(
                f"the dev cluster running in {state_dir} has no real node (it was started with "
                "--node agent or none); stop it with `toka dev down` and run the demo again"
            )
        console.print("installing the chart with helm: the operator runs in the cluster")
        installed = install_operator(kubeconfig, str(state["image"]))
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
    except (ApiError, OSError, ExportError, DemoError, subprocess.TimeoutExpired) as err:
        console.print(f"[red]toka demo: {err}[/red]")
    finally:
        if not keep:
            if started:
                devctl.down(state_dir, pid=int(str(state["pid"])))
            elif installed:
                uninstall_operator(kubeconfig)
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
