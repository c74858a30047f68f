"""Results outside the pods: the session's result commit, and reading results back.

When a session succeeds, the operator merges the results of the agents
nothing depends on into one commit — in a temporary repository made from the
session's base (the same deterministic commit the pods made, or a clone) and
the agents' bundles from their result ConfigMaps — and keeps it as a bundle
in the session's own result ConfigMap, owned by the session. With
`workspace.git.push` it pushes it to `<branch>/result`, creating the ref
only. `toka export` reads the same objects back into a repository.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from toka.api.models import GitSource, SessionResult, WorkspaceSpec
from toka.contract import MAX_BUNDLE, RESULT_BUNDLE_KEY, RESULT_COMMIT_KEY, RESULT_REF_KEY
from toka.controller.builders.meta import owner_reference
from toka.controller.builders.names import (
    LABEL_MANAGED_BY,
    LABEL_SESSION,
    MANAGED_BY,
    result_configmap_name,
    session_result_configmap_name,
)
from toka.controller.io import ensure_created
from toka.controller.reconcile.session import ResultInput
from toka.kube.client import CONFIGMAPS, SECRETS, AsyncKube
from toka.tools import gitws

JSON = dict[str, Any]
SESSION_AUTHOR = "toka"


class ResultError(Exception):
    """The session's result could not be made; the message says why."""


async def git_authorization(kube: AsyncKube, ns: str, git: GitSource) -> list[str]:
    """HTTP headers for the session's remote, from its credentials Secret (never logged)."""
    if git.credentials_secret_ref is None:
        return []
    secret = await kube.get(SECRETS, git.credentials_secret_ref.name, ns)
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    authorization, _ = gitws.basic_authorization(data)
    return [f"Authorization: {authorization}"] if authorization else []


async def make_base(
    kube: AsyncKube, ns: str, workspace: WorkspaceSpec | None, repo: Path, base: str
) -> gitws.Remote | None:
    """`repo` holding the session's base commit `base`; how to reach its remote, if any."""
    if workspace is not None and workspace.git is not None:
        git = workspace.git
        headers = await git_authorization(kube, ns, git)
        await asyncio.to_thread(
            gitws.clone_base, repo, git.url, git.url, git.ref, base=base, headers=headers
        )
        return gitws.Remote(git.url, tuple(headers))
    files: list[tuple[str, bytes]] = []
    if workspace is not None and workspace.config_map:
        cm = await kube.get(CONFIGMAPS, workspace.config_map, ns)
        files = [(k, v.encode()) for k, v in (cm.get("data") or {}).items()]
        files += [(k, base64.b64decode(v)) for k, v in (cm.get("binaryData") or {}).items()]
    made = await asyncio.to_thread(gitws.init_base, repo, sorted(files))
    if made != base:
        raise ResultError(
            f"the base made from the workspace source is {made[:12]}, not the agents' "
            f"{base[:12]}: was workspace.configMap changed during the session?"
        )
    return None


async def fetch_result(
    kube: AsyncKube,
    ns: str,
    repo: Path,
    configmap: str,
    commit: str,
    remote: gitws.Remote | None = None,
) -> None:
    """Bring `commit` into `repo` from the bundle in `configmap`, or from the remote ref it
    names (a result too large for a ConfigMap)."""
    cm = await kube.get(CONFIGMAPS, configmap, ns)
    raw = (cm.get("binaryData") or {}).get(RESULT_BUNDLE_KEY)
    ref = (cm.get("data") or {}).get(RESULT_REF_KEY)
    if not raw and ref:
        source = gitws.Input(agent=configmap, commit=commit, ref=ref)
        await asyncio.to_thread(gitws.fetch_commit, repo, source, None, remote)
        return
    if not raw:
        return  # the result is the base itself
    with tempfile.NamedTemporaryFile(suffix=".bundle") as fh:
        fh.write(base64.b64decode(raw))
        fh.flush()
        source = gitws.Input(agent=configmap, commit=commit, bundle=fh.name)
        await asyncio.to_thread(gitws.fetch_commit, repo, source)


async def ensure_session_result(
    kube: AsyncKube,
    session: JSON,
    workspace: WorkspaceSpec | None,
    inputs: Sequence[ResultInput],
    completed: datetime,
) -> SessionResult:
    meta = session["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if not inputs:
        raise ResultError("no agent result to merge")
    base = inputs[0].base
    if any(i.base != base for i in inputs):
        raise ResultError("the agents did not start from the same base commit")
    with tempfile.TemporaryDirectory(prefix="toka-result-") as tmp:
        repo = Path(tmp, "repo")
        try:
            remote = await make_base(kube, ns, workspace, repo, base)
            for i in inputs:
                await fetch_result(
                    kube, ns, repo, result_configmap_name(i.object_name), i.commit, remote
                )
            await asyncio.to_thread(
                gitws.merge_inputs,
                repo,
                [gitws.Input(agent=i.agent, commit=i.commit, bundle=None) for i in inputs],
                SESSION_AUTHOR,
                fetched=True,
                # The same commit if made again (an operator restarted before writing
                # the status finds the ConfigMap and the pushed ref it made before).
                date=f"@{int(completed.timestamp())} +0000",
            )
            stat = await asyncio.to_thread(gitws.describe, repo, base)
            bundle = await asyncio.to_thread(gitws.bundle, repo, base)
        except gitws.GitError as err:
            raise ResultError(f"{err.reason}: {err}") from None
        git = workspace.git if workspace is not None else None
        pushed = None
        if git is not None and git.push is not None:
            branch = git.push.branch.replace("{session}", name).strip("/")
            pushed = f"refs/heads/{branch}/result"
            try:
                await asyncio.to_thread(
                    gitws.push, repo, git.url, pushed, remote.headers if remote else ()
                )
            except gitws.GitError as err:
                raise ResultError(f"PushFailed: {err}") from None
        large = len(bundle) > MAX_BUNDLE
        if large and pushed is None:
            raise ResultError(
                f"ResultTooLarge: the session's result bundle is {len(bundle):,} bytes, over "
                f"the {MAX_BUNDLE:,} a ConfigMap holds; configure workspace.git.push"
            )
        configmap = session_result_configmap_name(name)
        data = {RESULT_COMMIT_KEY: stat["commit"], "base": base} | (
            {RESULT_REF_KEY: pushed} if large else {}
        )
        body: JSON = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap,
                "namespace": ns,
                "labels": {LABEL_SESSION: name, LABEL_MANAGED_BY: MANAGED_BY},
                "ownerReferences": [owner_reference(session)],
            },
            "data": data,
            "binaryData": (
                {RESULT_BUNDLE_KEY: base64.b64encode(bundle).decode()}
                if bundle and not large
                else {}
            ),
        }
        await ensure_created(kube, CONFIGMAPS, body)
    return SessionResult(
        commit=stat["commit"],
        base=base,
        config_map=configmap,
        pushed_ref=pushed,
        files_changed=stat["filesChanged"],
        insertions=stat["insertions"],
        deletions=stat["deletions"],
    )
