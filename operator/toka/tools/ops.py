"""The tool implementations, confined to the workspace.

Paths are relative; absolute paths, `..` and NUL bytes are refused before
touching the disk, and the resolved path (symlinks followed) must stay
inside the workspace. Files are opened with O_NOFOLLOW so a symlink swapped
in after the check is not followed either. Programs run from argv (never a
shell string), in the workspace, with a clean environment, a timeout and an
output cap.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
MAX_READ = 1_000_000
MAX_OUTPUT = 64_000
MAX_LIST = 2000
DEFAULT_TIMEOUT = 60
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"


class ToolError(Exception):
    """A refused or failed tool call; `status` is the HTTP status the kernel passes on."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def confine(workspace: Path, rel: str, *, allow_root: bool = False) -> Path:
    if not isinstance(rel, str) or "\x00" in rel:
        raise ToolError("path must be a string without NUL bytes")
    if rel.startswith("/"):
        raise ToolError(
            f"absolute paths are not allowed: {rel!r}; use a path relative to the workspace"
        )
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ToolError(f"'..' is not allowed in paths: {rel!r}")
    if not parts and not allow_root:
        raise ToolError("a file path is required")
    root = workspace.resolve()
    full = root.joinpath(*parts)
    real = Path(os.path.realpath(full))
    if real != root and root not in real.parents:
        raise ToolError(f"{rel!r} resolves outside the workspace (symlink)", status=403)
    return full


def fs_read(workspace: Path, args: JSON) -> JSON:
    path = confine(workspace, args.get("path", ""))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ToolError(f"no such file: {args.get('path')}", status=404) from None
    except IsADirectoryError:
        raise ToolError(f"{args.get('path')} is a directory; use fs.list") from None
    except OSError as err:
        raise ToolError(f"cannot read {args.get('path')}: {err.strerror}", status=403) from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_READ + 1)
    return {
        "path": args["path"],
        "content": data[:MAX_READ].decode(errors="replace"),
        "truncated": len(data) > MAX_READ,
    }


def fs_write(workspace: Path, args: JSON) -> JSON:
    path = confine(workspace, args.get("path", ""))
    content = args.get("content")
    if not isinstance(content, str):
        raise ToolError("content must be a string")
    path.parent.mkdir(parents=True, exist_ok=True)
    confine(workspace, args["path"])  # the directories just made cannot have changed that
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise ToolError(f"cannot write {args['path']}: {err.strerror}", status=403) from None
    data = content.encode()
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return {"path": args["path"], "bytes": len(data)}


def fs_list(workspace: Path, args: JSON) -> JSON:
    base = confine(workspace, args.get("path") or "", allow_root=True)
    if not base.is_dir():
        raise ToolError(f"not a directory: {args.get('path') or '.'}", status=404)
    root = workspace.resolve()
    entries: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            entries.append(str(Path(dirpath, name).relative_to(root)))
            if len(entries) > MAX_LIST:
                return {"entries": entries[:MAX_LIST], "truncated": True}
    return {"entries": entries, "truncated": False}


def shell_exec(workspace: Path, args: JSON) -> JSON:
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ToolError("argv must be a non-empty list of strings")
    if "/" in argv[0] or argv[0] in (".", ".."):
        raise ToolError("argv[0] must be a program name, not a path")
    timeout = int(args.get("timeout_seconds") or DEFAULT_TIMEOUT)
    env = {
        "PATH": CLEAN_PATH + ":" + os.environ.get("TOKA_TOOLS_EXTRA_PATH", ""),
        "HOME": str(workspace),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    try:
        proc = subprocess.run(
            argv,
            cwd=workspace,
            env=env,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError:
        raise ToolError(f"program not found: {argv[0]}", status=404) from None
    except subprocess.TimeoutExpired as err:
        return {
            "exit_code": None,
            "timed_out": True,
            "stdout": (err.stdout or b"")[-MAX_OUTPUT:].decode(errors="replace"),
            "stderr": (err.stderr or b"")[-MAX_OUTPUT:].decode(errors="replace"),
            "truncated": False,
        }
    truncated = len(proc.stdout) > MAX_OUTPUT or len(proc.stderr) > MAX_OUTPUT
    return {
        "exit_code": proc.returncode,
        "timed_out": False,
        "truncated": truncated,
        "stdout": proc.stdout[-MAX_OUTPUT:].decode(errors="replace"),
        "stderr": proc.stderr[-MAX_OUTPUT:].decode(errors="replace"),
    }


def fs_resolve(workspace: Path, args: JSON) -> JSON:
    """Where a path really leads, relative to the workspace, so that the kernel can check
    its grant against the target of a symlink too (a textual grant is not enough)."""
    full = confine(workspace, args.get("path") or "", allow_root=True)
    real = Path(os.path.realpath(full)).relative_to(workspace.resolve())
    return {"path": "" if str(real) == "." else str(real)}


OPS = {
    "fs.read": fs_read,
    "fs.write": fs_write,
    "fs.list": fs_list,
    "fs.resolve": fs_resolve,
    "shell.exec": shell_exec,
}


def seed(workspace: Path, seed_dir: str | None, git_url: str | None, git_ref: str | None) -> str:
    """Fill an empty workspace from a ConfigMap (`a__b.py` is `a/b.py`) or a git clone."""
    workspace.mkdir(parents=True, exist_ok=True)
    if any(workspace.iterdir()):
        return "workspace already has files; not seeding"
    if seed_dir:
        count = 0
        for name in sorted(os.listdir(seed_dir)):
            if name.startswith(".."):
                continue  # the ConfigMap volume's own bookkeeping
            target = confine(workspace, name.replace("__", "/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(seed_dir, name).read_bytes())
            count += 1
        return f"seeded {count} files from the ConfigMap"
    if git_url:
        argv = [
            "git",
            "clone",
            "--depth",
            "1",
            *(["--branch", git_ref] if git_ref else []),
            git_url,
            str(workspace),
        ]
        proc = subprocess.run(
            argv,
            capture_output=True,
            timeout=600,
            check=False,
            env={"PATH": CLEAN_PATH, "HOME": "/tmp", "GIT_TERMINAL_PROMPT": "0"},
        )
        if proc.returncode != 0:
            raise ToolError(
                f"git clone {git_url} failed: {proc.stderr.decode(errors='replace')[-500:]}"
            )
        return f"cloned {git_url}"
    return "empty workspace"
