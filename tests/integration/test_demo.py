"""`toka demo` as a person runs it (`make demo`), then checked against the API server.

The demo starts its own dev cluster, so this test reads the outcome from
that cluster (`--keep`), not from the printed text alone, and stops it.
Runs that overlap (`make demo` in two terminals) share one cluster, the
demo's session replaces its own namesake, and only a cluster's starter stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from toka.console import demo as demo_module
from toka.console.demo import result_path
from toka.console.view import compute_session_view
from toka.devcluster import devctl
from toka.kube.client import AGENTS, SESSIONS, AsyncKube, Resource
from toka.kube.kubeconfig import load_kubeconfig

pytestmark = pytest.mark.controlplane
REPO = Path(__file__).resolve().parents[2]
RECORDINGS = REPO / "examples" / "demo" / "recordings"


def toka(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toka.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        toka("dev", "--state-dir", str(state), "down", timeout=60)


def recorded_tokens() -> int:
    return sum(
        t["usage"]["input_tokens"] + t["usage"]["output_tokens"]
        for path in RECORDINGS.glob("*.json")
        for t in json.loads(path.read_text())["turns"]
    )


def git_clone(bundle: Path, dest: Path) -> None:
    subprocess.run(["git", "clone", "-q", str(bundle), str(dest)], check=True)


def git_apply(patch: Path, where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "apply", str(patch)], cwd=where, capture_output=True, text=True, check=False
    )


def run_tests(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unittest", "discover", "-s", "tests"],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )


async def test_the_demo_runs_build_stabilization_to_success(
    state_dir: Path, tmp_path: Path
) -> None:
    demo = toka("demo", "--state-dir", str(state_dir), "--keep")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "replay" in demo.stdout  # it says which LLM it uses

    state = json.loads((state_dir / "state.json").read_text())
    async with AsyncKube(load_kubeconfig(state["kubeconfig"])) as kube:
        session = await kube.get(SESSIONS, "build-stabilization", "toka-demo")
        agents = (await kube.list(AGENTS, "toka-demo"))["items"]
    status = session["status"]
    assert status["phase"] == "Succeeded"
    assert status["progress"] == "5/5"
    assert {m["name"]: m["phase"] for m in status["members"]} == {
        "build-fixer": "Succeeded",
        "security-review": "Succeeded",
        "test-coverage": "Succeeded",
        "docs": "Succeeded",
    }
    assert status["usage"]["inputTokens"] + status["usage"]["outputTokens"] == recorded_tokens()
    assert all(a["status"]["run"]["denials"]["count"] == 0 for a in agents)
    docs = next(a for a in agents if a["spec"]["name"] == "docs")
    assert [h["agent"] for h in docs["spec"]["handoff"]] == ["security-review", "test-coverage"]

    # Each agent's workspace as it left it: the commit it made of it, from the session's
    # history (the real kubelet removes a finished pod's emptyDir, so the result is the record).
    bundle = tmp_path / "history.bundle"
    got = toka(
        "export",
        "build-stabilization",
        "-n",
        "toka-demo",
        "--kubeconfig",
        state["kubeconfig"],
        "--bundle",
        str(bundle),
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    history = tmp_path / "history"
    git_clone(bundle, history)
    commits = {m["name"]: m["result"]["commit"] for m in status["members"]}

    def workspace_of(name: str) -> Path:
        tree = tmp_path / f"ws-{name}"
        if not tree.exists():
            tree.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(history), "archive", commits[name]],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
        return tree

    # The build-fixer really fixed the file, and the reviewers worked on the fixed code.
    for name in ("build-fixer", "security-review", "test-coverage", "docs"):
        fixed = (workspace_of(name) / "src" / "calc.py").read_text()
        assert "return a / b" in fixed, name
        assert "eval(" not in fixed, name
    report = (workspace_of("security-review") / "reports" / "security.md").read_text()
    assert "Decimal" in report
    assert "Decimal" in (workspace_of("security-review") / "src" / "calc.py").read_text()
    # The regression tests pass where test-coverage wrote them, as its summary says.
    suite = run_tests(workspace_of("test-coverage"))
    assert suite.returncode == 0, suite.stderr
    assert "Ran 5 tests" in suite.stderr
    coverage = next(a for a in agents if a["spec"]["name"] == "test-coverage")
    assert "5 tests, passes" in coverage["status"]["run"]["tasks"][0]["summary"]
    changelog = (workspace_of("docs") / "docs" / "CHANGELOG.md").read_text()
    assert "divide()" in changelog
    assert (workspace_of("docs") / "tests" / "test_regression.py").is_file()
    assert (workspace_of("docs") / "reports" / "security.md").is_file()

    # The result reaches the user: a patch that applies to the sample and makes it pass.
    assert status["result"]["commit"] == status["members"][-1]["result"]["commit"]
    assert "toka export" in demo.stdout
    patch = state_dir / "exported.patch"
    exported = toka(
        "export",
        "build-stabilization",
        "-n",
        "toka-demo",
        "--kubeconfig",
        state["kubeconfig"],
        "--patch",
        str(patch),
        timeout=60,
    )
    assert exported.returncode == 0, exported.stderr
    sample = tmp_path / "sample"
    shutil.copytree(REPO / "examples" / "demo" / "workspace", sample)
    assert run_tests(sample).returncode != 0  # the sample's build fails as shipped
    applied = git_apply(patch, sample)
    assert applied.returncode == 0, applied.stderr
    fixed_suite = run_tests(sample)
    assert fixed_suite.returncode == 0, fixed_suite.stderr
    assert "Ran 5 tests" in fixed_suite.stderr
    assert sorted(
        str(p.relative_to(sample))
        for p in sample.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ) == [
        "README.md",
        "docs/CHANGELOG.md",
        "reports/security.md",
        "src/calc.py",
        "tests/test_calc.py",
        "tests/test_regression.py",
    ]
    # The demo saved the same patch itself, for runs without --keep.
    saved = result_path(state_dir, "build-stabilization")
    assert saved.read_bytes() == patch.read_bytes()
    assert str(saved) in demo.stdout

    # The summary a person sees names each agent's outcome.
    view = compute_session_view(session, agents)
    for row in view.agents:
        assert row.name in demo.stdout
    assert demo.stdout.count("Succeeded") >= 5

    shown = toka(
        "status",
        "build-stabilization",
        "-n",
        "toka-demo",
        "--kubeconfig",
        state["kubeconfig"],
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "build-stabilization" in shown.stdout
    assert "5/5" in shown.stdout


class AnotherRunCreatesItFirst(AsyncKube):
    """A client whose first create of a session is preceded by another run's: the race of
    two demos, each past its delete, both creating."""

    other_uid = ""

    async def create(self, res: Resource, body: Any, *args: Any, **kwargs: Any) -> Any:
        if res is SESSIONS and not self.other_uid:
            made = await super().create(res, body, *args, **kwargs)
            self.other_uid = made["metadata"]["uid"]
        return await super().create(res, body, *args, **kwargs)


async def test_the_demo_replaces_its_session_even_when_another_run_just_created_it(
    kube: AsyncKube, namespace: str
) -> None:
    examples = demo_module.examples_dir()
    name = await demo_module.apply_demo(kube, namespace, examples, None)
    first = (await kube.get(SESSIONS, name, namespace))["metadata"]["uid"]
    async with AnotherRunCreatesItFirst(kube.config) as racing:
        assert await demo_module.apply_demo(racing, namespace, examples, None) == name
    assert racing.other_uid
    session = await kube.get(SESSIONS, name, namespace)
    assert session["metadata"]["uid"] not in (first, racing.other_uid)
    assert session["spec"]["workstream"] == "build-stabilization"
    listed = await kube.list(SESSIONS, namespace)
    assert [s["metadata"]["name"] for s in listed["items"]] == [name]


def serve_processes(state_dir: Path) -> list[int]:
    """The `toka dev serve` processes running the cluster of `state_dir`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and str(state_dir).encode() in argv:
            found.append(int(proc.name))
    return found


def start_toka(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "toka.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_runs_started_together_share_one_cluster_and_a_demo_that_adopted_it_leaves_it_up(
    state_dir: Path,
) -> None:
    ups = [
        start_toka("dev", "--state-dir", str(state_dir), "up", "--no-node-agent") for _ in range(2)
    ]
    said = [up.communicate(timeout=300)[0] for up in ups]
    assert [up.returncode for up in ups] == [0, 0], said
    assert sum("already running" in text for text in said) == 1, said
    serve_pid = int(str(devctl.read_state(state_dir)["pid"]))
    assert serve_processes(state_dir) == [serve_pid]

    # A third run, the demo, adopts that cluster and leaves it as it found it: up. This one
    # has no real node (the demo needs one), which the demo says before touching anything.
    demo = start_toka("demo", "--state-dir", str(state_dir), "--timeout", "3")
    out = demo.communicate(timeout=300)[0]
    assert demo.returncode == 1, out
    assert "stays running" in out, out
    assert "has no real node" in out, out
    assert devctl.running(state_dir)
    assert serve_processes(state_dir) == [serve_pid]

    async def still_served() -> None:
        state = devctl.read_state(state_dir)
        async with AsyncKube(load_kubeconfig(str(state["kubeconfig"]))) as kube:
            await kube.list(SESSIONS, "toka-demo")

    asyncio.run(still_served())
