"""The tool implementations, confined to the workspace.

Paths are relative; absolute paths, `..` and NUL bytes are refused before
touching the disk, and the resolved path (symlinks followed) must stay
inside the workspace. Files are opened with O_NOFOLLOW so a symlink swapped
in after the check is not followed either. Programs run from argv (never a
shell string), in the workspace, with a clean environment, a timeout and an
output cap.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toka.tools import gitws

JSON = dict[str, Any]
MAX_READ = 1_000_000
MAX_OUTPUT = 64_000
MAX_LIST = 2000
DEFAULT_TIMEOUT = 60
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
GIT_TOKEN_HEADER = "X-Toka-Git-Token"  # noqa: S105 (a header name)
# A workspace used as it is (a shared volume): files, no git.
AS_IS: JSON = {"state": "Ready", "git": False, "message": "used as it is (no git)"}


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
        # Programs' caches are not the agent's work: they stay out of its result commits.
        "PYTHONDONTWRITEBYTECODE": "1",
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


def prepare_workspace(workspace: Path, env: Mapping[str, str]) -> JSON:
    """Set up the workspace as the pod's environment says, once per pod; the outcome.

    A tools restart within the pod finds the repository and its saved state.
    A shared PersistentVolumeClaim is used as it is (no git: the agents
    already share their files). Failures are an outcome, not an exit: the
    kernel reads them, reports the reason on the Agent and refuses work.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    if env.get("TOKA_WORKSPACE_SHARED"):
        return dict(AS_IS)
    saved = gitws.load_state(workspace)
    if saved is not None:
        return saved
    try:
        for leftover in workspace.iterdir():
            # An earlier start of this container stopped half-way (its state is saved
            # only when ready); the pod's own volume holds nothing else, so start over.
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        inputs = [
            result_input(i["agent"], i["dir"], i["commit"])
            for i in json.loads(env.get("TOKA_WORKSPACE_INPUTS") or "[]")
        ]
        resume_dir = env.get("TOKA_WORKSPACE_RESUME_DIR")
        resume = None
        if resume_dir and Path(resume_dir, "commit").is_file():
            commit = Path(resume_dir, "commit").read_text().strip()
            resume = result_input(env.get("TOKA_AGENT_NAME", "agent"), resume_dir, commit)
        seed_dir = env.get("TOKA_WORKSPACE_SEED_DIR")
        prepared = gitws.prepare(
            workspace,
            seed=gitws.seed_files_from_dir(seed_dir) if seed_dir else None,
            git_url=env.get("TOKA_WORKSPACE_GIT_URL"),
            fetch_url=kernel_git_url(env),
            git_ref=env.get("TOKA_WORKSPACE_GIT_REF"),
            base=env.get("TOKA_WORKSPACE_BASE"),
            headers=kernel_git_headers(env),
            inputs=inputs,
            resume=resume,
            author=env.get("TOKA_AGENT_NAME", "agent"),
        )
        state: JSON = {
            "state": "Ready",
            "git": True,
            **prepared.wire(),
            # A resumed attempt's result so far, diffstat included.
            "result": gitws.describe(workspace, prepared.base),
        }
    except gitws.GitError as err:
        state = {"state": "Failed", "reason": err.reason, "message": str(err), "paths": err.paths}
    except (OSError, ValueError, TypeError, subprocess.SubprocessError) as err:
        state = {"state": "Failed", "reason": "WorkspaceFailed", "message": str(err)[:500]}
    if state["state"] == "Ready":
        gitws.save_state(workspace, state)
    return state


def result_input(agent: str, directory: str, commit: str) -> gitws.Input:
    """A result ConfigMap mounted at `directory`: its bundle, or the remote ref holding it."""
    ref = Path(directory, "ref")
    return gitws.Input(
        agent=agent,
        commit=commit,
        bundle=str(Path(directory, "bundle")),
        ref=ref.read_text().strip() if ref.is_file() else None,
    )


def kernel_git_url(env: Mapping[str, str]) -> str | None:
    """The kernel's git proxy: the only way to the session's remote, credential added there."""
    addr = env.get("TOKA_KERNEL_ADDR")
    return f"http://{addr}/git/repo" if addr and env.get("TOKA_WORKSPACE_GIT_URL") else None


def kernel_git_headers(env: Mapping[str, str]) -> list[str]:
    """The pod-local token that tells the kernel's proxy a request comes from this sidecar."""
    path = env.get("TOKA_GIT_TOKEN_FILE")
    if not path:
        return []
    try:
        return [f"{GIT_TOKEN_HEADER}: {Path(path).read_text().strip()}"]
    except OSError:
        return []


class Workspace:
    """The git side of the workspace, for the kernel only (agents never reach these ops)."""

    def __init__(self, root: Path, state: JSON, env: Mapping[str, str]):
        self.root = root
        self.state = state
        self.env = env

    def require_git(self) -> str:
        if self.state.get("state") != "Ready" or not self.state.get("git"):
            raise ToolError(f"the workspace is not a git work tree: {self.state}", status=409)
        return str(self.state["base"])

    def status(self, _: JSON) -> JSON:
        return self.state

    def commit(self, args: JSON) -> JSON:
        base = self.require_git()
        message, author = args.get("message"), args.get("author")
        if not isinstance(message, str) or not isinstance(author, str) or not author:
            raise ToolError("message and author must be strings")
        try:
            commit = gitws.commit_all(self.root, message, author)
            result = gitws.describe(self.root, base)
            data = gitws.bundle(self.root, base)
        except gitws.GitError as err:
            raise ToolError(f"{err.reason}: {err}", status=409) from None
        return {
            "committed": commit is not None,
            "result": result,
            "bundle": base64.b64encode(data).decode(),
        }

    def push(self, args: JSON) -> JSON:
        self.require_git()
        ref = args.get("ref")
        url = kernel_git_url(self.env)
        if not isinstance(ref, str) or not url:
            raise ToolError("ref must be a string, and the session must have a git remote")
        try:
            gitws.push(self.root, url, ref, kernel_git_headers(self.env))
        except gitws.GitError as err:
            raise ToolError(f"{err.reason}: {err}", status=409) from None
        return {"pushed": ref}
