"""Toka's container image and the pause image, built with buildah for the dev cluster's containerd.

A dev cluster with a real kubelet and containerd runs images, and where no registry is
reachable neither Toka's image nor the sandbox's pause image can be pulled. Both are built
here without a Docker engine. The Dockerfile's public Python base is swapped, through its
`BASE_IMAGE` argument, for a local one debootstrapped from Debian's packages (the same
bookworm and Python 3.11), which also carries this machine's CA bundle so pip works behind an
intercepting proxy; nothing machine-specific enters the Dockerfile. pause is compiled from the
Kubernetes source already in Go's module cache.

Every image is named by a hash of what went into it and looked up in buildah's storage first,
so an unchanged tree costs a few `buildah inspect` calls and a changed source file rebuilds.
The oci-archives for `ctr images import` are cached by tag under the cache dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from toka.devcluster.binaries import KUBERNETES_VERSION, _say, cache_dir

TOKA_NAME = "localhost/toka"
BASE_NAME = "localhost/toka-base"
PAUSE_NAME = "localhost/pause"
PAUSE_TAG = "3.10-local"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# python3-venv brings ensurepip; git and ca-certificates make the Dockerfile's apt step cheap.
BASE_PACKAGES = ("python3", "python3-venv", "git", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Not /etc/ssl/certs/ca-certificates.crt: update-ca-certificates would rewrite that one.
BASE_CA_BUNDLE = "/etc/ssl/build-ca-bundle.crt"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# What the Dockerfile copies (see its COPY lines and .dockerignore), plus itself.
CONTEXT_FILES = ("Dockerfile", "pyproject.toml", "constraints.txt", "README.md")
CONTEXT_DIRS = ("operator",)
INSTALL_HINT = "apt-get install buildah runc umoci debootstrap"
# Bumped when the recipe of the base changes in a way its other inputs do not show.
_BASE_RECIPE = "2"
_SLIM_DIRS = ("doc", "man", "groff", "info", "lintian", "linda", "locale")


class ImageError(RuntimeError):
    """An image can be neither found nor built."""


@dataclass(frozen=True)
class Images:
    toka: str
    pause: str
    base: str
    # What this call built or exported; empty when everything came from the cache.
    built: tuple[str, ...] = ()
    exported: tuple[Path, ...] = ()
    toka_archive: Path | None = None
    pause_archive: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.toka.rpartition(":")[2]

    @property
    def cached(self) -> bool:
        return not self.built and not self.exported


def _ignored(rel: Path) -> bool:
    return (
        "__pycache__" in rel.parts
        or rel.suffix == ".pyc"
        or any(p.endswith(".egg-info") for p in rel.parts)
    )


def context_files(root: Path) -> list[Path]:
    """The files the Dockerfile copies, relative to `root`."""
    files = [Path(name) for name in CONTEXT_FILES]
    for top in CONTEXT_DIRS:
        found = (p.relative_to(root) for p in (root / top).rglob("*") if p.is_file())
        files += sorted(rel for rel in found if not _ignored(rel))
    return files


def content_hash(root: Path, base_image: str = "") -> str:
    """sha256 (12 hex) of the files the image is built from, and of the base it builds on."""
    digest = hashlib.sha256(f"base {base_image}\n".encode())
    for rel in context_files(root):
        path = root / rel
        data = path.read_bytes()
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{rel.as_posix()}\0{mode}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def base_image_name() -> str:
    """The local base's name: a hash of its recipe, packages and the CA bundle it carries."""
    recipe = {
        "recipe": _BASE_RECIPE,
        "suite": DEBIAN_SUITE,
        "mirror": DEBIAN_MIRROR,
        "packages": BASE_PACKAGES,
        "env": BASE_ENV,
        "ca": hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()
        if HOST_CA_BUNDLE.is_file()
        else None,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{BASE_NAME}:{DEBIAN_SUITE}-{digest}"


def default_repo_root() -> Path:
    """The checkout this package runs from, when it is one; else the working directory."""
    here = Path(__file__).resolve().parents[3]
    return here if (here / "Dockerfile").is_file() else Path.cwd()


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr)[-4000:]
        raise ImageError(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{output}")
    return proc.stdout


def _require(program: str, hint: str = INSTALL_HINT) -> str:
    path = shutil.which(program)
    if path is None:
        raise ImageError(f"{program} is not installed; the dev images need it: {hint}")
    return path


def image_exists(image: str) -> bool:
    proc = subprocess.run(
        ["buildah", "inspect", "--type", "image", image],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return True
    if "image not known" in proc.stderr:
        return False
    raise ImageError(f"`buildah inspect {image}` failed:\n{proc.stderr[-4000:]}")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One image build at a time across processes; the loser finds the winner's images."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / "image.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _scratch_dir(prefix: str) -> Path:
    parent = cache_dir() / "build"
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


@contextlib.contextmanager
def _working_container() -> Iterator[str]:
    """A `buildah from scratch` container, removed however the block ends (commit uses --rm)."""
    container = _run(["buildah", "from", "scratch"]).strip()
    try:
        yield container
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def _chroot(rootfs: Path, *argv: str) -> None:
    env = {**BASE_ENV, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["chroot", str(rootfs), *argv], env=env)


def _slim(rootfs: Path) -> None:
    """Drop documentation and translations now and in every later apt install, as Debian's
    slim images (the official python base's) do: about 70 MB."""
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(
        "".join(f"path-exclude /usr/share/{d}/*\n" for d in _SLIM_DIRS)
        + "path-include /usr/share/doc/*/copyright\n"
    )
    for d in _SLIM_DIRS:
        for path in (rootfs / "usr/share" / d).glob("*"):
            if d == "doc" and path.is_dir() and (path / "copyright").exists():
                for extra in path.iterdir():
                    if extra.name != "copyright":
                        _remove(extra)
            else:
                _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _make_rootfs(rootfs: Path) -> None:
    _run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR])
    _slim(rootfs)
    security = DEBIAN_MIRROR.removesuffix("/debian") + "/debian-security"
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n"
        f"deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main\n"
        f"deb {security} {DEBIAN_SUITE}-security main\n"
    )
    _chroot(rootfs, "apt-get", "update")
    _chroot(rootfs, "apt-get", "install", "-y", "--no-install-recommends", *BASE_PACKAGES)
    _chroot(rootfs, "apt-get", "clean")
    shutil.rmtree(rootfs / "var/lib/apt/lists")
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
    # The official python images keep python in /usr/local/bin; the Dockerfile's venv does too.
    for name in ("python", "python3", "python3.11"):
        link = rootfs / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to("/usr/bin/python3")
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / BASE_CA_BUNDLE.lstrip("/"))
    # debootstrap copied this machine's; the runtime mounts the container's own.
    (rootfs / "etc/resolv.conf").write_text("")


def _build_base(name: str, log: bool) -> None:
    _require("debootstrap")
    if os.geteuid() != 0:
        raise ImageError("building the local base image needs root (debootstrap and chroot)")
    _say(log, f"building {name} from Debian {DEBIAN_SUITE} with debootstrap (once)")
    work = _scratch_dir("rootfs-")
    try:
        rootfs = work / "rootfs"
        _make_rootfs(rootfs)
        with _working_container() as container:
            mount = _run(["buildah", "mount", container]).strip()
            try:
                _run(["cp", "-a", f"{rootfs}/.", f"{mount}/"])
            finally:
                _run(["buildah", "umount", container])
            env = dict(BASE_ENV)
            if HOST_CA_BUNDLE.is_file():
                env["PIP_CERT"] = BASE_CA_BUNDLE
            config = [arg for k, v in env.items() for arg in ("--env", f"{k}={v}")]
            _run(["buildah", "config", *config, "--cmd", '["python3"]', container])
            _run(["buildah", "commit", "--rm", "--quiet", container, name])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pause_source() -> Path:
    go = _require("go", "install Go; pause.c comes from the k8s.io/kubernetes module")
    module = f"k8s.io/kubernetes@v{KUBERNETES_VERSION}"
    modcache = Path(_run([go, "env", "GOMODCACHE"]).strip())
    source = modcache / module / "build/pause/linux/pause.c"
    if not source.is_file():
        work = cache_dir() / "build"
        work.mkdir(parents=True, exist_ok=True)
        _run([go, "mod", "download", module], cwd=work)
    if not source.is_file():
        raise ImageError(f"{source} is missing after `go mod download {module}`")
    return source


def _build_pause(name: str, log: bool) -> None:
    gcc = _require("gcc", "apt-get install gcc libc6-dev")
    source = _pause_source()
    _say(log, f"building {name} from {source} (once)")
    work = _scratch_dir("pause-")
    try:
        binary = work / "pause"
        _run([gcc, "-Os", "-static", f"-DVERSION=v{PAUSE_TAG}", "-o", str(binary), str(source)])
        with _working_container() as container:
            _run(["buildah", "copy", "--quiet", container, str(binary), "/pause"])
            # As upstream's image: an unprivileged user, the binary as entrypoint.
            _run(
                [
                    "buildah",
                    "config",
                    "--entrypoint",
                    '["/pause"]',
                    "--user",
                    "65535:65535",
                    container,
                ]
            )
            _run(["buildah", "commit", "--rm", "--quiet", container, name])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _snapshot(repo_root: Path, context: Path) -> None:
    for rel in [*context_files(repo_root), Path(".dockerignore")]:
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(repo_root / rel, context / rel)


def _build_toka(repo_root: Path, base: str, log: bool) -> tuple[str, bool]:
    """Build from a copy of the context, so the tag names exactly what went in even while
    the checkout is being edited. Returns the image and whether it was built."""
    work = _scratch_dir("context-")
    try:
        context = work / "context"
        _snapshot(repo_root, context)
        name = f"{TOKA_NAME}:{content_hash(context, base)}"
        if image_exists(name):
            return name, False
        _say(log, f"building {name} from {repo_root / 'Dockerfile'} on {base}")
        _run(
            [
                "buildah",
                "bud",
                "--runtime",
                "runc",
                "--network",
                "host",
                "--layers",
                "--pull=never",
                "-f",
                str(context / "Dockerfile"),
                "--build-arg",
                f"BASE_IMAGE={base}",
                "-t",
                name,
                str(context),
            ],
            cwd=context,
        )
        return name, True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def archive_path(tag: str, name: str = TOKA_NAME) -> Path:
    return cache_dir() / "images" / f"{name.rpartition('/')[2]}-{tag}.oci.tar"


def export_image(tag: str, path: Path, *, name: str = TOKA_NAME) -> Path:
    """`name:tag` as an oci-archive at `path`, its index naming it in full for `ctr`."""
    ref = f"{name}:{tag}"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.unlink(missing_ok=True)
    try:
        _run(["buildah", "push", "--quiet", ref, f"oci-archive:{partial}:{ref}"])
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def archive_refs(archive: Path) -> list[str]:
    """The image names an oci-archive's index.json gives its manifests."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageError(f"{archive} has no index.json; is it an oci-archive?")
        index = json.load(member)
    return [
        m["annotations"]["org.opencontainers.image.ref.name"]
        for m in index.get("manifests", [])
        if "org.opencontainers.image.ref.name" in m.get("annotations", {})
    ]


def ensure_images(repo_root: Path, log: bool = True, *, export: bool = False) -> Images:
    """Toka's image and the pause image, from buildah's storage or built (and exported)."""
    if not (repo_root / "Dockerfile").is_file():
        raise ImageError(f"{repo_root} has no Dockerfile; pass the repository's root")
    _require("buildah")
    _require("runc")
    timings: dict[str, float] = {}
    built: list[str] = []
    exported: list[Path] = []
    base = base_image_name()
    toka = f"{TOKA_NAME}:{content_hash(repo_root, base)}"
    pause = f"{PAUSE_NAME}:{PAUSE_TAG}"
    with _lock():
        started = time.monotonic()
        if not image_exists(toka):
            if not image_exists(base):
                _build_base(base, log)
                built.append(base)
                timings["base"] = time.monotonic() - started
                _say(log, f"built {base} in {timings['base']:.0f}s")
            started = time.monotonic()
            toka, fresh = _build_toka(repo_root, base, log)
            if fresh:
                built.append(toka)
                _say(log, f"built {toka} in {time.monotonic() - started:.0f}s")
        timings["toka"] = time.monotonic() - started
        started = time.monotonic()
        if not image_exists(pause):
            _build_pause(pause, log)
            built.append(pause)
            _say(log, f"built {pause} in {time.monotonic() - started:.1f}s")
        timings["pause"] = time.monotonic() - started
        archives: dict[str, Path] = {}
        if export:
            for ref in (toka, pause):
                started = time.monotonic()
                name, _, tag = ref.rpartition(":")
                path = archive_path(tag, name)
                if not path.is_file() or ref in built:
                    _say(log, f"exporting {ref} to {path}")
                    export_image(tag, path, name=name)
                    exported.append(path)
                archives[ref] = path
                timings[f"export {ref}"] = time.monotonic() - started
    return Images(
        toka=toka,
        pause=pause,
        base=base,
        built=tuple(built),
        exported=tuple(exported),
        toka_archive=archives.get(toka),
        pause_archive=archives.get(pause),
        timings=timings,
    )
