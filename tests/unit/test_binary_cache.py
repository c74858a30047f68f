"""Two runs sharing the binary cache (`make demo` beside `make test`) build each binary once.

A fake `go` on PATH stands in for the real builds: it logs each build, sleeps
so that the runs overlap, and writes an executable where it was told to.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toka.devcluster import binaries

FAKE_GO = textwrap.dedent(
    """\
    #!/bin/sh
    # go mod download -json | go mod tidy | go build ... -o OUT PKG | go install PKG (GOBIN)
    set -e
    case "$1 $2" in
    "mod download")
        printf 'module fake\\n\\ngo 1.25.0\\n' > "$FAKE_GO_DIR/pinned.mod"
        printf '{"GoMod": "%s"}\\n' "$FAKE_GO_DIR/pinned.mod"
        exit 0 ;;
    "mod tidy") exit 0 ;;
    esac
    if [ "$1" = install ]; then
        pkg="${2%%@*}"
        out="$GOBIN/${pkg##*/}"
    else
        while [ "$1" != -o ]; do shift; done
        out="$2"
    fi
    echo "${out##*/}" >> "$FAKE_GO_DIR/builds.log"
    sleep 0.3
    printf '#!/bin/sh\\n' > "$out"
    chmod +x "$out"
    """
)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """The fake `go`'s directory: the program, and the log of what it built."""
    fake = tmp_path / "fake-go"
    fake.mkdir()
    (fake / "go").write_text(FAKE_GO)
    (fake / "go").chmod(0o755)
    return fake


def test_two_runs_at_once_both_succeed_and_build_each_binary_once(
    tmp_path: Path, fake: Path
) -> None:
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "KUBEBUILDER_ASSETS"}
    env |= {
        "TOKA_CACHE_DIR": str(cache),
        "FAKE_GO_DIR": str(fake),
        "PATH": f"{fake}:{os.environ['PATH']}",
    }
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "toka.cli", "dev", "binaries", "--with-jaeger"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
    assert outputs[0][0] == outputs[1][0]
    assert all(Path(p).is_file() for p in outputs[0][0].split())

    built = sorted((fake / "builds.log").read_text().split())
    assert built == sorted(["etcd", "helm", "jaeger", *binaries.KUBE_BINARIES])
    left = sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if not p.is_dir() and p.relative_to(cache).parts[0] != "build"
    )
    names = {
        f"kubernetes-v{binaries.KUBERNETES_VERSION}": binaries.KUBE_BINARIES,
        f"etcd-v{binaries.ETCD_VERSION}": ("etcd",),
        f"helm-v{binaries.HELM_VERSION}": ("helm",),
        f"jaeger-v{binaries.JAEGER_VERSION}": ("jaeger",),
    }
    assert left == sorted(f"{d}/{n}" for d, ns in names.items() for n in (*ns, ".build.lock")), (
        "temporary files were left behind"
    )
    assert not any(".tmp" in p.name for p in cache.rglob("*"))


def test_what_a_dead_build_left_goes_with_the_next_build(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    out = cache / f"etcd-v{binaries.ETCD_VERSION}"
    (out / ".etcd.k1l2e3d.tmp").mkdir(parents=True)
    (out / ".etcd.k1l2e3d.tmp" / "etcd").write_text("half a binary")
    (out / "etcd.tmp").write_text("the old fixed name's")
    monkeypatch.setenv("TOKA_CACHE_DIR", str(cache))
    monkeypatch.setenv("FAKE_GO_DIR", str(fake))
    binaries.build_etcd(str(fake / "go"), log=False)
    assert sorted(p.name for p in out.iterdir()) == [".build.lock", "etcd"]
    binaries.build_etcd(str(fake / "go"), log=False)
    assert (fake / "builds.log").read_text().split() == ["etcd"]
