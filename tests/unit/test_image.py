"""The container image: hadolint-clean, and its entrypoint is what the pods and tests run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from toka.api.models import Agent
from toka.cli import build_parser
from toka.contract import ENTRYPOINT
from toka.controller.builders.pod import PodConfig, build_agent_pod

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
AGENT = Agent.model_validate(
    {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "a", "namespace": "ns", "uid": "u"},
        "spec": {"tasks": [{"name": "t", "description": "x"}]},
    }
)


def instruction(name: str) -> str:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(name + " ")]
    return lines[-1][len(name) + 1 :]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_dockerfile_passes_hadolint() -> None:
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readmes_derived_tools_image_passes_hadolint(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    (snippet,) = re.findall(r"```dockerfile\n(.*?)```", readme, flags=re.S)
    (tmp_path / "Dockerfile").write_text(snippet)
    done = hadolint(tmp_path / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_as_a_non_root_user_with_toka_as_its_entrypoint() -> None:
    assert tuple(json.loads(instruction("ENTRYPOINT"))) == ENTRYPOINT
    assert re.fullmatch(r"\d+", instruction("USER"))
    assert int(instruction("USER")) != 0
    assert "FROM" in DOCKERFILE.read_text().split("AS build", 1)[1]  # multi-stage
    assert re.search(r"apt-get install[^\n]*\bgit\b", DOCKERFILE.read_text())  # workspace.git


def test_every_container_of_an_agent_pod_runs_a_toka_subcommand() -> None:
    pod = build_agent_pod(AGENT, 1, PodConfig())
    containers = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    parser = build_parser()
    for c in containers:
        assert "command" not in c, c["name"]  # the image's entrypoint runs
        assert parser.parse_args(c["args"]).command == c["args"][0], c["name"]
    tools = next(c for c in containers if c["name"] == "tools")
    assert tools["startupProbe"]["exec"]["command"][: len(ENTRYPOINT)] == list(ENTRYPOINT)


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored
    assert {"!pyproject.toml", "!constraints.txt", "!operator/"} <= set(ignored)


def test_the_operators_llm_defaults_reach_the_kernel_and_nothing_else() -> None:
    config = PodConfig(llm_defaults=(("LLM_PROVIDER", "openai"), ("LLM_MODEL", "gpt-4o")))
    pod = build_agent_pod(AGENT, 1, config)
    by_name = {c["name"]: c for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]}
    kernel_env = {e["name"]: e.get("value") for e in by_name["kernel"]["env"]}
    assert (kernel_env["LLM_PROVIDER"], kernel_env["LLM_MODEL"]) == ("openai", "gpt-4o")
    for other in ("agent", "tools"):
        assert not any(e["name"].startswith("LLM_") for e in by_name[other].get("env", []))
