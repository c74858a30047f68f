"""The workspace as a git work tree: how results flow from one agent to the next.

Every agent's `/workspace` is a git repository. Its base is the session's
source: a ConfigMap's files committed with a fixed identity and date (so
every pod, the operator and `toka export` make the very same base commit),
a clone of `workspace.git`, or an empty tree. An agent with dependencies
then merges each dependency's result commit, in `dependsOn` order, from the
git bundle its dependency left (base..result). A conflict aborts the merge
and names the paths: nothing is half-applied. Each completed task becomes a
commit; the agent's result is the last one.

Git runs with a configuration the workspace cannot change: no system or
global config, HOME outside the workspace, hooks, fsmonitor and external
diff off, and only the transports Toka uses. In the tools sidecar the
repository itself lives outside the work tree (`use_git_dir`): a program the
agent runs may write anywhere its grant allows in /workspace, and a `.git`
there is not the one Toka commits with, so no filter, hook or config written
by the agent ever runs in Toka's own git. Standard library only: this
runs in the tools sidecar, in the operator and in `toka export`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BASE_NAME = "Toka"
BASE_EMAIL = "toka@toka.dev"
# A fixed date makes the base commit of a ConfigMap-seeded workspace the same everywhere.
BASE_EPOCH = 1577836800  # 2020-01-01T00:00:00Z
BRANCH = "toka/work"
STATE_FILE = "toka-workspace.json"  # in the git dir: survives a tools restart within the pod
# Git settings that a repository's own config cannot override (command line wins).
LOCKED_CONFIG = (
    ("core.hooksPath", "/dev/null"),
    ("core.attributesFile", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.pager", "cat"),
    ("core.editor", "false"),
    ("core.askPass", ""),
    ("credential.helper", ""),
    ("protocol.allow", "never"),
    ("protocol.file.allow", "always"),
    ("protocol.http.allow", "always"),
    ("protocol.https.allow", "always"),
    ("commit.gpgSign", "false"),
    ("gc.auto", "0"),
    ("advice.detachedHead", "false"),
    ("init.defaultBranch", "main"),
    # A pod's workspace volume belongs to root (0777), not to the tools user; git runs
    # only in the workspace or a directory Toka made, so ownership proves nothing here.
    ("safe.directory", "*"),
)
PATH = "/usr/local/bin:/usr/bin:/bin"


class GitError(Exception):
    """A workspace step that failed; `reason` is the condition reason the operator shows."""

    def __init__(self, reason: str, message: str, paths: Sequence[str] = ()):
        super().__init__(message)
        self.reason = reason
        self.paths = list(paths)


@dataclass(frozen=True)
class Input:
    """A dependency's result: its commit, and the bundle file that holds it, or (for a
    result too large for a ConfigMap) the remote ref it was pushed to."""

    agent: str
    commit: str
    bundle: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class Remote:
    """How tools reaches the session's remote: the kernel's proxy and the pod's token."""

    url: str
    headers: tuple[str, ...] = ()


@dataclass
class Prepared:
    base: str
    start: str
    merged: list[str] = field(default_factory=list)
    resumed: bool = False

    def wire(self) -> dict[str, Any]:
        return asdict(self)


def basic_authorization(keys: dict[str, str]) -> tuple[str | None, tuple[str, ...]]:
    """The `Authorization` value for a git credentials Secret's keys (`username` and
    `password`, or `token`), and every value a redactor must hide; (None, ()) without one."""
    password = (keys.get("password") or keys.get("token") or "").strip()
    if not password:
        return None, ()
    user = (keys.get("username") or "").strip() or "x-access-token"
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {encoded}", (password, encoded)


def git_env(home: str | None = None, headers: Iterable[str] = ()) -> dict[str, str]:
    """A clean environment: nothing from the workspace or the container configures git.

    Extra HTTP headers go in as environment config (`GIT_CONFIG_*`), never on
    the command line or in `.git/config`, so no process listing shows them.
    """
    config = [*LOCKED_CONFIG, *(("http.extraHeader", h) for h in headers)]
    env = {
        "PATH": PATH,
        "HOME": home or tempfile.gettempdir(),
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_ATTR_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": str(len(config)),
    }
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


# Work trees whose repository lives elsewhere: {work tree: git dir}.
_GIT_DIRS: dict[str, str] = {}


def use_git_dir(workspace: Path, git_dir: Path) -> None:
    """Keep `workspace`'s repository in `git_dir`, outside the work tree, from now on."""
    _GIT_DIRS[str(workspace)] = str(git_dir)


def git_dir(workspace: Path | str) -> Path:
    return Path(_GIT_DIRS.get(str(workspace)) or Path(workspace, ".git"))


def _repo_args(repo: Path | str) -> list[str]:
    separate = _GIT_DIRS.get(str(repo))
    return ["-C", str(repo)] + (
        [f"--git-dir={separate}", f"--work-tree={repo}"] if separate else []
    )


def run_git(
    repo: Path | str,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        ["git", *_repo_args(repo), *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        env=env or git_env(),
    )
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-600:]
        raise GitError("GitFailed", f"git {args[0]} failed: {err}")
    return proc


def _out(repo: Path | str, *args: str, env: dict[str, str] | None = None) -> str:
    return run_git(repo, *args, env=env).stdout.decode().strip()


def _identity(name: str, email: str, date: str | None = None) -> dict[str, str]:
    ident = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    if date:
        ident |= {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    return ident


def seed_paths(files: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """ConfigMap keys as workspace paths (`src__calc.py` is `src/calc.py`), sorted; a key
    that is not a path inside the workspace is refused."""
    out = {}
    for key, data in files:
        parts = [p for p in key.replace("__", "/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts or parts[0] == ".git" or "\n" in key:
            raise GitError("InvalidWorkspace", f"ConfigMap key {key!r} is not a workspace path")
        out["/".join(parts)] = data
    return sorted(out.items())


def seed_files_from_dir(seed_dir: str) -> list[tuple[str, bytes]]:
    return [
        (name, Path(seed_dir, name).read_bytes())
        for name in sorted(os.listdir(seed_dir))
        if not name.startswith("..") and Path(seed_dir, name).is_file()
    ]


def init_base(workspace: Path, files: Iterable[tuple[str, bytes]] = ()) -> str:
    """A repository whose first commit holds `files`; the same commit id wherever it is made.

    The commit is written by `git fast-import` (one pack, not a loose object per
    file), then checked out: as fast as a clone's checkout.
    """
    paths = seed_paths(files)
    workspace.mkdir(parents=True, exist_ok=True)
    run_git(workspace, "init", "-q", "-b", BRANCH)
    stamp = f"{BASE_NAME} <{BASE_EMAIL}> {BASE_EPOCH} +0000"
    message = b"Base workspace\n"
    stream = [
        f"commit refs/heads/{BRANCH}\nauthor {stamp}\ncommitter {stamp}\n".encode(),
        f"data {len(message)}\n".encode() + message,
    ]
    for path, data in paths:
        stream.append(f"M 100644 inline {path}\ndata {len(data)}\n".encode() + data + b"\n")
    run_git(workspace, "fast-import", "--quiet", stdin=b"".join(stream))
    run_git(workspace, "reset", "-q", "--hard")
    return head(workspace)


def head(workspace: Path) -> str:
    """HEAD's commit, read from the repository's files (one git process less per step)."""
    where = git_dir(workspace)
    ref = (where / "HEAD").read_text().strip()
    if ref.startswith("ref: "):
        path = where / ref.removeprefix("ref: ")
        if path.is_file():
            return path.read_text().strip()
        return _out(workspace, "rev-parse", "HEAD")
    return ref


def clone_base(
    workspace: Path,
    fetch_url: str,
    display_url: str,
    ref: str | None,
    *,
    base: str | None = None,
    headers: Iterable[str] = (),
) -> str:
    """Clone `fetch_url` (the kernel's proxy) and check out `base`, else `ref`, else HEAD.

    `origin` is set to `display_url` afterwards: nothing in `.git/config`
    says how the clone was made.
    """
    env = git_env(headers=headers)
    workspace.mkdir(parents=True, exist_ok=True)
    separate = _GIT_DIRS.get(str(workspace))
    proc = subprocess.run(
        [
            "git",
            "clone",
            "-q",
            "--no-checkout",
            *([f"--separate-git-dir={separate}"] if separate else []),
            fetch_url,
            str(workspace),
        ],
        capture_output=True,
        timeout=600,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        auth = any(s in err for s in ("Authentication failed", "401", "403", "could not read"))
        raise GitError(
            "GitAuthFailed" if auth else "GitCloneFailed",
            f"cannot clone {display_url}: {err[-400:]}"
            + (
                "; set workspace.git.credentialsSecretRef to a Secret with username and "
                "password (or token) keys that may read it"
                if auth
                else ""
            ),
        )
    if separate:
        Path(workspace, ".git").unlink()  # the pointer file: Toka's git names its dir itself
    run_git(workspace, "remote", "set-url", "origin", display_url)
    target = base or (f"origin/{ref}" if ref else "origin/HEAD")
    found = run_git(workspace, "rev-parse", "--verify", "-q", f"{target}^{{commit}}", check=False)
    if found.returncode != 0 and ref and not base:
        found = run_git(workspace, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    if found.returncode != 0:
        raise GitError("GitCloneFailed", f"{display_url} has no {base or ref or 'HEAD'}")
    commit = found.stdout.decode().strip()
    run_git(workspace, "checkout", "-q", "-B", BRANCH, commit)
    return commit


def fetch_commit(
    workspace: Path,
    source: Input,
    env: dict[str, str] | None = None,
    remote: Remote | None = None,
) -> None:
    """Bring `source.commit` into the repository from its bundle (or its remote ref), and
    check that it is what came."""
    if source.bundle and Path(source.bundle).is_file():
        where, what = source.bundle, "HEAD"
    elif source.ref and remote is not None:
        where, what = remote.url, source.ref
        env = {**(env or git_env()), **git_env(headers=remote.headers)}
    else:
        raise GitError(
            "ResultMissing",
            f"the result of {source.agent} ({source.commit[:12]}) is not available to this pod",
        )
    proc = run_git(workspace, "fetch", "-q", where, what, env=env, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-400:]
        raise GitError("ResultMissing", f"cannot read the result of {source.agent}: {err}")
    got = Path(git_dir(workspace), "FETCH_HEAD").read_text().split(None, 1)[0]
    if got != source.commit:
        raise GitError(
            "ResultMissing",
            f"the result bundle of {source.agent} holds {got[:12]}, not {source.commit[:12]}",
        )


def merge_inputs(
    workspace: Path,
    inputs: Sequence[Input],
    author: str,
    *,
    fetched: bool = False,
    date: str | None = None,
    remote: Remote | None = None,
) -> list[str]:
    """Merge each input into HEAD in order; on a conflict, undo it and name the paths.

    With `date`, merge commits are the same wherever and however often they are made.
    """
    env = git_env() | _identity(author, f"{author}@agents.toka.dev", date)
    merged: list[str] = []
    for source in inputs:
        if not fetched:
            fetch_commit(workspace, source, env, remote)
        proc = run_git(
            workspace,
            "merge",
            "-q",
            "--no-edit",
            "-m",
            f"Merge the result of {source.agent}",
            source.commit,
            env=env,
            check=False,
        )
        if proc.returncode != 0:
            paths = _out(workspace, "diff", "--name-only", "--diff-filter=U").splitlines()
            run_git(workspace, "merge", "--abort", env=env, check=False)
            if not paths:
                err = proc.stderr.decode(errors="replace").strip()[-400:]
                raise GitError("MergeFailed", f"cannot merge {source.agent}: {err}")
            others = ", ".join(merged) or "the base"
            raise GitError(
                "MergeConflict",
                f"the result of {source.agent} conflicts with {others} in: {', '.join(paths)}",
                paths,
            )
        merged.append(source.agent)
    return merged


def prepare(
    workspace: Path,
    *,
    seed: list[tuple[str, bytes]] | None,
    git_url: str | None = None,
    fetch_url: str | None = None,
    git_ref: str | None = None,
    base: str | None = None,
    headers: Iterable[str] = (),
    inputs: Sequence[Input] = (),
    resume: Input | None = None,
    author: str = "agent",
) -> Prepared:
    """Make `workspace` the agent's starting point: base, then its inputs (or its own
    earlier result, which already holds them)."""
    if git_url:
        base_commit = clone_base(
            workspace, fetch_url or git_url, git_url, git_ref, base=base, headers=headers
        )
    else:
        base_commit = init_base(workspace, seed or [])
    if base and base != base_commit:
        raise GitError(
            "BaseMismatch",
            f"this pod's base is {base_commit[:12]} but the session's is {base[:12]}",
        )
    remote = Remote(fetch_url, tuple(headers)) if fetch_url else None
    if resume is not None and resume.commit != base_commit:
        fetch_commit(workspace, resume, remote=remote)
        run_git(workspace, "checkout", "-q", "-B", BRANCH, resume.commit)
        start = resume.commit
        return Prepared(base=base_commit, start=start, resumed=True)
    merged = merge_inputs(workspace, inputs, author, remote=remote)
    return Prepared(base=base_commit, start=head(workspace), merged=merged)


def commit_all(workspace: Path, message: str, author: str) -> str | None:
    """Commit every change in the work tree as `author`; None when nothing changed."""
    env = git_env() | _identity(author, f"{author}@agents.toka.dev")
    run_git(workspace, "add", "-A", env=env)
    if run_git(workspace, "diff", "--cached", "--quiet", env=env, check=False).returncode == 0:
        return None
    run_git(workspace, "commit", "-q", "--no-verify", "-m", message, env=env)
    return _out(workspace, "rev-parse", "HEAD")


def describe(workspace: Path, base: str, commit: str | None = None) -> dict[str, Any]:
    """The result: commit, its parents, and what changed since the base."""
    commit = commit or _out(workspace, "rev-parse", "HEAD")
    parents = _out(workspace, "rev-list", "--parents", "-n", "1", commit).split()[1:]
    files = insertions = deletions = 0
    for line in _out(workspace, "diff", "--numstat", "--no-ext-diff", base, commit).splitlines():
        added, removed, _ = line.split("\t", 2)
        files += 1
        insertions += int(added) if added.isdigit() else 0
        deletions += int(removed) if removed.isdigit() else 0
    return {
        "commit": commit,
        "parents": parents,
        "filesChanged": files,
        "insertions": insertions,
        "deletions": deletions,
    }


def bundle(workspace: Path, base: str) -> bytes:
    """The commits from `base` (excluded) to HEAD: what a dependent needs on top of its base.

    Fetching `HEAD` from the bundle gives the result. With no commit beyond
    the base the result is the base itself, and the bundle is empty.
    """
    if _out(workspace, "rev-parse", "HEAD") == base:
        return b""
    return run_git(workspace, "bundle", "create", "-q", "-", "HEAD", f"^{base}").stdout


def save_state(workspace: Path, state: dict[str, Any]) -> None:
    Path(git_dir(workspace), STATE_FILE).write_text(json.dumps(state))


def load_state(workspace: Path) -> dict[str, Any] | None:
    path = Path(git_dir(workspace), STATE_FILE)
    return json.loads(path.read_text()) if path.is_file() else None


def push(workspace: Path, url: str, ref: str, headers: Iterable[str] = ()) -> None:
    """Push HEAD to `ref` at `url` (the kernel's proxy, which decides what may be pushed)."""
    proc = run_git(
        workspace, "push", "-q", url, f"HEAD:{ref}", env=git_env(headers=headers), check=False
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-600:]
        raise GitError("PushFailed", f"cannot push {ref}: {err}")
