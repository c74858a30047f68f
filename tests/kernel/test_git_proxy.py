"""The kernel's git proxy against a real `git http-backend`, driven by real git as tools does.

The credential lives in the kernel; tools' git reaches the remote only
through the proxy, with a pod-local token. It may fetch; it may push only
the creation of its own result ref under the prefix.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gitserver import PASSWORD, USER, GitServer, git_server
from tests.kernel.stack import Stack, kernel_stack
from toka.contract import GIT_TOKEN_HEADER
from toka.kernel.reporter import Reporter
from toka.kernel.results import Remote, Results, read_credentials
from toka.tools import gitws
from toka.tools.ops import prepare_workspace

TOKEN = "pod-local-token-for-tests"
PREFIX = "refs/heads/toka/s/"
OWN = f"{PREFIX}agents/me"


@pytest.fixture
def server(tmp_path: Path) -> AsyncIterator[GitServer]:
    with git_server(tmp_path / "git") as srv:
        srv.make_repo("proj", {"README.md": "hello\n"}, private=True)
        yield srv


def credentials(tmp: Path, password: str = PASSWORD) -> Path:
    folder = tmp / "creds"
    folder.mkdir(exist_ok=True)
    (folder / "username").write_text(USER)
    (folder / "password").write_text(password)
    return folder


def results_with(server: GitServer, creds: Path | None):
    def make(reporter: Reporter) -> Results:
        auth, secrets = read_credentials(str(creds) if creds else None)
        remote = Remote(
            url=server.url("proj.git"),
            base_ref="main",
            own_ref=OWN,
            authorization=auth,
            secrets=secrets,
        )
        return Results(
            kube=None,
            namespace="ns",
            agent="me",
            author="me",
            configmap=None,
            reporter=reporter,
            remote=remote,
            git_token=TOKEN,
        )

    return make


def tools_env(stack: Stack, server: GitServer, tmp: Path) -> dict[str, str]:
    token = tmp / "git-token"
    token.write_text(TOKEN)
    return {
        "TOKA_KERNEL_ADDR": str(stack.http.base_url).removeprefix("http://").rstrip("/"),
        "TOKA_WORKSPACE_GIT_URL": server.url("proj.git"),
        "TOKA_WORKSPACE_GIT_REF": "main",
        "TOKA_GIT_TOKEN_FILE": str(token),
        "TOKA_AGENT_NAME": "me",
    }


def proxy(stack: Stack) -> str:
    return f"{str(stack.http.base_url).rstrip('/')}/git/repo"


def commit_file(ws: Path, name: str) -> str:
    (ws / name).write_text(name)
    commit = gitws.commit_all(ws, f"add {name}", "me")
    assert commit is not None
    return commit


async def test_tools_clones_a_private_repository_only_through_the_kernel(
    server: GitServer, tmp_path: Path
) -> None:
    async with kernel_stack(tmp_path, [], results=results_with(server, credentials(tmp_path))) as k:
        env = tools_env(k, server, tmp_path)
        state = await asyncio.to_thread(prepare_workspace, tmp_path / "ws", env)
    assert state["state"] == "Ready", state
    assert state["base"] == server.rev("proj", "main")
    assert (tmp_path / "ws" / "README.md").read_text() == "hello\n"
    config = (tmp_path / "ws" / ".git" / "config").read_text()
    assert PASSWORD not in config
    assert USER not in config
    assert server.url("proj.git") in config  # origin: the real URL, nothing else
    assert TOKEN not in config
    # The server saw the credential, from the kernel; the token never left the pod.
    assert any(authed for _, _, authed in server.requests)


async def test_a_private_repository_without_credentials_fails_as_git_auth_failed(
    server: GitServer, tmp_path: Path
) -> None:
    async with kernel_stack(tmp_path, [], results=results_with(server, None)) as k:
        state = await asyncio.to_thread(
            prepare_workspace, tmp_path / "ws", tools_env(k, server, tmp_path)
        )
    assert state["state"] == "Failed"
    assert state["reason"] == "GitAuthFailed"
    assert "credentialsSecretRef" in state["message"]


async def test_wrong_credentials_fail_as_git_auth_failed_and_are_never_shown(
    server: GitServer, tmp_path: Path
) -> None:
    creds = credentials(tmp_path, password="wrong-password-123")
    async with kernel_stack(tmp_path, [], results=results_with(server, creds)) as k:
        state = await asyncio.to_thread(
            prepare_workspace, tmp_path / "ws", tools_env(k, server, tmp_path)
        )
    assert state["reason"] == "GitAuthFailed"
    assert "wrong-password-123" not in str(state)


async def test_a_request_without_the_pods_token_is_refused(
    server: GitServer, tmp_path: Path
) -> None:
    async with kernel_stack(tmp_path, [], results=results_with(server, credentials(tmp_path))) as k:
        resp = await k.http.get("/git/repo/info/refs", params={"service": "git-upload-pack"})
        assert resp.status_code == 403
        env = {**gitws.git_env(), "GIT_TERMINAL_PROMPT": "0"}
        clone = await asyncio.to_thread(
            subprocess.run,
            ["git", "clone", "-q", proxy(k), str(tmp_path / "agent-clone")],
            capture_output=True,
            env=env,
            check=False,
        )
    assert clone.returncode != 0
    assert not any("info/refs" in path for _, path, _ in server.requests)


@pytest.mark.parametrize(
    ("refspec", "why"),
    [
        ("HEAD:refs/heads/main", "base branch"),
        ("HEAD:refs/heads/elsewhere", "not this agent's result ref"),
        (f"HEAD:{PREFIX}agents/another-agent", "not this agent's result ref"),
        (f":{OWN}", "deleting"),
    ],
)
async def test_pushes_outside_the_agents_own_ref_are_refused_by_the_kernel(
    server: GitServer, tmp_path: Path, refspec: str, why: str
) -> None:
    async with kernel_stack(tmp_path, [], results=results_with(server, credentials(tmp_path))) as k:
        env = tools_env(k, server, tmp_path)
        await asyncio.to_thread(prepare_workspace, tmp_path / "ws", env)
        commit_file(tmp_path / "ws", "work.txt")
        if refspec.startswith(":"):
            await asyncio.to_thread(
                gitws.push, tmp_path / "ws", proxy(k), OWN, [f"{GIT_TOKEN_HEADER}: {TOKEN}"]
            )
        before = server.refs("proj")
        proc = await asyncio.to_thread(
            gitws.run_git,
            tmp_path / "ws",
            "push",
            proxy(k),
            refspec,
            env=gitws.git_env(headers=[f"{GIT_TOKEN_HEADER}: {TOKEN}"]),
            check=False,
        )
    assert proc.returncode != 0
    assert why in proc.stderr.decode()
    assert server.refs("proj") == before


async def test_the_own_ref_is_created_once_and_never_moved_even_by_force(
    server: GitServer, tmp_path: Path
) -> None:
    main = server.rev("proj", "main")
    async with kernel_stack(tmp_path, [], results=results_with(server, credentials(tmp_path))) as k:
        env = tools_env(k, server, tmp_path)
        await asyncio.to_thread(prepare_workspace, tmp_path / "ws", env)
        first = commit_file(tmp_path / "ws", "one.txt")
        headers = [f"{GIT_TOKEN_HEADER}: {TOKEN}"]
        await asyncio.to_thread(gitws.push, tmp_path / "ws", proxy(k), OWN, headers)
        assert server.rev("proj", OWN) == first
        assert server.rev("proj", "main") == main
        gitws.run_git(tmp_path / "ws", "reset", "-q", "--hard", "HEAD~1")
        commit_file(tmp_path / "ws", "other.txt")
        forced = await asyncio.to_thread(
            gitws.run_git,
            tmp_path / "ws",
            "push",
            "--force",
            proxy(k),
            f"HEAD:{OWN}",
            env=gitws.git_env(headers=headers),
            check=False,
        )
    assert forced.returncode != 0
    assert "never moved" in forced.stderr.decode()
    assert server.rev("proj", OWN) == first
    assert server.rev("proj", "main") == main


def test_the_credential_reaches_no_environment_of_git(tmp_path: Path) -> None:
    """The header travels as GIT_CONFIG_* of the one git process, never in argv."""
    env = gitws.git_env(headers=["Authorization: Basic c2VjcmV0"])
    argv_like = " ".join(f"{k}={v}" for k, v in os.environ.items())
    assert "c2VjcmV0" not in argv_like
    assert any(v == "Authorization: Basic c2VjcmV0" for v in env.values())
