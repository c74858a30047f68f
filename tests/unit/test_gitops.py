"""The Argo CD health checks in docs/gitops.md, run by a real Lua interpreter (lupa)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import LuaRuntime

DOC = Path(__file__).resolve().parents[2] / "docs" / "gitops.md"
JSON = dict[str, Any]


def health_checks() -> dict[str, str]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    cm = next(yaml.safe_load(b) for b in blocks if "argocd-cm" in b)
    return {k.rsplit("_", 1)[1]: v for k, v in cm["data"].items()}


def run(kind: str, obj: JSON) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(health_checks()[kind])
    return result["status"], result["message"]


def session(status: JSON | None, generation: int = 1) -> JSON:
    obj: JSON = {"metadata": {"name": "s", "generation": generation}}
    if status is not None:
        obj["status"] = status
    return obj


CASES = [
    ("no status yet", None, 1, "Progressing"),
    ("running", {"phase": "Running", "observedGeneration": 1}, 1, "Progressing"),
    ("succeeded", {"phase": "Succeeded", "observedGeneration": 1, "message": "4/4"}, 1, "Healthy"),
    ("failed", {"phase": "Failed", "observedGeneration": 1}, 1, "Degraded"),
    ("suspended", {"phase": "Suspended", "observedGeneration": 1}, 1, "Suspended"),
    (
        "an old success for a newer spec",
        {"phase": "Succeeded", "observedGeneration": 1},
        2,
        "Progressing",
    ),
]


@pytest.mark.parametrize(
    ("case", "status", "generation", "health"), CASES, ids=[c[0] for c in CASES]
)
def test_argo_cd_sees_a_session_as_the_operator_reports_it(
    case: str, status: JSON | None, generation: int, health: str
) -> None:
    got, message = run("AgentSession", session(status, generation))
    assert got == health
    assert message


@pytest.mark.parametrize(
    ("phase", "health"),
    [("Succeeded", "Healthy"), ("Failed", "Degraded"), ("Pending", "Progressing")],
)
def test_argo_cd_sees_a_standalone_agent_too(phase: str, health: str) -> None:
    assert run("Agent", session({"phase": phase}))[0] == health
