"""Start one container process for the dev node agent: mount namespace, mounts, user, exec.

Run as root by the node agent: `python -m toka.devcluster.sandbox SPEC.json`.
The spec file is read and deleted at once (it may hold env values from
Secrets). Then, in a new mount namespace:

1. an overlay of the host's `/` (writes go to a per-container tmpfs), so the
   container sees the host's programs but changes nothing on the host;
2. /proc, /dev, /sys bound in; each volume bound at its mount path
   (read-only where the pod says so);
3. tmpfs over the paths the container must not see: every pod's volumes and
   the cluster's own credentials; Toka's own Python environment and source
   bound back read-only if a volume (an emptyDir at /tmp, say) shadowed them;
4. the root made read-only when `readOnlyRootFilesystem` is set;
5. chroot, then groups, gid and uid dropped to the pod's securityContext,
   a parent-death signal, and exec of the container's argv.

So a container reads its token at /var/run/secrets/... and its workspace at
/workspace exactly as in a real cluster: the production code paths run.
Stdlib only, and small: it starts for every container.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(
    source: str, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def bind(source: str, target: str, *, read_only: bool = False, recursive: bool = False) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | (MS_REC if recursive else 0))


def _inside(root: str, path: str, _depth: int = 0) -> str:
    """`path` resolved within `root`: symlinks are followed as the container would see them.

    A plain join would follow an absolute link such as /var/run -> /run to the
    host's /run, and the mkdir of a mount point would land on the host.
    """
    if _depth > 40:
        raise OSError(40, f"too many levels of symbolic links resolving {path}")
    resolved = root
    parts = [p for p in path.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        if part == "..":
            resolved = os.path.dirname(resolved) if resolved != root else root
            continue
        candidate = os.path.join(resolved, part)
        if os.path.islink(candidate):
            link = os.readlink(candidate)
            base = "/" if link.startswith("/") else resolved[len(root) :] or "/"
            rest = "/".join(parts[i + 1 :])
            return _inside(root, os.path.join(base, link, rest), _depth + 1)
        resolved = candidate
    return resolved


def _ensure_target(path: str, is_file: bool) -> None:
    if is_file:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            Path(path).touch()
    else:
        os.makedirs(path, exist_ok=True)


def _under(path: str, top: str) -> bool:
    top = top.rstrip("/") or "/"
    return path == top or path.startswith(top + "/") or top == "/"


def enter(spec: dict[str, object]) -> None:
    """Everything up to exec; raises OSError with the step that failed."""
    scratch = str(spec["scratch"])
    os.makedirs(scratch, exist_ok=True)
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    upper, work, root = (os.path.join(scratch, d) for d in ("upper", "work", "root"))
    for d in (upper, work, root):
        os.mkdir(d)
    mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    for special in ("/proc", "/dev", "/sys"):
        bind(special, _inside(root, special), recursive=True)
    for hidden in spec.get("hide", []):  # type: ignore[attr-defined]
        target = _inside(root, str(hidden))
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    for m in spec.get("mounts", []):  # type: ignore[attr-defined]
        source, target = str(m["source"]), _inside(root, str(m["target"]))
        _ensure_target(target, os.path.isfile(source))
        bind(source, target, read_only=bool(m.get("readOnly")))
    hidden = [str(h) for h in spec.get("hide", [])]  # type: ignore[attr-defined]
    shadows = hidden + [str(m["target"]) for m in spec.get("mounts", [])]  # type: ignore[attr-defined]
    for keep in spec.get("keep", []):  # type: ignore[attr-defined]
        # Toka's own Python and source, when a volume (say /tmp) shadows where they live:
        # the image's program must still run. Never when that would re-expose a hidden path.
        # Decided from the paths, not from what exists: a restart, or an exec probe sharing
        # the volume, finds the mount point left in it by an earlier start.
        keep = str(keep)
        shadowed = any(_under(keep, s) for s in shadows)
        if shadowed and os.path.isdir(keep) and not any(_under(h, keep) for h in hidden):
            target = _inside(root, keep)
            _ensure_target(target, False)
            bind(keep, target, read_only=True)
    uid = spec.get("uid")
    if isinstance(uid, int) and uid != 0:
        # The host keeps Python under /root (0700): let a non-root user through,
        # in this container's view only (the change lands in the overlay's upper).
        home = _inside(root, "/root")
        if os.path.isdir(home):
            os.chmod(home, 0o711)  # noqa: S103 - traverse only, this container's view
    if spec.get("readOnlyRoot"):
        mount("none", root, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.chroot(root)
    os.chdir(str(spec.get("cwd") or "/"))
    gid = spec.get("gid")
    groups = [int(g) for g in spec.get("groups", [])]  # type: ignore[attr-defined]
    if isinstance(uid, int) or isinstance(gid, int) or groups:
        os.setgroups(groups)
        if isinstance(gid, int):
            os.setgid(gid)
        if isinstance(uid, int):
            os.setuid(uid)
    os.setsid()
    # After the uid change, which clears it; the parent is the node agent.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.umask(0o022)


def main(argv: list[str]) -> int:
    spec_path = argv[1]
    spec: dict[str, Any] = json.loads(Path(spec_path).read_text())
    os.unlink(spec_path)
    try:
        enter(spec)
    except OSError as err:
        print(f"toka-dev sandbox: cannot start container: {err}", file=sys.stderr, flush=True)
        return 128
    args = [str(a) for a in spec["argv"]]
    env = {str(k): str(v) for k, v in spec["env"].items()}
    try:
        os.execvpe(args[0], args, env)
    except OSError as err:
        # What a container runtime reports as StartError / "executable file not found".
        print(f"toka-dev sandbox: exec {args[0]!r}: {err.strerror}", file=sys.stderr, flush=True)
        return 127
    return 0  # unreachable


if __name__ == "__main__":
    sys.exit(main(sys.argv))
