"""Results flow: making a dependent's workspace, against a plain git clone + merge.

Toka's path (what the tools sidecar does in a dependent's pod): make the
base commit from the workspace files, fetch each dependency's result from
its bundle, merge them in dependsOn order. The baseline, in the same run,
on the same commits: `git clone` of a repository that already holds them
and `git merge` of the same result commits. Target (docs/architecture.md,
Measured targets): ≤ 1.5×.

Then (not in --smoke) the demo session runs on the dev cluster and the size
of every result object it leaves is printed: each Agent's bundle and the
session's, as stored in their ConfigMaps.

    python -m bench.results_flow [--rounds N] [--files N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from toka.tools import gitws

REPO = Path(__file__).resolve().parents[1]


def make_inputs(root: Path, files: int) -> tuple[list[tuple[str, bytes]], list[gitws.Input], Path]:
    """A base of `files` files; two dependencies that each changed a tenth of them (no
    conflict); their bundles; and a plain repository holding all of it, for the baseline."""
    seed = [(f"src__m{i}.py", f"def f{i}():\n    return {i}\n".encode()) for i in range(files)]
    inputs = []
    for dep, offset in (("left", 0), ("right", 1)):
        ws = root / dep
        prepared = gitws.prepare(ws, seed=seed, author=dep)
        for i in range(offset, files, 20):
            (ws / "src" / f"m{i}.py").write_text(f"def f{i}():\n    return {i} * 2  # {dep}\n")
        commit = gitws.commit_all(ws, f"{dep}: changes", dep)
        assert commit is not None
        bundle = root / f"{dep}.bundle"
        bundle.write_bytes(gitws.bundle(ws, prepared.base))
        inputs.append(gitws.Input(agent=dep, commit=commit, bundle=str(bundle)))
    origin = root / "origin"
    gitws.run_git(root, "clone", "-q", str(root / "left"), str(origin))
    gitws.run_git(origin, "fetch", "-q", str(root / "right"), "HEAD")
    gitws.run_git(origin, "branch", "-f", "right", "FETCH_HEAD")
    return seed, inputs, origin


def toka_path(root: Path, seed: list[tuple[str, bytes]], inputs: list[gitws.Input]) -> float:
    ws = root / "dependent"
    t0 = time.perf_counter()
    gitws.prepare(ws, seed=seed, inputs=inputs, author="join")
    took = time.perf_counter() - t0
    shutil.rmtree(ws)
    return took


def baseline(root: Path, origin: Path, inputs: list[gitws.Input]) -> float:
    ws = root / "plain"
    env = gitws.git_env() | {
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    t0 = time.perf_counter()
    subprocess.run(["git", "clone", "-q", str(origin), str(ws)], check=True, env=env)
    for i in inputs:
        gitws.run_git(ws, "merge", "-q", "--no-edit", i.commit, env=env)
    took = time.perf_counter() - t0
    shutil.rmtree(ws)
    return took


def measure(rounds: int, files: int) -> None:
    with tempfile.TemporaryDirectory(prefix="toka-bench-") as tmp:
        root = Path(tmp)
        seed, inputs, origin = make_inputs(root, files)
        ours, plain = [], []
        for _ in range(rounds):  # interleaved, so drift hits both alike
            ours.append(toka_path(root, seed, inputs))
            plain.append(baseline(root, origin, inputs))
        sizes = [Path(i.bundle or "").stat().st_size for i in inputs]
    p50, base = statistics.median(ours), statistics.median(plain)
    print(f"dependent workspace ready ({files} files, 2 dependencies, {rounds} rounds)")
    print(f"  toka (base + 2 bundles fetched + merged): p50 {p50 * 1000:7.1f} ms")
    print(f"  git clone + git merge of the same commits: p50 {base * 1000:7.1f} ms")
    print(
        f"  ratio {p50 / base:.2f}x (target <= 1.5x); bundles {sizes[0]:,} and {sizes[1]:,} bytes"
    )


def demo_sizes() -> None:
    """Run the demo (kept), read the result objects' sizes from its cluster, tear it down."""
    with tempfile.TemporaryDirectory(prefix="toka-bench-demo-") as tmp:
        state = Path(tmp, "state")
        toka = [sys.executable, "-m", "toka.cli"]
        try:
            subprocess.run(
                [*toka, "demo", "--keep", "--state-dir", str(state)],
                check=True,
                capture_output=True,
                timeout=900,
            )
            kubeconfig = json.loads((state / "state.json").read_text())["kubeconfig"]
            kubectl = Path(json.loads((state / "state.json").read_text())["bin_dir"]) / "kubectl"
            listing = subprocess.run(
                [
                    str(kubectl),
                    "--kubeconfig",
                    kubeconfig,
                    "get",
                    "configmaps",
                    "-n",
                    "toka-demo",
                    "-o",
                    "json",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        finally:
            subprocess.run(
                [*toka, "dev", "--state-dir", str(state), "down"],
                capture_output=True,
                check=False,
                timeout=120,
            )
    print("demo result objects (bundle bytes as stored, whole ConfigMap as JSON)")
    for cm in json.loads(listing.stdout)["items"]:
        name = cm["metadata"]["name"]
        if not name.endswith("result"):
            continue
        raw = (cm.get("binaryData") or {}).get("bundle", "")
        bundle = len(raw) * 3 // 4 - raw.count("=")
        print(f"  {name:45s} bundle {bundle:6,} B   object {len(json.dumps(cm)):6,} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="3 rounds, no demo")
    args = parser.parse_args()
    measure(3 if args.smoke else args.rounds, args.files)
    if not args.smoke:
        demo_sizes()


if __name__ == "__main__":
    main()
