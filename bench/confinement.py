"""Landlock confinement per `shell.exec`: the tools sidecar's exec with and without it.

Both sides run the same `ops.shell_exec` on the same workspace and program;
the baseline is the BestEffort path with Landlock switched off (no ruleset is
built, nothing is applied in the child), so the ratio is what confinement
costs: building the ruleset from the grants (opening each path, adding its
rule) and two system calls in the child. Two programs: `true` (the exec is
almost all of it) and `git status` (a typical one). Grants: a wide one
(`**`) and a narrow glob whose matching files are enumerated per call.
Target (docs/architecture.md, Measured targets): ≤ 1.2×.

    python -m bench.confinement [--rounds N] [--files N] [--smoke]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toka.tools import ops, sandbox

GRANTS = {
    "wide": {"read": ["**"], "write": ["**"]},
    "narrow": {"read": ["src/**", "docs/*.md"], "write": ["src/*.py"]},
}


def workspace(root: Path, files: int) -> Path:
    ws = root / "ws"
    env = {"TOKA_GIT_DIR": str(root / "git"), "TOKA_AGENT_NAME": "bench"}
    seed = root / "seed"
    seed.mkdir()
    for i in range(files):
        (seed / f"src__m{i}.py").write_text(f"x = {i}\n")
        (seed / f"docs__d{i}.md").write_text(f"# {i}\n")
    (root / "git").mkdir()
    state = ops.prepare_workspace(ws, env | {"TOKA_WORKSPACE_SEED_DIR": str(seed)})
    assert state["state"] == "Ready", state
    return ws


def timed(rounds: int, call: Callable[[], Any]) -> float:
    call()  # warm
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(rounds: int, files: int) -> None:
    abi = sandbox.abi_version()
    if abi < 1:
        print("confinement: this kernel has no Landlock; nothing to measure")
        return
    real_abi = sandbox.abi_version
    with tempfile.TemporaryDirectory() as tmp:
        ws = workspace(Path(tmp), files)
        print(f"Landlock ABI {abi}, {files * 2} files, median of {rounds}")
        print(f"{'program':<12} {'grant':<7} {'confined ms':>12} {'plain ms':>9} {'ratio':>6}")
        for argv in (["true"], ["git", "status", "--short"]):
            for name, grant in GRANTS.items():

                def confined(g: dict[str, Any] = grant, a: list[str] = argv) -> Any:
                    return ops.shell_exec(ws, {"argv": a, "confine": {**g, "mode": "Enforced"}})

                def plain(g: dict[str, Any] = grant, a: list[str] = argv) -> Any:
                    sandbox.abi_version = lambda: 0  # type: ignore[assignment]
                    try:
                        return ops.shell_exec(
                            ws, {"argv": a, "confine": {**g, "mode": "BestEffort"}}
                        )
                    finally:
                        sandbox.abi_version = real_abi  # type: ignore[assignment]

                with_it, without = timed(rounds, confined), timed(rounds, plain)
                print(
                    f"{' '.join(argv[:2]):<12} {name:<7} {with_it * 1000:>12.2f} "
                    f"{without * 1000:>9.2f} {with_it / without:>5.2f}x"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="5 rounds")
    args = parser.parse_args()
    measure(5 if args.smoke else args.rounds, args.files)


if __name__ == "__main__":
    main()
