"""The tool implementations, confined to the workspace.

Paths arrive in the canonical spelling the kernel checked (`toka.paths`);
absolute paths, `..` and NUL bytes are refused before touching the disk.
Files are opened from the workspace's own descriptor one component at a
time, following no symlink (`beneath`): the kernel sends a symlink's real
target, checked against the grant, and one swapped in afterwards is refused.
Programs run from argv (never a shell string), in the workspace, confined by
Landlock from the agent's grants (`sandbox`), with a clean environment, a
timeout that ends their process group and what they leave behind, a process
limit and an output cap applied while reading.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from toka.contract import (
    AGENT_NAME_ENV,
    GIT_DIR_ENV,
    GIT_TOKEN_FILE_ENV,
    GIT_TOKEN_HEADER,
    KERNEL_ADDR_ENV,
    KERNEL_GIT_PATH,
    RESULT_BUNDLE_KEY,
    RESULT_COMMIT_KEY,
    RESULT_REF_KEY,
    TOOLS_EXTRA_PATH_ENV,
    WORKSPACE_BASE_ENV,
    WORKSPACE_GIT_REF_ENV,
    WORKSPACE_GIT_URL_ENV,
    WORKSPACE_INPUTS_ENV,
    WORKSPACE_RESUME_DIR_ENV,
    WORKSPACE_SEED_DIR_ENV,
    WORKSPACE_SHARED_ENV,
)
from toka.paths import PathError, canonical_path
from toka.tools import beneath, gitws, sandbox

JSON = dict[str, Any]
MAX_READ = 1_000_000
MAX_OUTPUT = 64_000
MAX_LIST = 2000
DEFAULT_TIMEOUT = 60
# After the program exits, how long its output may still arrive (from its children).
EXIT_GRACE = 0.5
MAX_PROCESSES = 1024  # per user (the tools UID): the tools server and everything it runs
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
# A workspace used as it is (a shared volume): files, no git.
AS_IS: JSON = {"state": "Ready", "git": False, "message": "used as it is (no git)"}


class ToolError(Exception):
    """A refused or failed tool call; `status` is the HTTP status the kernel passes on."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def confine(workspace: Path, rel: str, *, directory: bool = False) -> Path:
    """The workspace path `rel` names, by the canonical spelling the kernel checked."""
    if not isinstance(rel, str):
        raise ToolError("path must be a string")
    try:
        canonical = canonical_path(rel, directory=directory)
    except PathError as err:
        raise ToolError(str(err)) from None
    parts = canonical.split("/") if canonical else []
    root = workspace.resolve()
    full = root.joinpath(*parts)
    real = Path(os.path.realpath(full))
    if real != root and root not in real.parents:
        raise ToolError(f"{rel!r} resolves outside the workspace (symlink)", status=403)
    return full


# A filesystem error is the agent's mistake or the workspace's state, never the server's:
# a 4xx the agent can act on. 403s are counted as denials by the kernel.
_ERRNO: dict[int, tuple[int, str]] = {
    errno.ENOENT: (404, "no such file or directory"),
    errno.ENOTDIR: (409, "part of the path is a file, not a directory"),
    errno.EEXIST: (409, "part of the path is a file, not a directory"),
    errno.EISDIR: (409, "it is a directory; list it with fs.list"),
    errno.ENXIO: (409, "it is not a regular file (a FIFO, socket or device)"),
    errno.ENAMETOOLONG: (400, "the path or one of its names is too long"),
    errno.ELOOP: (403, "it is a symbolic link, which the tools do not follow"),
    errno.EACCES: (403, "permission denied"),
    errno.EPERM: (403, "operation not permitted"),
    errno.ENOSPC: (413, "no space is left in the workspace"),
    errno.EDQUOT: (413, "the workspace's quota is used up"),
    errno.EFBIG: (413, "the file is too large"),
}


def os_error(err: OSError, doing: str) -> ToolError:
    """`err` as a 4xx saying what failed (`doing`: "read 'a/b'") and why."""
    status, why = _ERRNO.get(err.errno or 0, (409, err.strerror or type(err).__name__))
    return ToolError(f"cannot {doing}: {why}", status=status)


def _regular(fd: int) -> None:
    """Only regular files are read or written: a FIFO would block the call, a device
    never end it."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        raise OSError(errno.EISDIR, "is a directory")
    if not stat.S_ISREG(mode):
        raise OSError(errno.ENXIO, "not a regular file")


def fs_read(workspace: Path, args: JSON) -> JSON:
    rel = args.get("path", "")
    path = confine(workspace, rel)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just after.
        fd = beneath.open_beneath(workspace, _rel(workspace, path), os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            _regular(fd)
            data = fh.read(MAX_READ + 1)
    except OSError as err:
        raise os_error(err, f"read {rel!r}") from None
    return {
        "path": rel,
        "content": data[:MAX_READ].decode(errors="replace"),
        "truncated": len(data) > MAX_READ,
    }


def fs_write(workspace: Path, args: JSON) -> JSON:
    rel = args.get("path", "")
    path = confine(workspace, rel)
    content = args.get("content")
    if not isinstance(content, str):
        raise ToolError("content must be a string")
    data = content.encode()
    try:
        # O_TRUNC does nothing to a FIFO or a device, which are refused once open.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK
        fd = beneath.open_beneath(workspace, _rel(workspace, path), flags, make_parents=True)
        with os.fdopen(fd, "wb") as fh:
            _regular(fd)
            fh.write(data)
    except OSError as err:
        raise os_error(err, f"write {rel!r}") from None
    return {"path": rel, "bytes": len(data)}


def fs_list(workspace: Path, args: JSON) -> JSON:
    rel = args.get("path") or ""
    base = confine(workspace, rel, directory=True)
    try:
        if not base.is_dir():
            raise ToolError(f"not a directory: {rel or '.'}", status=404)
        entries: list[str] = []
        # Unreadable directories below are skipped (os.fwalk's default), not an error.
        for name in beneath.walk_files(workspace, _rel(workspace, base)):
            entries.append(name)
            if len(entries) > MAX_LIST:
                return {"entries": entries[:MAX_LIST], "truncated": True}
    except OSError as err:
        raise os_error(err, f"list {rel!r}") from None
    return {"entries": entries, "truncated": False}


def _rel(workspace: Path, path: Path) -> str:
    """`path` (from `confine`) relative to the workspace, to be opened from it."""
    return str(path.relative_to(workspace.resolve())).removeprefix(".")


def exec_path() -> str:
    """Programs come from the image's directories (and absolute extra ones), never from
    the working directory: no empty entry, no relative one."""
    extra = os.environ.get(TOOLS_EXTRA_PATH_ENV, "").split(":")
    dirs = CLEAN_PATH.split(":") + [d for d in extra if d.startswith("/")]
    return ":".join(dict.fromkeys(dirs))


def exec_env(workspace: Path, scratch: Path, history: Path | None) -> dict[str, str]:
    """A clean environment: HOME and TMPDIR are the call's own scratch directory (nothing
    in the workspace configures the program), and git is configured from here only."""
    env = gitws.git_env(home=str(scratch)) | {
        "PATH": exec_path(),
        "TMPDIR": str(scratch),
        "GIT_PAGER": "cat",
        "PAGER": "cat",
        # Programs' caches are not the agent's work: they stay out of its result commits.
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if history is not None:
        env |= {"GIT_DIR": str(history), "GIT_WORK_TREE": str(workspace)}
    return env


def shell_exec(workspace: Path, args: JSON) -> JSON:
    """Run argv in the workspace, confined by the OS to what the kernel's `confine` allows.

    `confine` is added by the kernel from the agent's `fs:` grants (the agent cannot send
    it): `{"read": [globs], "write": [globs], "mode": "Enforced" | "BestEffort"}`.
    Without Landlock an Enforced call is refused; the answer says what confined it.
    """
    argv = args.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ToolError("argv must be a non-empty list of strings")
    if "/" in argv[0] or argv[0] in (".", ".."):
        raise ToolError("argv[0] must be a program name, not a path")
    timeout = int(args.get("timeout_seconds") or DEFAULT_TIMEOUT)
    rules = args.get("confine") or {}
    read, write = list(rules.get("read") or []), list(rules.get("write") or [])
    abi = sandbox.abi_version()
    if abi < 1 and rules.get("mode") != "BestEffort":
        raise ToolError(
            "programs run only under Landlock, which this node's kernel does not offer; "
            "set the Agent's spec.sandbox to BestEffort to run them unconfined",
            status=403,
        )
    scratch = Path(tempfile.mkdtemp(prefix="toka-exec-"))
    fd = -1
    try:
        # The history holds every path of the base: readable only where every path is.
        history = gitws.git_dir(workspace) if "**" in read else None
        if history is not None and not history.is_dir():
            history = None
        if abi >= 1:
            extra = [d for d in exec_path().split(":") if d not in CLEAN_PATH.split(":")]
            if history is not None and history.parent != workspace:
                extra.append(str(history))
            plan = sandbox.confinement(workspace, read, write, scratch, extra)
            fd = sandbox.build_ruleset(abi, plan.rules, workspace, plan.beneath)
        preexec = _confined(sandbox.restrictor(fd if fd >= 0 else None))
        answer = _run(argv, workspace, exec_env(workspace, scratch, history), timeout, preexec)
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
    answer["sandbox"] = {
        "landlock": abi,
        "mode": "Enforced" if abi >= 1 else "Unconfined",
        "guarantees": sandbox.guarantees(abi),
    }
    return answer


_RUNNING: set[int] = set()
_RUNNING_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set by `kill_running`: no program starts after it


def _reap_orphans() -> None:
    """End what programs left behind. As subreaper (or PID 1 in its container) this server
    inherits every orphan of the programs it ran, those that left their process group
    (`setsid`) included: each is killed and collected. Spared: this server's own
    session (its git), and the sessions of calls still running."""
    mine = os.getsid(0)
    # A pass ends the server's children; their children are its children next (it is
    # their subreaper): as many passes as there can be processes.
    for _ in range(MAX_PROCESSES):
        doomed = []
        for pid in _children():
            state, session = _stat(pid)
            with _RUNNING_LOCK:
                running = pid in _RUNNING or session in _RUNNING
            if running or session in (mine, 0):
                continue
            if state == "Z" or sandbox.is_subreaper():  # the dead are collected in any case
                doomed.append(pid)
        if not doomed:
            return
        for pid in doomed:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def kill_running() -> None:
    """End the programs of calls still running, each with its process group: the server
    is stopping, and nothing it started may outlive it."""
    with _RUNNING_LOCK:
        _STOPPING.set()
        running = list(_RUNNING)
    for pid in running:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _children() -> set[int]:
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(p) for p in (task / "children").read_text().split())
    return out


def _stat(pid: int) -> tuple[str, int]:
    """(state, session id) of a process; ("", 0) when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[3])
    except (OSError, IndexError, ValueError):
        return "", 0


def _limits() -> None:
    # A fork bomb stops at the limit; no core file of a crashed program lands in the workspace.
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _confined(restrict: Callable[[], None]) -> Callable[[], None]:
    def preexec() -> None:
        _limits()
        restrict()

    return preexec


def _run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: int, preexec: Callable[[], None]
) -> JSON:
    """Run to the end or the timeout, keeping the last MAX_OUTPUT bytes of each stream as
    they come (a program printing gigabytes costs no memory), then kill its process group."""
    try:
        # Held until the program is known as running: another call's reaper must not
        # take it for a leftover in between.
        with _RUNNING_LOCK:
            if _STOPPING.is_set():
                raise ToolError("the tools server is stopping", status=503)
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                # Between fork and exec: a few system calls, no lock another thread holds.
                preexec_fn=preexec,
            )
            _RUNNING.add(proc.pid)
    except FileNotFoundError:
        raise ToolError(f"program not found: {argv[0]}", status=404) from None
    except PermissionError as err:
        raise ToolError(f"cannot run {argv[0]}: {err.strerror}", status=403) from None
    assert proc.stdout is not None
    assert proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    tails = {out_fd: bytearray(), err_fd: bytearray()}
    seen = dict.fromkeys(tails, 0)
    deadline = time.monotonic() + timeout
    timed_out = False
    with selectors.DefaultSelector() as sel:
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        ended: float | None = None
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if ended is None and proc.poll() is not None:
                ended = now
            if ended is not None and now - ended > EXIT_GRACE:
                break  # the program ended; what holds its output open is a leftover
            for key, _ in sel.select(min(deadline - now, 0.1 if ended else 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                tail = tails[key.fd]
                tail += chunk
                seen[key.fd] += len(chunk)
                if len(tail) > MAX_OUTPUT:
                    del tail[: len(tail) - MAX_OUTPUT]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what it left behind goes too
    code = proc.wait()
    with _RUNNING_LOCK:
        _RUNNING.discard(proc.pid)
    _reap_orphans()
    proc.stdout.close()
    proc.stderr.close()
    return {
        "exit_code": None if timed_out else code,
        "timed_out": timed_out,
        "truncated": any(n > MAX_OUTPUT for n in seen.values()),
        "stdout": tails[out_fd].decode(errors="replace"),
        "stderr": tails[err_fd].decode(errors="replace"),
    }


def fs_resolve(workspace: Path, args: JSON) -> JSON:
    """Where a path really leads, relative to the workspace, so that the kernel can check
    its grant against the target of a symlink too (a textual grant is not enough)."""
    full = confine(workspace, args.get("path") or "", directory=True)
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
    if env.get(WORKSPACE_SHARED_ENV):
        return dict(AS_IS)
    if env.get(GIT_DIR_ENV):
        # A directory inside the volume: git makes it (and a clone wants it not to exist).
        gitws.use_git_dir(workspace, Path(env[GIT_DIR_ENV], "repo"))
    saved = gitws.load_state(workspace)
    if saved is not None:
        return saved
    try:
        history = gitws.git_dir(workspace)
        if history.parent != workspace and history.is_dir():
            shutil.rmtree(history)
        for leftover in workspace.iterdir():
            # An earlier start of this container stopped half-way (its state is saved
            # only when ready); the pod's own volume holds nothing else, so start over.
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        inputs = [
            result_input(i["agent"], i["dir"], i["commit"])
            for i in json.loads(env.get(WORKSPACE_INPUTS_ENV) or "[]")
        ]
        resume_dir = env.get(WORKSPACE_RESUME_DIR_ENV)
        resume = None
        if resume_dir and Path(resume_dir, RESULT_COMMIT_KEY).is_file():
            commit = Path(resume_dir, RESULT_COMMIT_KEY).read_text().strip()
            resume = result_input(env.get(AGENT_NAME_ENV, "agent"), resume_dir, commit)
        seed_dir = env.get(WORKSPACE_SEED_DIR_ENV)
        prepared = gitws.prepare(
            workspace,
            seed=gitws.seed_files_from_dir(seed_dir) if seed_dir else None,
            git_url=env.get(WORKSPACE_GIT_URL_ENV),
            fetch_url=kernel_git_url(env),
            git_ref=env.get(WORKSPACE_GIT_REF_ENV),
            base=env.get(WORKSPACE_BASE_ENV),
            headers=kernel_git_headers(env),
            inputs=inputs,
            resume=resume,
            author=env.get(AGENT_NAME_ENV, "agent"),
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
    ref = Path(directory, RESULT_REF_KEY)
    return gitws.Input(
        agent=agent,
        commit=commit,
        bundle=str(Path(directory, RESULT_BUNDLE_KEY)),
        ref=ref.read_text().strip() if ref.is_file() else None,
    )


def kernel_git_url(env: Mapping[str, str]) -> str | None:
    """The kernel's git proxy: the only way to the session's remote, credential added there."""
    addr = env.get(KERNEL_ADDR_ENV)
    return f"http://{addr}{KERNEL_GIT_PATH}" if addr and env.get(WORKSPACE_GIT_URL_ENV) else None


def kernel_git_headers(env: Mapping[str, str]) -> list[str]:
    """The pod-local token that tells the kernel's proxy a request comes from this sidecar."""
    path = env.get(GIT_TOKEN_FILE_ENV)
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
