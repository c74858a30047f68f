"""`toka export`: a session's result out of the cluster, with no git remote needed.

The result lives in the session's result ConfigMap as a git bundle on top of
the session's base. The base is made again here exactly as the pods made it
(the workspace ConfigMap's files, committed with Toka's fixed identity and
date, or a clone of `workspace.git` with the credentials you may read), then
the bundle is fetched onto it, and the result leaves as a patch (for `git
apply` on the source), a directory (the files), or a complete bundle (for
`git clone`).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from toka.api.models import AgentSession
from toka.controller.results import ResultError, fetch_result, make_base
from toka.kube.client import SESSIONS, ApiError, AsyncKube
from toka.kube.config import KubeConfig
from toka.tools import gitws


class ExportError(Exception):
    """What stands between the user and the result; the message says what to do."""


async def export(
    config: KubeConfig,
    namespace: str,
    name: str,
    *,
    patch: str | None = None,
    directory: str | None = None,
    bundle: str | None = None,
) -> str:
    """Write the result as asked; a line saying what was written."""
    async with AsyncKube(config) as kube:
        try:
            body = await kube.get(SESSIONS, name, namespace)
        except ApiError as err:
            raise ExportError(f"AgentSession {namespace}/{name}: {err}") from None
        session = AgentSession.model_validate(body)
        status = session.status
        result = status.result if status else None
        if result is None or result.config_map is None:
            phase = status.phase if status and status.phase else "Pending"
            raise ExportError(
                f"AgentSession {namespace}/{name} has no result yet (phase {phase}); a session "
                "has one once it succeeded"
            )
        with tempfile.TemporaryDirectory(prefix="toka-export-") as tmp:
            repo = Path(tmp, "repo")
            try:
                remote = await make_base(kube, namespace, session.spec.workspace, repo, result.base)
                await fetch_result(kube, namespace, repo, result.config_map, result.commit, remote)
            except (ResultError, gitws.GitError) as err:
                raise ExportError(str(err)) from None
            except ApiError as err:
                raise ExportError(f"reading the result: {err}") from None
            try:
                return await asyncio.to_thread(
                    _write, repo, name, result.base, result.commit, patch, directory, bundle
                )
            except (gitws.GitError, OSError) as err:
                raise ExportError(f"writing the result: {err}") from None


def _write(
    repo: Path,
    name: str,
    base: str,
    commit: str,
    patch: str | None,
    directory: str | None,
    bundle: str | None,
) -> str:
    short = commit[:12]
    if patch is not None:
        diff = gitws.run_git(repo, "diff", "--binary", "--no-ext-diff", base, commit).stdout
        if patch == "-":
            sys.stdout.buffer.write(diff)
            sys.stdout.flush()
            return f"wrote the patch of {short} against the base {base[:12]} to standard output"
        Path(patch).write_bytes(diff)
        return f"wrote {patch}: the changes of {short} against the base {base[:12]} (git apply)"
    if directory is not None:
        target = Path(directory)
        if target.exists() and any(target.iterdir()):
            raise ExportError(f"{directory} is not empty")
        target.mkdir(parents=True, exist_ok=True)
        gitws.run_git(
            repo, "--work-tree", str(target.resolve()), "checkout", "-f", commit, "--", "."
        )
        return f"wrote the files of {short} into {directory}"
    assert bundle is not None
    branch = f"toka/{name}"
    gitws.run_git(repo, "checkout", "-q", "-B", branch, commit)
    gitws.run_git(repo, "bundle", "create", "-q", str(Path(bundle).resolve()), "HEAD", branch)
    return f"wrote {bundle}: {short} with its history, branch {branch} (git clone {bundle})"
