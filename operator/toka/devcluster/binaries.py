"""Find the control-plane binaries, or build them from their published Go modules.

Order: `$KUBEBUILDER_ASSETS` (envtest's layout: kube-apiserver, etcd, and
kube-controller-manager when present), then a cache keyed by version outside
the clone (`$TOKA_CACHE_DIR`, default `~/.cache/toka`), else a build with Go.

Building `k8s.io/kubernetes/cmd/...` with `go install` fails because its
go.mod replaces the staging modules with `./staging/...` paths. A wrapper
module requires `k8s.io/kubernetes vX.Y.Z` and replaces each staging module
by its published `v0.Y.Z` twin, read from the pinned go.mod so the list is
never hard-coded. etcd gets its own wrapper so its dependency versions do not
unify with the apiserver's.

Two runs may share the cache (`make demo` in one terminal, `make test` in
another): each binary set is built under an exclusive lock on its directory,
so the second run waits and then finds the binaries in place, and each binary
is built at a temporary name of its own and renamed into place whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from toka.contract import CACHE_DIR_ENV

KUBERNETES_VERSION = "1.35.4"
ETCD_VERSION = "3.6.16"
HELM_VERSION = "3.22.0"
# The Go module's version; its cmd/jaeger is Jaeger v2 (an OpenTelemetry Collector build).
JAEGER_VERSION = "1.76.0"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")
# A real node's own (`toka dev up`, the demo, the e2e tier), from the same module.
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-scheduler")
CRICTL_VERSION = "1.34.0"


class BinariesError(RuntimeError):
    """The control plane can neither be found nor built."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kube_controller_manager: Path | None
    kubectl: Path | None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "toka"))


def kube_dir() -> Path:
    return cache_dir() / f"kubernetes-v{KUBERNETES_VERSION}"


def etcd_dir() -> Path:
    return cache_dir() / f"etcd-v{ETCD_VERSION}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binaries() -> Binaries | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        root = Path(assets)
        if not (_executable(root / "kube-apiserver") and _executable(root / "etcd")):
            raise BinariesError(
                f"KUBEBUILDER_ASSETS={assets} has no kube-apiserver and etcd; unset it to use or "
                "build the cached control plane"
            )
        kcm = root / "kube-controller-manager"
        ctl = root / "kubectl"
        if not _executable(kcm):
            kcm = kube_dir() / "kube-controller-manager"
        return Binaries(
            root / "kube-apiserver",
            root / "etcd",
            kcm if _executable(kcm) else None,
            ctl
            if _executable(ctl)
            else (kube_dir() / "kubectl" if _executable(kube_dir() / "kubectl") else None),
        )
    kd, ed = kube_dir(), etcd_dir()
    if all(_executable(kd / b) for b in KUBE_BINARIES) and _executable(ed / "etcd"):
        return Binaries(
            kd / "kube-apiserver", ed / "etcd", kd / "kube-controller-manager", kd / "kubectl"
        )
    return None


def ensure_binaries(log: bool = True) -> Binaries:
    """Found binaries, or build the missing ones (once; later runs hit the cache)."""
    found = find_binaries()
    if found is not None:
        return found
    go = shutil.which("go")
    if go is None:
        raise BinariesError(
            "the dev cluster needs kube-apiserver, etcd and kube-controller-manager, and they "
            f"are not in {cache_dir()}. Install Go (1.25 or later) so Toka can build them "
            f"(v{KUBERNETES_VERSION}, etcd v{ETCD_VERSION}, about 10 minutes once), or set "
            "KUBEBUILDER_ASSETS to a directory holding kube-apiserver and etcd"
        )
    build_kubernetes(go, log=log)
    build_etcd(go, log=log)
    found = find_binaries()
    if found is None:
        raise BinariesError(f"build finished but binaries are missing under {cache_dir()}")
    return found


def _say(log: bool, msg: str) -> None:
    if log:
        print(f"[toka devcluster] {msg}", file=sys.stderr, flush=True)


def _go(go: str, args: list[str], cwd: Path, *, gobin: Path | None = None) -> str:
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false"),
        **({"GOBIN": str(gobin)} if gobin is not None else {}),
    }
    proc = subprocess.run(
        [go, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BinariesError(f"`go {' '.join(args)}` failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


def _go_build(go: str, work: Path, flags: list[str], package: str, dest: Path) -> None:
    _go(go, ["build", *flags, "-o", str(dest), package], work)


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """One build of a binary set at a time, across processes. Whoever holds the lock
    is the only builder, so any `*.tmp` left in the directory is a dead build's and goes."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for leftover in directory.glob("*.tmp"):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install(target: Path, build: Callable[[Path], object]) -> None:
    """`build(path)` makes the binary in a directory of its own beside `target`, then it
    is renamed into place: no reader sees half a binary, no two builds share a name."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        built = staging / target.name
        build(built)
        if not _executable(built):
            raise BinariesError(f"building {target.name} left no executable at {built}")
        os.replace(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _module_gomod(go: str, module: str, version: str, cwd: Path) -> str:
    info = json.loads(_go(go, ["mod", "download", "-json", f"{module}@v{version}"], cwd))
    return Path(info["GoMod"]).read_text()


def wrapper_gomod(pinned_gomod: str, version: str) -> str:
    """The wrapper module's go.mod for k8s.io/kubernetes at `version` (pure, tested)."""
    minor = version.split(".", 1)[1]
    lines = ["module toka.dev/controlplane-build", ""]
    lines += [ln for ln in pinned_gomod.splitlines() if ln.startswith(("go ", "godebug "))]
    lines += ["", f"require k8s.io/kubernetes v{version}", "", "replace ("]
    for ln in pinned_gomod.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            lines.append(f"\t{parts[0]} => {parts[0]} v0.{minor}")
    lines.append(")")
    return "\n".join(lines) + "\n"


_TOOLS_GO = """//go:build tools

package tools

import (
{imports})
"""


def build_kubernetes(
    go: str, *, log: bool = True, binaries: tuple[str, ...] = KUBE_BINARIES
) -> None:
    version = KUBERNETES_VERSION
    out = kube_dir()
    with _build_lock(out):
        missing = [b for b in binaries if not _executable(out / b)]
        if not missing:
            return
        work = cache_dir() / "build" / f"kubernetes-v{version}"
        work.mkdir(parents=True, exist_ok=True)
        _say(log, f"building Kubernetes v{version} control plane with Go into {out} (once)")
        pinned = _module_gomod(go, "k8s.io/kubernetes", version, work)
        (work / "go.mod").write_text(wrapper_gomod(pinned, version))
        imports = "".join(
            f'\t_ "k8s.io/kubernetes/cmd/{b}"\n' for b in (*KUBE_BINARIES, *NODE_BINARIES)
        )
        (work / "tools.go").write_text(_TOOLS_GO.format(imports=imports))
        _go(go, ["mod", "tidy"], work)
        major, minor, _ = version.split(".")
        ldflags = " ".join(
            [
                "-s -w",
                f"-X k8s.io/component-base/version.gitVersion=v{version}",
                f"-X k8s.io/component-base/version.gitMajor={major}",
                f"-X k8s.io/component-base/version.gitMinor={minor}",
                f"-X k8s.io/client-go/pkg/version.gitVersion=v{version}",
            ]
        )
        flags = ["-tags", "notest,grpcnotrace", "-ldflags", ldflags]
        for binary in missing:
            started = time.monotonic()
            _install(
                out / binary,
                functools.partial(_go_build, go, work, flags, f"k8s.io/kubernetes/cmd/{binary}"),
            )
            _say(log, f"built {binary} in {time.monotonic() - started:.0f}s")


def build_etcd(go: str, *, log: bool = True) -> None:
    version = ETCD_VERSION
    out = etcd_dir()
    with _build_lock(out):
        if _executable(out / "etcd"):
            return
        work = cache_dir() / "build" / f"etcd-v{version}"
        work.mkdir(parents=True, exist_ok=True)
        _say(log, f"building etcd v{version} with Go into {out} (once)")
        pinned = _module_gomod(go, "go.etcd.io/etcd/server/v3", version, work)
        go_line = next((ln for ln in pinned.splitlines() if ln.startswith("go ")), "go 1.25.0")
        (work / "go.mod").write_text(
            f"module toka.dev/etcd-build\n\n{go_line}\n\n"
            f"require go.etcd.io/etcd/server/v3 v{version}\n"
        )
        (work / "tools.go").write_text(
            _TOOLS_GO.format(imports='\t_ "go.etcd.io/etcd/server/v3"\n')
        )
        _go(go, ["mod", "tidy"], work)
        started = time.monotonic()
        _install(
            out / "etcd",
            functools.partial(
                _go_build, go, work, ["-ldflags", "-s -w"], "go.etcd.io/etcd/server/v3"
            ),
        )
        _say(log, f"built etcd in {time.monotonic() - started:.0f}s")


def helm_path() -> Path:
    return cache_dir() / f"helm-v{HELM_VERSION}" / "helm"


def ensure_helm(log: bool = True) -> Path:
    """helm for the chart's tests, built from its Go module into the cache (once)."""
    path = helm_path()
    if _executable(path):
        return path
    go = shutil.which("go")
    if go is None:
        raise BinariesError(f"helm is not in {path.parent} and Go is not installed to build it")
    with _build_lock(path.parent):
        if _executable(path):
            return path
        _say(log, f"building helm v{HELM_VERSION} with Go into {path.parent} (once)")
        started = time.monotonic()
        work = cache_dir() / "build"
        work.mkdir(parents=True, exist_ok=True)
        package = f"helm.sh/helm/v3/cmd/helm@v{HELM_VERSION}"
        _install(path, lambda dest: _go(go, ["install", package], work, gobin=dest.parent))
        _say(log, f"built helm in {time.monotonic() - started:.0f}s")
    return path


def crictl_path() -> Path:
    return cache_dir() / f"crictl-v{CRICTL_VERSION}" / "crictl"


def ensure_node_binaries(log: bool = True) -> Path:
    """kubelet, kube-proxy, kube-scheduler (beside the control plane's) and crictl, built
    once into the cache; returns crictl's path."""
    go = shutil.which("go")
    if not all(_executable(kube_dir() / b) for b in NODE_BINARIES):
        if go is None:
            raise BinariesError("the real node's kubelet is not cached and Go is not installed")
        build_kubernetes(go, log=log, binaries=NODE_BINARIES)
    path = crictl_path()
    if _executable(path):
        return path
    if go is None:
        raise BinariesError(f"crictl is not in {path.parent} and Go is not installed to build it")
    with _build_lock(path.parent):
        if not _executable(path):
            started = time.monotonic()
            work = cache_dir() / "build"
            work.mkdir(parents=True, exist_ok=True)
            package = f"sigs.k8s.io/cri-tools/cmd/crictl@v{CRICTL_VERSION}"
            _install(path, lambda dest: _go(go, ["install", package], work, gobin=dest.parent))
            _say(log, f"built crictl in {time.monotonic() - started:.0f}s")
    return path


def jaeger_path() -> Path:
    return cache_dir() / f"jaeger-v{JAEGER_VERSION}" / "jaeger"


def pinned_replaces(pinned_gomod: str) -> list[str]:
    """The module's own `replace` directives that point at published modules (pure, tested).

    `go install module@version` refuses a module whose go.mod replaces anything, so a
    wrapper module requires it and repeats these; replacements by local paths are dropped.
    """
    out: list[str] = []
    block = False
    for line in pinned_gomod.splitlines():
        text = line.split("//", 1)[0].strip()
        if text == "replace (":
            block = True
            continue
        if block and text == ")":
            block = False
            continue
        if text.startswith("replace "):
            text = text.removeprefix("replace ").strip()
        elif not block:
            continue
        old, arrow, new = text.partition("=>")
        if arrow and not new.strip().startswith(("./", "../", "/")):
            out.append(f"{old.strip()} => {new.strip()}")
    return out


def ensure_jaeger(log: bool = True) -> Path:
    """Jaeger v2 (all-in-one: an OTLP receiver, in-memory storage, the query API) for the
    tracing tests and benchmark, built from its Go module into the cache (once)."""
    path = jaeger_path()
    if _executable(path):
        return path
    go = shutil.which("go")
    if go is None:
        raise BinariesError(f"jaeger is not in {path.parent} and Go is not installed to build it")
    with _build_lock(path.parent):
        if _executable(path):
            return path
        _say(log, f"building Jaeger v2 (module v{JAEGER_VERSION}) into {path.parent} (once)")
        started = time.monotonic()
        module = "github.com/jaegertracing/jaeger"
        work = cache_dir() / "build" / f"jaeger-v{JAEGER_VERSION}"
        work.mkdir(parents=True, exist_ok=True)
        pinned = _module_gomod(go, module, JAEGER_VERSION, work)
        go_line = next((ln for ln in pinned.splitlines() if ln.startswith("go ")), "go 1.25.0")
        replaces = "".join(f"replace {r}\n" for r in pinned_replaces(pinned))
        (work / "go.mod").write_text(
            f"module toka.dev/jaeger-build\n\n{go_line}\n\nrequire {module} v{JAEGER_VERSION}\n\n"
            + replaces
        )
        (work / "tools.go").write_text(_TOOLS_GO.format(imports=f'\t_ "{module}/cmd/jaeger"\n'))
        _go(go, ["mod", "tidy"], work)
        _install(
            path,
            functools.partial(_go_build, go, work, ["-ldflags", "-s -w"], f"{module}/cmd/jaeger"),
        )
        _say(log, f"built jaeger in {time.monotonic() - started:.0f}s")
    return path
