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
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "1.35.4"
ETCD_VERSION = "3.6.16"
HELM_VERSION = "3.22.0"
# The Go module's version; its cmd/jaeger is Jaeger v2 (an OpenTelemetry Collector build).
JAEGER_VERSION = "1.76.0"
KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kubectl")


class BinariesError(RuntimeError):
    """The control plane can neither be found nor built."""


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path
    kube_controller_manager: Path | None
    kubectl: Path | None

    @property
    def bin_dirs(self) -> list[Path]:
        return sorted({p.parent for p in (self.kube_apiserver, self.etcd, self.kubectl) if p})


def cache_dir() -> Path:
    return Path(os.environ.get("TOKA_CACHE_DIR", Path.home() / ".cache" / "toka"))


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


def _go(go: str, args: list[str], cwd: Path) -> str:
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOFLAGS": os.environ.get("GOFLAGS", "-buildvcs=false"),
    }
    proc = subprocess.run(
        [go, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BinariesError(f"`go {' '.join(args)}` failed in {cwd}:\n{proc.stderr[-4000:]}")
    return proc.stdout


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


def build_kubernetes(go: str, *, log: bool = True) -> None:
    version = KUBERNETES_VERSION
    work = cache_dir() / "build" / f"kubernetes-v{version}"
    out = kube_dir()
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _say(log, f"building Kubernetes v{version} control plane with Go into {out} (once)")
    pinned = _module_gomod(go, "k8s.io/kubernetes", version, work)
    (work / "go.mod").write_text(wrapper_gomod(pinned, version))
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{b}"\n' for b in KUBE_BINARIES)
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
    for binary in KUBE_BINARIES:
        if _executable(out / binary):
            continue
        started = time.monotonic()
        tmp = out / f"{binary}.tmp"
        _go(
            go,
            [
                "build",
                "-tags",
                "notest,grpcnotrace",
                "-ldflags",
                ldflags,
                "-o",
                str(tmp),
                f"k8s.io/kubernetes/cmd/{binary}",
            ],
            work,
        )
        tmp.rename(out / binary)
        _say(log, f"built {binary} in {time.monotonic() - started:.0f}s")


def build_etcd(go: str, *, log: bool = True) -> None:
    version = ETCD_VERSION
    out = etcd_dir()
    if _executable(out / "etcd"):
        return
    work = cache_dir() / "build" / f"etcd-v{version}"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _say(log, f"building etcd v{version} with Go into {out} (once)")
    pinned = _module_gomod(go, "go.etcd.io/etcd/server/v3", version, work)
    go_line = next((ln for ln in pinned.splitlines() if ln.startswith("go ")), "go 1.25.0")
    (work / "go.mod").write_text(
        f"module toka.dev/etcd-build\n\n{go_line}\n\nrequire go.etcd.io/etcd/server/v3 v{version}\n"
    )
    (work / "tools.go").write_text(_TOOLS_GO.format(imports='\t_ "go.etcd.io/etcd/server/v3"\n'))
    _go(go, ["mod", "tidy"], work)
    started = time.monotonic()
    tmp = out / "etcd.tmp"
    _go(go, ["build", "-ldflags", "-s -w", "-o", str(tmp), "go.etcd.io/etcd/server/v3"], work)
    tmp.rename(out / "etcd")
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
    _say(log, f"building helm v{HELM_VERSION} with Go into {path.parent} (once)")
    started = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    env_root = cache_dir() / "build"
    env_root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [go, "install", f"helm.sh/helm/v3/cmd/helm@v{HELM_VERSION}"],
        cwd=env_root,
        env={**os.environ, "CGO_ENABLED": "0", "GOBIN": str(path.parent)},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not _executable(path):
        raise BinariesError(f"building helm failed:\n{proc.stderr[-4000:]}")
    _say(log, f"built helm in {time.monotonic() - started:.0f}s")
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


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """One build at a time per binary, across processes (tests, benchmarks, the CLI)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
        tmp = path.with_name(f"jaeger.{os.getpid()}.tmp")
        try:
            _go(go, ["build", "-ldflags", "-s -w", "-o", str(tmp), f"{module}/cmd/jaeger"], work)
            tmp.rename(path)
        finally:
            tmp.unlink(missing_ok=True)
        _say(log, f"built jaeger in {time.monotonic() - started:.0f}s")
    return path
