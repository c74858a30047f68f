"""Open a workspace path without following a symlink anywhere on its way.

Checking a path and then opening it by name is a race: between the two, a
program the agent runs can swap a directory on the way for a symlink to
anywhere (`rename(2)` is atomic). So every open is a walk from the
workspace's own file descriptor, one component at a time, each opened with
`O_NOFOLLOW`: a symlink met on the way is an error (ENOTDIR or ELOOP), never
a detour. Paths arrive canonical (no `..`, no empty or `.` segments).
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _walk(root: Path | str, parts: list[str], *, make: bool = False) -> int:
    """A descriptor of the directory `parts` name under `root`; made on the way if `make`."""
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts:
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            nxt = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(
    root: Path | str, rel: str, flags: int, mode: int = 0o644, *, make_parents: bool = False
) -> int:
    """`os.open` of `rel` under `root`, following no symlink: not on the way, not at the end."""
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return os.open(root, flags | os.O_DIRECTORY | os.O_CLOEXEC)
    parent = _walk(root, parts[:-1], make=make_parents)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    finally:
        os.close(parent)


def make_dirs(root: Path | str, rel: str) -> None:
    """`mkdir -p rel` under `root`, never through a symlink."""
    os.close(_walk(root, [p for p in rel.split("/") if p], make=True))


def walk_files(root: Path | str, rel: str) -> Iterator[str]:
    """Every name below `rel` that is not a directory (workspace-relative, sorted per
    directory), not following symlinks and skipping `.git`; raises if `rel` is not a
    directory."""
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY) if rel else None
    top = "." if fd is not None else str(root)
    try:
        for dirpath, dirnames, filenames, _ in os.fwalk(top, dir_fd=fd, follow_symlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d != ".git")
            here = dirpath.removeprefix(top).strip("/")
            prefix = "/".join(p for p in (rel, here) if p)
            for name in sorted(filenames):
                yield f"{prefix}/{name}" if prefix else name
    finally:
        if fd is not None:
            os.close(fd)
