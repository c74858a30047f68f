"""`toka demo` as a person runs it (`make demo`), then checked against the API server.

The demo starts its own dev cluster, so this test reads the outcome from
that cluster (`--keep`), not from the printed text alone, and stops it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from toka.console.view import compute_session_view
from toka.kube.client import AGENTS, SESSIONS, AsyncKube
from toka.kube.config import load_kubeconfig

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


async def test_the_demo_runs_build_stabilization_to_success(state_dir: Path) -> None:
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

    # The build-fixer really fixed the file and ran the suite in its workspace.
    fixer = next(a for a in agents if a["spec"]["name"] == "build-fixer")
    pod_dir = next((state_dir / "node" / "pods").glob(f"toka-demo_{fixer['status']['podName']}_*"))
    fixed = (pod_dir / "volumes" / "workspace" / "src" / "calc.py").read_text()
    assert "return a / b" in fixed
    assert "eval(" not in fixed

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
