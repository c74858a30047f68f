"""The agent's results: committed per task, left in the result ConfigMap, pushed on success.

The tools sidecar holds the work tree and runs git; the kernel decides.
After each completed task it asks tools to commit (author: the agent,
message: the task and its summary), writes the bundle (base..result) and
its commit into the Agent's result ConfigMap — the only ConfigMap its Role
may patch — and reports the result in `status.run.workspace`. A dependent's
pod mounts that ConfigMap read-only and merges the commit.

The git credential never leaves this container. Tools reaches the session's
remote only through the proxy here (`/git/repo/...`), which needs a token
that only tools can read (in the socket volume the agent does not mount),
adds the credential, allows fetching, and allows pushing only the creation
of this agent's own result ref under the configured prefix: no other ref,
never the base branch, no update of an existing ref (so no force-push), no
deletion.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from toka.api.models import ResultCommit, TaskState, WorkspaceState, WorkspaceStatus
from toka.contract import (
    GIT_CREDENTIALS_DIR_ENV,
    GIT_PUSH_BRANCH_ENV,
    GIT_TOKEN_HEADER,
    KERNEL_GIT_PATH,
    MAX_BUNDLE,
    RESULT_BUNDLE_KEY,
    RESULT_COMMIT_KEY,
    RESULT_REF_KEY,
    SESSION_ENV,
    WORKSPACE_GIT_REF_ENV,
    WORKSPACE_GIT_URL_ENV,
)
from toka.kernel.reporter import Reporter
from toka.kube.client import CONFIGMAPS, ApiError, AsyncKube
from toka.tools.gitws import basic_authorization

log = logging.getLogger("toka.kernel.results")
JSON = dict[str, Any]
STORE_SECONDS = 300.0  # how long a result write rides out an unreachable API server
ZERO = "0" * 40


@dataclass(frozen=True)
class Remote:
    """The session's git remote as the kernel sees it: where, with what, and what may be pushed."""

    url: str
    base_ref: str | None
    own_ref: str | None  # refs/heads/toka/my-session/agents/<agent>
    authorization: str | None  # the header value; never logged
    # Where a result too large for a ConfigMap goes after each task: <prefix>work/<agent>/
    work_prefix: str | None = None
    secrets: tuple[str, ...] = ()  # everything of the credential, for the redactor

    @classmethod
    def from_env(cls, env: dict[str, str], agent: str) -> Remote | None:
        url = env.get(WORKSPACE_GIT_URL_ENV)
        if not url:
            return None
        branch = env.get(GIT_PUSH_BRANCH_ENV)
        own = work = None
        if branch:
            session = env.get(SESSION_ENV) or agent
            prefix = f"refs/heads/{branch.replace('{session}', session).strip('/')}/"
            own = f"{prefix}agents/{agent}"
            work = f"{prefix}work/{agent}/"
        authorization, secret_values = read_credentials(env.get(GIT_CREDENTIALS_DIR_ENV))
        return cls(
            url=url.rstrip("/"),
            base_ref=env.get(WORKSPACE_GIT_REF_ENV),
            own_ref=own,
            authorization=authorization,
            secrets=secret_values,
            work_prefix=work,
        )


def read_credentials(directory: str | None) -> tuple[str | None, tuple[str, ...]]:
    """`Basic` authorization from a Secret's `username` and `password` (or `token`) keys,
    and the values a redactor must hide."""
    if not directory:
        return None, ()
    keys = {
        name: (Path(directory) / name).read_text()
        for name in ("username", "password", "token")
        if (Path(directory) / name).is_file()
    }
    return basic_authorization(keys)


def pkt_lines(data: bytes) -> list[bytes]:
    """The pkt-lines before the first flush packet (a receive-pack request's commands)."""
    lines, pos = [], 0
    while pos + 4 <= len(data):
        try:
            size = int(data[pos : pos + 4], 16)
        except ValueError:
            break
        if size == 0:
            break
        if size < 4:
            break
        lines.append(data[pos + 4 : pos + size])
        pos += size
    return lines


def push_refusal(body: bytes, remote: Remote) -> str | None:
    """Why this receive-pack request may not go through, or None."""
    if remote.own_ref is None:
        return "this session has no workspace.git.push: nothing may be pushed"
    commands = pkt_lines(body)
    if not commands:
        return "no ref update in the push"
    for raw in commands:
        line = raw.split(b"\0", 1)[0].decode(errors="replace").strip()
        parts = line.split(" ")
        if len(parts) != 3:
            return f"unreadable push command {line[:100]!r}"
        old, new, ref = parts
        if remote.base_ref and ref in (remote.base_ref, f"refs/heads/{remote.base_ref}"):
            return f"{ref} is the base branch: it is never written"
        mine = ref == remote.own_ref or bool(
            remote.work_prefix
            and ref.startswith(remote.work_prefix)
            and "/" not in ref.removeprefix(remote.work_prefix)
        )
        if not mine:
            return f"{ref} is not this agent's result ref ({remote.own_ref})"
        if new == ZERO:
            return f"deleting {ref} is not allowed"
        if old != ZERO:
            return f"{ref} exists: result refs are only created, never moved (no force-push)"
    return None


class Results:
    def __init__(
        self,
        *,
        kube: AsyncKube | None,
        namespace: str,
        agent: str,
        author: str,
        configmap: str | None,
        reporter: Reporter,
        remote: Remote | None = None,
        git_token: str | None = None,
    ):
        self.kube = kube
        self.namespace = namespace
        self.agent = agent
        self.author = author
        self.configmap = configmap
        self.reporter = reporter
        self.tools: httpx.AsyncClient | None = None  # the kernel's client, once attached
        self.remote = remote
        self.git_token = git_token or secrets.token_urlsafe(24)
        self.upstream_auth_refused = False
        self._asked = False  # a new attempt asks its own tools, whatever an earlier one said
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))

    def attach(self, tools: httpx.AsyncClient) -> None:
        """Use the kernel's client to the tools sidecar (one connection pool)."""
        self.tools = tools

    def _client(self) -> httpx.AsyncClient:
        if self.tools is None:
            raise RuntimeError("the kernel has not attached its client to the tools sidecar")
        return self.tools

    async def aclose(self) -> None:
        await self._http.aclose()

    def write_token(self, path: str) -> None:
        """The proxy's token, where only tools can read it (the socket volume)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as fh:
            fh.write(self.git_token)
        os.chmod(tmp, 0o644)  # the volume is mounted by kernel and tools only
        os.replace(tmp, path)

    @property
    def status(self) -> WorkspaceStatus | None:
        return self.reporter.run.workspace

    @property
    def failed(self) -> WorkspaceStatus | None:
        ws = self.status
        return ws if ws is not None and ws.state == WorkspaceState.FAILED else None

    async def refresh(self) -> WorkspaceStatus | None:
        """What tools made of the workspace (asked once, then kept)."""
        if self._asked or self.configmap is None:
            return self.status
        try:
            resp = await self._client().post("/workspace.status", json={})
            state: JSON = resp.json()
        except (httpx.HTTPError, ValueError):
            return None  # tools is not up yet; asked again on the next request
        if state.get("state") == "Ready" and not state.get("git"):
            self.configmap = None  # a shared volume: no results to carry
            return None
        if state.get("state") == "Ready":
            ws = WorkspaceStatus(
                state=WorkspaceState.READY,
                base=state["base"],
                start=state["start"],
                merged=state.get("merged") or None,
                result=ResultCommit.model_validate(state["result"]),
            )
        else:
            reason = str(state.get("reason") or "WorkspaceFailed")
            if self.upstream_auth_refused and reason == "GitCloneFailed":
                reason = "GitAuthFailed"
            ws = WorkspaceStatus(
                state=WorkspaceState.FAILED,
                reason=reason,
                message=str(state.get("message") or "")[:1000],
            )
        self._asked = True
        self.reporter.workspace(ws)
        return ws

    def _fail(self, reason: str, message: str) -> None:
        ws = self.status or WorkspaceStatus(state=WorkspaceState.FAILED)
        self.reporter.workspace(
            ws.model_copy(
                update={"state": WorkspaceState.FAILED, "reason": reason, "message": message[:1000]}
            )
        )

    async def task_completed(self, task: str, summary: str) -> str | None:
        """Commit the task's work and leave it where dependents find it; an error or None."""
        ws = await self.refresh()
        if self.configmap is None or ws is None:
            return None
        if self.failed:
            return f"the workspace failed: {ws.message}"
        try:
            resp = await self._client().post(
                "/git.commit",
                json={"message": f"{task}: {summary}".strip(), "author": self.author},
            )
            answer: JSON = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            return f"the tools sidecar did not commit the work: {type(err).__name__}"
        if resp.status_code != 200:
            return f"the work could not be committed: {answer.get('error')}"
        bundle = base64.b64decode(answer["bundle"])
        result = ResultCommit.model_validate(answer["result"])
        ref = None
        if len(bundle) > MAX_BUNDLE:
            remote = self.remote
            if remote is None or remote.work_prefix is None:
                message = (
                    f"the result bundle is {len(bundle):,} bytes, over the {MAX_BUNDLE:,} a "
                    "ConfigMap can carry between agents: configure workspace.git.push so that "
                    "results travel through your repository, or keep large files out of the "
                    "workspace"
                )
                self._fail("ResultTooLarge", message)
                return message
            # Too large for a ConfigMap: through the remote, under a ref made for this task.
            ref = f"{remote.work_prefix}{task}"
            error = await self._push(ref)
            if error:
                self._fail("PushFailed", error)
                return error
        error = await self._store(
            result.commit, answer["bundle"] if bundle and not ref else None, ref
        )
        if error:
            return error
        self.reporter.workspace(
            (ws or WorkspaceStatus(state=WorkspaceState.READY)).model_copy(
                update={"result": result, "bundle_bytes": len(bundle)}
            )
        )
        return None

    async def _store(
        self, commit: str, bundle_b64: str | None, ref: str | None = None
    ) -> str | None:
        """The result for dependents: its bundle, or the remote ref that holds it."""
        assert self.kube is not None
        assert self.configmap is not None
        body = {
            "data": {RESULT_COMMIT_KEY: commit, RESULT_REF_KEY: ref},
            "binaryData": {RESULT_BUNDLE_KEY: bundle_b64},
        }
        # Dependents start only from what is stored: ride out an API outage, as the
        # status reporter does, while the agent waits for its TaskCompleted answer.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STORE_SECONDS
        delay = 0.5
        while True:
            try:
                await self.kube.patch(CONFIGMAPS, self.configmap, body, self.namespace)
                return None
            except ApiError as err:
                if err.status in (413, 422) or "too long" in str(err).lower():
                    message = f"the result does not fit in ConfigMap {self.configmap}: {err}"
                    self._fail("ResultTooLarge", message)
                    return message
                if not err.transient and err.status not in (403, 404):
                    return f"cannot write ConfigMap {self.configmap}: {err}"
                log.info("writing the result ConfigMap: %s; retrying", err)
            except (httpx.TransportError, OSError) as err:
                log.info("writing the result ConfigMap: %s; retrying", type(err).__name__)
            if loop.time() + delay > deadline:
                return f"cannot write ConfigMap {self.configmap}: the API server did not answer"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def all_done(self) -> bool:
        tasks = self.reporter.run.tasks or []
        return bool(tasks) and all(t.state == TaskState.SUCCEEDED for t in tasks)

    async def push_if_done(self) -> None:
        """On the last task's success: push the result ref (when a push is configured)."""
        ws = self.status
        remote = self.remote
        if ws is None or self.failed or remote is None or remote.own_ref is None:
            return
        if ws.pushed_ref or not self.all_done():
            return
        error = await self._push(remote.own_ref)
        if error:
            self._fail("PushFailed", error)
            return
        self.reporter.workspace(ws.model_copy(update={"pushed_ref": remote.own_ref}))

    async def _push(self, ref: str) -> str | None:
        """Have tools push HEAD to `ref` through the proxy; an error or None."""
        try:
            resp = await self._client().post("/git.push", json={"ref": ref})
            answer: JSON = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            return f"the tools sidecar did not push: {type(err).__name__}"
        if resp.status_code != 200:
            return str(answer.get("error"))[:1000]
        return None

    # --- the git proxy ----------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get(f"{KERNEL_GIT_PATH}/info/refs", self.proxy)
        app.router.add_post(f"{KERNEL_GIT_PATH}/git-upload-pack", self.proxy)
        app.router.add_post(f"{KERNEL_GIT_PATH}/git-receive-pack", self.proxy)

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        remote = self.remote
        if remote is None:
            return web.Response(status=404, text="this session has no git remote\n")
        if not secrets.compare_digest(request.headers.get(GIT_TOKEN_HEADER, ""), self.git_token):
            return web.Response(status=403, text="only the tools sidecar may use this proxy\n")
        tail = request.path.removeprefix(KERNEL_GIT_PATH)
        service = request.query.get("service", "")
        pushing = tail.endswith("git-receive-pack") or service == "git-receive-pack"
        if pushing and remote.own_ref is None:
            return web.Response(status=403, text="pushing is not configured for this session\n")
        if tail == "/info/refs" and service not in ("git-upload-pack", "git-receive-pack"):
            return web.Response(status=403, text="only the smart HTTP protocol is served\n")
        body = await request.read() if request.method == "POST" else None
        if tail.endswith("git-receive-pack") and body is not None:
            plain = gzip.decompress(body) if request.headers.get("Content-Encoding") else body
            refusal = push_refusal(plain, remote)
            if refusal is not None:
                log.warning("push refused: %s", refusal)
                return _refuse_push(plain, refusal)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("content-type", "content-encoding", "accept", "git-protocol")
        }
        if remote.authorization:
            headers["Authorization"] = remote.authorization
        upstream = await self._http.request(
            request.method,
            remote.url + tail,
            params=dict(request.query),
            content=body,
            headers=headers,
        )
        if upstream.status_code in (401, 403):
            self.upstream_auth_refused = True
        out = {
            k: v
            for k, v in upstream.headers.items()
            if k.lower() in ("content-type", "cache-control", "expires", "pragma")
        }
        return web.Response(status=upstream.status_code, body=upstream.content, headers=out)


def _pkt(data: bytes) -> bytes:
    return f"{len(data) + 4:04x}".encode() + data


def _refuse_push(body: bytes, reason: str) -> web.Response:
    """A receive-pack answer that rejects every ref with `reason`, so that git shows
    `! [remote rejected] <ref> (toka: <reason>)` instead of a bare HTTP error."""
    commands = pkt_lines(body)
    first = commands[0].split(b"\0", 1) if commands else [b""]
    caps = first[1].decode(errors="replace").split() if len(first) > 1 else []
    refs = [c.split(b"\0", 1)[0].split(b" ")[-1].strip() for c in commands]
    report = _pkt(b"unpack ok\n") + b"".join(
        _pkt(b"ng " + ref + f" toka: {reason}\n".encode()) for ref in refs
    )
    report += b"0000"
    if "side-band-64k" in caps or "side-band" in caps:
        report = _pkt(b"\x01" + report) + b"0000"
    if not refs or not {"report-status", "report-status-v2"} & set(caps):
        return web.Response(status=403, text=f"toka kernel: push refused: {reason}\n")
    return web.Response(
        status=200, body=report, headers={"Content-Type": "application/x-git-receive-pack-result"}
    )
