"""The workspace as git, with real git: bases, merges along the DAG, conflicts, resume."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from toka.tools import gitws
from toka.tools.ops import AS_IS, prepare_workspace

SEED = [("README.md", b"# calc\n"), ("src__calc.py", b"def add(a, b):\n    return a + b\n")]


def agent_work(
    tmp: Path, name: str, inputs: list[gitws.Input], edits: dict[str, str]
) -> tuple[Path, gitws.Input]:
    """An agent's pod in miniature: prepare, edit, commit, leave a bundle."""
    ws = tmp / name
    prepared = gitws.prepare(ws, seed=SEED, inputs=inputs, author=name)
    for rel, text in edits.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    commit = gitws.commit_all(ws, f"work: {name}", name) or prepared.start
    bundle = tmp / f"{name}.bundle"
    bundle.write_bytes(gitws.bundle(ws, prepared.base))
    return ws, gitws.Input(agent=name, commit=commit, bundle=str(bundle))


def test_a_configmap_base_is_the_same_commit_wherever_it_is_made(tmp_path: Path) -> None:
    assert gitws.init_base(tmp_path / "a", SEED) == gitws.init_base(tmp_path / "b", SEED)


def test_a_chain_carries_each_agents_files_to_the_next(tmp_path: Path) -> None:
    _, first = agent_work(tmp_path, "first", [], {"one.txt": "1\n"})
    _, second = agent_work(tmp_path, "second", [first], {"two.txt": "2\n"})
    third, _ = agent_work(tmp_path, "third", [second], {})
    assert (third / "one.txt").read_text() == "1\n"
    assert (third / "two.txt").read_text() == "2\n"


def test_a_diamond_join_sees_both_branches(tmp_path: Path) -> None:
    _, root = agent_work(tmp_path, "root", [], {"src/calc.py": "def add(a, b):\n    return a+b\n"})
    _, left = agent_work(tmp_path, "left", [root], {"left.txt": "L\n"})
    _, right = agent_work(tmp_path, "right", [root], {"right.txt": "R\n"})
    join, _ = agent_work(tmp_path, "join", [left, right], {})
    assert {p.name for p in join.iterdir()} >= {"left.txt", "right.txt", "src", "README.md"}


def test_parallel_edits_of_the_same_lines_fail_the_join_naming_the_file(tmp_path: Path) -> None:
    _, left = agent_work(tmp_path, "left", [], {"src/calc.py": "LEFT\n"})
    _, right = agent_work(tmp_path, "right", [], {"src/calc.py": "RIGHT\n"})
    with pytest.raises(gitws.GitError) as caught:
        gitws.prepare(tmp_path / "join", seed=SEED, inputs=[left, right], author="join")
    assert caught.value.reason == "MergeConflict"
    assert caught.value.paths == ["src/calc.py"]
    assert "src/calc.py" in str(caught.value)
    # Nothing half-applied: the work tree is the first input, clean.
    status = gitws.run_git(tmp_path / "join", "status", "--porcelain").stdout
    assert status == b""
    assert (tmp_path / "join" / "src" / "calc.py").read_text() == "LEFT\n"


def test_a_result_describes_its_commit_and_what_changed_since_the_base(tmp_path: Path) -> None:
    ws, result = agent_work(
        tmp_path, "fixer", [], {"src/calc.py": "def add(a, b):\n    return b + a\n", "n.txt": "x\n"}
    )
    base = gitws.init_base(tmp_path / "base", SEED)
    stat = gitws.describe(ws, base)
    assert stat["commit"] == result.commit
    assert stat["parents"] == [base]
    assert (stat["filesChanged"], stat["insertions"], stat["deletions"]) == (2, 2, 1)
    author = gitws.run_git(ws, "log", "-1", "--format=%an %s").stdout.decode().strip()
    assert author == "fixer work: fixer"


def test_a_new_attempt_resumes_from_its_own_last_result(tmp_path: Path) -> None:
    _, dep = agent_work(tmp_path, "dep", [], {"dep.txt": "d\n"})
    _, earlier = agent_work(tmp_path, "me", [dep], {"half.txt": "done before\n"})
    again = gitws.prepare(tmp_path / "again", seed=SEED, inputs=[dep], resume=earlier, author="me")
    assert again.resumed
    assert again.start == earlier.commit
    assert (tmp_path / "again" / "half.txt").read_text() == "done before\n"


def test_a_bundle_holding_another_commit_is_refused(tmp_path: Path) -> None:
    _, dep = agent_work(tmp_path, "dep", [], {"dep.txt": "d\n"})
    wrong = gitws.Input(agent="dep", commit="f" * 40, bundle=dep.bundle)
    with pytest.raises(gitws.GitError, match="holds") as caught:
        gitws.prepare(tmp_path / "x", seed=SEED, inputs=[wrong], author="x")
    assert caught.value.reason == "ResultMissing"


def test_the_workspace_cannot_configure_gits_hooks(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    gitws.prepare(ws, seed=SEED, author="a")
    hook = ws / ".git" / "hooks" / "pre-commit"
    marker = tmp_path / "hook-ran"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    subprocess.run(["git", "-C", str(ws), "config", "core.hooksPath", ".git/hooks"], check=True)
    (ws / "f.txt").write_text("x")
    assert gitws.commit_all(ws, "t", "a") is not None
    assert not marker.exists()


def test_the_tools_sidecar_reports_a_conflict_instead_of_exiting(tmp_path: Path) -> None:
    _, left = agent_work(tmp_path, "left", [], {"src/calc.py": "LEFT\n"})
    _, right = agent_work(tmp_path, "right", [], {"src/calc.py": "RIGHT\n"})
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    for key, data in SEED:
        (seed_dir / key).write_bytes(data)
    inputs = []
    for result in (left, right):  # as the pod mounts each result ConfigMap
        mount = tmp_path / "inputs" / result.agent
        mount.mkdir(parents=True)
        (mount / "bundle").write_bytes(Path(result.bundle or "").read_bytes())
        inputs.append({"agent": result.agent, "commit": result.commit, "dir": str(mount)})
    env = {"TOKA_WORKSPACE_SEED_DIR": str(seed_dir), "TOKA_WORKSPACE_INPUTS": json.dumps(inputs)}
    state = prepare_workspace(tmp_path / "ws", env)
    assert state["state"] == "Failed"
    assert state["reason"] == "MergeConflict"
    assert state["paths"] == ["src/calc.py"]


def test_a_shared_volume_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "kept.txt").write_text("k")
    assert prepare_workspace(tmp_path / "ws", {"TOKA_WORKSPACE_SHARED": "1"}) == AS_IS
    assert not (tmp_path / "ws" / ".git").exists()


def test_an_attempt_whose_earlier_result_is_the_base_starts_afresh(tmp_path: Path) -> None:
    base = gitws.init_base(tmp_path / "b", SEED)
    again = gitws.prepare(
        tmp_path / "ws",
        seed=SEED,
        resume=gitws.Input(agent="me", commit=base, bundle=str(tmp_path / "none")),
        author="me",
    )
    assert not again.resumed
    assert again.start == base


def test_a_tools_restart_after_a_half_made_workspace_starts_over(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / ".git").mkdir(parents=True)
    (ws / "half-written.txt").write_text("x")
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "README.md").write_text("# calc\n")
    state = prepare_workspace(ws, {"TOKA_WORKSPACE_SEED_DIR": str(seed_dir)})
    assert state["state"] == "Ready"
    assert sorted(p.name for p in ws.iterdir()) == [".git", "README.md"]
    assert prepare_workspace(ws, {"TOKA_WORKSPACE_SEED_DIR": str(seed_dir)}) == state
