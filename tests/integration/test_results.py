"""Results flow along the DAG and reach the user: real pods, real git, the real API server.

Each agent's workspace is a git work tree made from the session's base and
its dependencies' result commits; what it changes becomes its result commit,
on its status and in its result ConfigMap; the session's result is on the
session, `toka export` gets it out, and with a git remote it is pushed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeAgentProcess, OperatorProcess
from tests.gitserver import PASSWORD, USER, GitServer, git_server
from tests.helpers import phase_is, wait_for
from tests.sessions import agent, call, finish, put_recordings, recording, session
from toka.kube.client import AGENTS, CONFIGMAPS, SECRETS, SESSIONS, AsyncKube

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
FINAL = ("Succeeded", "Failed")
SEED = {"README.md": "# calc\n", "src__calc.py": "def add(a, b):\n    return a - b\n"}
FIXED = "def add(a, b):\n    return a + b\n"
RW = ["llm:complete", "fs:read:**", "fs:write:**"]


async def seed(kube: AsyncKube, ns: str) -> None:
    await kube.create(CONFIGMAPS, {"metadata": {"name": "seed"}, "data": SEED}, ns)


def write(path: str, content: str) -> JSON:
    return call("fs_write", path=path, content=content)


def ws_file(node: NodeAgentProcess, ns: str, agent_obj: JSON, path: str) -> str | None:
    pod = agent_obj["status"]["podName"]
    target = node.pod_dir(ns, pod) / "volumes" / "workspace" / path
    return target.read_text() if target.is_file() else None


def toka(*args: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "toka.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
    )


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout


async def test_a_diamond_carries_each_agents_work_to_its_dependents_and_to_the_user(
    kube: AsyncKube,
    namespace: str,
    operator: OperatorProcess,
    node_agent: NodeAgentProcess,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    await seed(kube, namespace)
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "fix": recording("fix", {"t": [write("src/calc.py", FIXED), finish("fixed add")]}),
            "left": recording(
                "left",
                {"t": [call("fs_read", path="src/calc.py"), write("left.txt", "L\n"), finish("L")]},
            ),
            "right": recording("right", {"t": [write("right.txt", "R\n"), finish("R")]}),
            "join": recording(
                "join",
                {"t": [write("docs/joined.md", "both\n"), finish("joined left and right")]},
            ),
        },
    )
    body = session(
        "flow",
        [
            agent("fix", caps=RW),
            agent("left", caps=RW, depends=["fix"]),
            agent("right", caps=RW, depends=["fix"]),
            agent("join", caps=RW, depends=["left", "right"]),
        ],
        workspace={"configMap": "seed"},
    )
    await kube.create(SESSIONS, body, namespace)
    done = await wait_for(kube, SESSIONS, "flow", namespace, phase_is(*FINAL), timeout=240)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    agents = {
        a: await kube.get(AGENTS, f"flow-{a}", namespace) for a in ("fix", "left", "right", "join")
    }

    # A chain: each agent starts with what the one before it left.
    assert ws_file(node_agent, namespace, agents["left"], "src/calc.py") == FIXED
    # The diamond's join sees both branches and the root.
    assert ws_file(node_agent, namespace, agents["join"], "left.txt") == "L\n"
    assert ws_file(node_agent, namespace, agents["join"], "right.txt") == "R\n"
    assert ws_file(node_agent, namespace, agents["join"], "src/calc.py") == FIXED
    # ... and not what only a sibling made.
    assert ws_file(node_agent, namespace, agents["right"], "left.txt") is None

    # Each Agent's result: commit, parents, diffstat; merged in dependsOn order.
    ws = {a: obj["status"]["run"]["workspace"] for a, obj in agents.items()}
    base = ws["fix"]["base"]
    assert all(w["base"] == base for w in ws.values())
    assert ws["fix"]["result"]["parents"] == [base]
    assert (ws["fix"]["result"]["filesChanged"], ws["fix"]["result"]["insertions"]) == (1, 1)
    assert ws["fix"]["result"]["deletions"] == 1
    assert ws["left"]["merged"] == ["fix"]
    assert ws["left"]["result"]["parents"] == [ws["fix"]["result"]["commit"]]
    assert ws["join"]["merged"] == ["left", "right"]
    assert ws["join"]["result"]["filesChanged"] == 4  # calc.py, left, right, joined.md
    handoff = {h["agent"]: h["commit"] for h in agents["join"]["spec"]["handoff"]}
    assert handoff == {
        "left": ws["left"]["result"]["commit"],
        "right": ws["right"]["result"]["commit"],
    }
    cm = await kube.get(CONFIGMAPS, "flow-fix.result", namespace)
    assert cm["data"]["commit"] == ws["fix"]["result"]["commit"]
    assert cm["metadata"]["ownerReferences"][0]["uid"] == agents["fix"]["metadata"]["uid"]

    # The session's result: the join's, listed with every member's.
    result = done["status"]["result"]
    ready = next(c for c in done["status"]["conditions"] if c["type"] == "ResultReady")
    assert (ready["status"], ready["reason"]) == ("True", "ResultMade")
    assert "flow.session-result" in ready["message"]
    assert result["commit"] == ws["join"]["result"]["commit"]
    assert result["base"] == base
    members = {m["name"]: m["result"]["commit"] for m in done["status"]["members"]}
    assert members == {a: w["result"]["commit"] for a, w in ws.items()}

    # toka export, three ways, each checked by using it.
    source = tmp_path / "source"
    source.mkdir()
    for key, text in SEED.items():
        (source / key.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (source / key.replace("__", "/")).write_text(text)
    git("init", "-q", cwd=source)
    patch = toka(
        "export",
        "flow",
        "-n",
        namespace,
        "--patch",
        str(tmp_path / "r.patch"),
        kubeconfig=kubeconfig,
    )
    assert patch.returncode == 0, patch.stderr
    git("apply", str(tmp_path / "r.patch"), cwd=source)
    assert (source / "src" / "calc.py").read_text() == FIXED
    assert (source / "docs" / "joined.md").read_text() == "both\n"
    out = toka(
        "export", "flow", "-n", namespace, "--dir", str(tmp_path / "d"), kubeconfig=kubeconfig
    )
    assert out.returncode == 0, out.stderr
    assert sorted(
        str(p.relative_to(tmp_path / "d")) for p in (tmp_path / "d").rglob("*") if p.is_file()
    ) == [
        "README.md",
        "docs/joined.md",
        "left.txt",
        "right.txt",
        "src/calc.py",
    ]
    bundled = toka(
        "export",
        "flow",
        "-n",
        namespace,
        "--bundle",
        str(tmp_path / "r.bundle"),
        kubeconfig=kubeconfig,
    )
    assert bundled.returncode == 0, bundled.stderr
    git("clone", "-q", str(tmp_path / "r.bundle"), str(tmp_path / "clone"), cwd=tmp_path)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "clone").strip() == result["commit"]
    log = git("log", "--format=%an: %s", cwd=tmp_path / "clone")
    assert "fix: t: fixed add" in log
    assert "join: t: joined left and right" in log


async def test_two_agents_editing_the_same_lines_fail_their_join_with_merge_conflict(
    kube: AsyncKube, namespace: str, operator: OperatorProcess, node_agent: NodeAgentProcess
) -> None:
    await seed(kube, namespace)
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "a": recording("a", {"t": [write("src/calc.py", "A\n"), finish("a")]}),
            "b": recording("b", {"t": [write("src/calc.py", "B\n"), finish("b")]}),
            "c": recording("c", {"t": [finish("never reached")]}),
        },
    )
    body = session(
        "clash",
        [
            agent("a", caps=RW),
            agent("b", caps=RW),
            agent("c", caps=RW, depends=["a", "b"], backoffLimit=2),
        ],
        workspace={"configMap": "seed"},
    )
    await kube.create(SESSIONS, body, namespace)
    done = await wait_for(kube, SESSIONS, "clash", namespace, phase_is(*FINAL), timeout=240)
    assert done["status"]["phase"] == "Failed"
    c = await kube.get(AGENTS, "clash-c", namespace)
    failed = next(x for x in c["status"]["conditions"] if x["type"] == "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "MergeConflict"
    assert "src/calc.py" in failed["message"]
    assert c["status"]["attempts"] == 1  # a conflict is not retried
    run = c["status"]["run"]
    assert run["usage"]["requests"] == 0  # before any LLM call
    assert run["workspace"]["reason"] == "MergeConflict"
    assert "result" not in done["status"]


async def test_a_resumed_agent_continues_from_its_last_committed_result(
    kube: AsyncKube, namespace: str, operator: OperatorProcess, node_agent: NodeAgentProcess
) -> None:
    await seed(kube, namespace)
    caps = [*RW, "shell:exec:sleep"]
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "w": recording(
                "w",
                {
                    "one": [write("one.txt", "1\n"), finish("wrote one")],
                    "two": [
                        call("shell_exec", argv=["sleep", "8"]),
                        write("two.txt", "2\n"),
                        finish("wrote two"),
                    ],
                },
            )
        },
    )
    await kube.create(
        SESSIONS,
        session(
            "pause", [agent("w", caps=caps, tasks=["one", "two"])], workspace={"configMap": "seed"}
        ),
        namespace,
    )
    await wait_for(
        kube,
        AGENTS,
        "pause-w",
        namespace,
        lambda a: ((a.get("status") or {}).get("run") or {}).get("currentTask") == "two",
        timeout=120,
        what="task two running",
    )
    first = await kube.get(AGENTS, "pause-w", namespace)
    one_commit = first["status"]["run"]["workspace"]["result"]["commit"]
    await kube.patch(SESSIONS, "pause", {"spec": {"suspend": True}}, namespace)
    await wait_for(kube, AGENTS, "pause-w", namespace, phase_is("Suspended"), timeout=120)
    await kube.patch(SESSIONS, "pause", {"spec": {"suspend": False}}, namespace)
    done = await wait_for(kube, SESSIONS, "pause", namespace, phase_is(*FINAL), timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    w = await kube.get(AGENTS, "pause-w", namespace)
    assert w["status"]["attempts"] == 2
    tasks = {t["name"]: t["attempts"] for t in w["status"]["run"]["tasks"]}
    assert tasks == {"one": 1, "two": 2}
    ws = w["status"]["run"]["workspace"]
    assert ws["result"]["parents"] == [one_commit]  # two's commit sits on one's
    assert ws_file(node_agent, namespace, w, "one.txt") == "1\n"
    assert ws_file(node_agent, namespace, w, "two.txt") == "2\n"


@pytest.fixture
def gitserver(tmp_path: Path) -> Iterator[GitServer]:
    with git_server(tmp_path / "git") as srv:
        srv.make_repo(
            "proj", {"README.md": "# proj\n", "src/app.py": "print('hi')\n"}, private=True
        )
        yield srv


async def git_secret(kube: AsyncKube, ns: str) -> None:
    data = {"username": USER, "password": PASSWORD}
    await kube.create(
        SECRETS,
        {
            "metadata": {"name": "git-creds"},
            "type": "kubernetes.io/basic-auth",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        },
        ns,
    )


def git_session(name: str, server: GitServer, *, creds: bool, agents: list[JSON]) -> JSON:
    git: JSON = {"url": server.url("proj.git"), "ref": "main", "push": {"branch": "toka/{session}"}}
    if creds:
        git["credentialsSecretRef"] = {"name": "git-creds"}
    return session(name, agents, workspace={"git": git})


async def test_results_are_pushed_under_the_prefix_and_the_credential_stays_in_the_kernel(
    kube: AsyncKube,
    namespace: str,
    operator: OperatorProcess,
    node_agent: NodeAgentProcess,
    gitserver: GitServer,
) -> None:
    main = gitserver.rev("proj", "main")
    await git_secret(kube, namespace)
    # What the tools container could try: its environment, every process's environment and
    # command line, the git config of the workspace, and a search of the usual places.
    snoop = (
        "env; cat /proc/[0-9]*/environ | tr '\\0' '\\n'; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; "
        "git config --list; cat $GIT_DIR/config; ls -la /etc/toka /run/toka; "
        # A pattern that matches the password without holding it (this command line is read too).
        f"timeout 30 grep -rIl -e '{PASSWORD[:-1]}[{PASSWORD[-1]}]' /run /var /etc /tmp /workspace"
    )
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "a": recording(
                "a",
                {
                    "t": [
                        call(
                            "shell_exec",
                            argv=["sh", "-c", f"({snoop}) > loot.txt 2>&1; sleep 6"],
                        ),
                        write("src/app.py", "print('hello')\n"),
                        finish("said hello"),
                    ]
                },
            ),
            "b": recording("b", {"t": [write("NOTES.md", "checked\n"), finish("noted")]}),
        },
    )
    caps = [*RW, "shell:exec:sh"]
    body = git_session(
        "ship",
        gitserver,
        creds=True,
        agents=[agent("a", caps=caps), agent("b", caps=RW, depends=["a"])],
    )
    await kube.create(SESSIONS, body, namespace)
    running = await wait_for(
        kube,
        AGENTS,
        "ship-a",
        namespace,
        lambda a: ((a.get("status") or {}).get("run") or {}).get("currentTask") == "t",
        timeout=120,
    )
    # From the host, while the pod runs: the agent's and tools' processes hold no credential.
    await asyncio.sleep(2)
    pod = running["status"]["podName"]
    seen = processes_of(pod)
    assert {"agent", "tools", "kernel"} <= set(seen), seen
    for container in ("agent", "tools"):
        for pid in seen[container]:
            for part in ("environ", "cmdline"):
                assert PASSWORD.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), container
            # ... nor any file the container sees where secrets are mounted or left.
            assert files_holding(Path(f"/proc/{pid}/root"), PASSWORD.encode()) == [], container

    done = await wait_for(kube, SESSIONS, "ship", namespace, phase_is(*FINAL), timeout=240)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    a = await kube.get(AGENTS, "ship-a", namespace)
    b = await kube.get(AGENTS, "ship-b", namespace)
    loot = (
        node_agent.pod_dir(namespace, a["status"]["podName"]) / "volumes" / "workspace" / "loot.txt"
    ).read_text(errors="replace")
    assert "PATH=" in loot  # the snooping ran
    assert "remote.origin.url=http" in loot  # and read the repository's config
    assert PASSWORD not in loot
    assert USER not in loot
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in loot

    refs = gitserver.refs("proj")
    assert (
        refs["refs/heads/toka/ship/agents/a"] == a["status"]["run"]["workspace"]["result"]["commit"]
    )
    assert (
        refs["refs/heads/toka/ship/agents/b"] == b["status"]["run"]["workspace"]["result"]["commit"]
    )
    assert refs["refs/heads/toka/ship/result"] == done["status"]["result"]["commit"]
    assert done["status"]["result"]["pushedRef"] == "refs/heads/toka/ship/result"
    assert a["status"]["run"]["workspace"]["pushedRef"] == "refs/heads/toka/ship/agents/a"
    assert refs["refs/heads/main"] == main  # the base branch is untouched
    assert a["status"]["run"]["workspace"]["base"] == main


async def test_a_private_repository_without_credentials_fails_as_git_auth_failed(
    kube: AsyncKube, namespace: str, operator: OperatorProcess, gitserver: GitServer
) -> None:
    await put_recordings(kube, namespace, "rec", {"a": recording("a", {"t": [finish("x")]})})
    await kube.create(
        SESSIONS,
        git_session("nocreds", gitserver, creds=False, agents=[agent("a", caps=RW)]),
        namespace,
    )
    a = await wait_for(kube, AGENTS, "nocreds-a", namespace, phase_is(*FINAL), timeout=120)
    failed = next(x for x in a["status"]["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "GitAuthFailed"
    assert "credentialsSecretRef" in failed["message"]
    assert a["status"]["run"]["usage"]["requests"] == 0


def files_holding(root: Path, secret: bytes) -> list[str]:
    """Files under a container's root (as the container sees it) that hold `secret`."""
    found = []
    for top in ("tmp", "run", "etc", "var/run", "workspace"):
        # os.walk, not rglob: a directory that goes while it is walked (this host's /tmp
        # is shared with other runs) is passed over instead of ending the search.
        paths = (Path(d) / f for d, _dirs, files in os.walk(root / top) for f in files)
        for path in paths:
            try:
                small = path.is_file() and not path.is_symlink() and path.stat().st_size < 2e6
                if small and secret in path.read_bytes():
                    found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found


def processes_of(pod: str) -> dict[str, list[int]]:
    """The host's processes of one pod on the dev node, by container (from their env)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TOKA_POD_NAME={pod}".encode() not in env:
            continue
        role = next((c.decode() for c in cmd if c in (b"agent", b"tools", b"kernel")), None)
        if role:
            found.setdefault(role, []).append(int(entry.name))
    return found


def big_file_recording() -> str:
    """Agent `big` writes 900 KB of random bytes (a bundle no ConfigMap can carry)."""
    make_big = "import os; open('big.bin', 'wb').write(os.urandom(900_000))"
    return recording(
        "big", {"t": [call("shell_exec", argv=["python3", "-c", make_big]), finish("made it")]}
    )


async def test_a_result_too_large_for_a_configmap_fails_the_agent_naming_the_reason(
    kube: AsyncKube, namespace: str, operator: OperatorProcess, node_agent: NodeAgentProcess
) -> None:
    await put_recordings(kube, namespace, "rec", {"big": big_file_recording()})
    caps = [*RW, "shell:exec:python3"]
    await kube.create(SESSIONS, session("huge", [agent("big", caps=caps)]), namespace)
    big = await wait_for(kube, AGENTS, "huge-big", namespace, phase_is(*FINAL), timeout=120)
    failed = next(x for x in big["status"]["conditions"] if x["type"] == "Failed")
    assert failed["reason"] == "ResultTooLarge"
    assert "bytes" in failed["message"]
    assert "configure workspace.git.push" in failed["message"]
    assert big["status"]["attempts"] == 1  # the same work would be as large again
    cm = await kube.get(CONFIGMAPS, "huge-big.result", namespace)
    assert "bundle" not in (cm.get("binaryData") or {})  # nothing half-written


async def test_with_a_remote_a_result_too_large_for_a_configmap_travels_through_it(
    kube: AsyncKube,
    namespace: str,
    operator: OperatorProcess,
    node_agent: NodeAgentProcess,
    gitserver: GitServer,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    await git_secret(kube, namespace)
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "big": big_file_recording(),
            "after": recording("after", {"t": [write("seen.txt", "yes\n"), finish("saw it")]}),
        },
    )
    body = git_session(
        "wide",
        gitserver,
        creds=True,
        agents=[
            agent("big", caps=[*RW, "shell:exec:python3"]),
            agent("after", caps=RW, depends=["big"]),
        ],
    )
    await kube.create(SESSIONS, body, namespace)
    done = await wait_for(kube, SESSIONS, "wide", namespace, phase_is(*FINAL), timeout=240)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    big = await kube.get(AGENTS, "wide-big", namespace)
    after = await kube.get(AGENTS, "wide-after", namespace)
    cm = await kube.get(CONFIGMAPS, "wide-big.result", namespace)
    assert "bundle" not in (cm.get("binaryData") or {})
    assert cm["data"]["ref"] == "refs/heads/toka/wide/work/big/t"
    made = node_agent.pod_dir(namespace, big["status"]["podName"]) / "volumes" / "workspace"
    seen = node_agent.pod_dir(namespace, after["status"]["podName"]) / "volumes" / "workspace"
    assert (seen / "big.bin").read_bytes() == (made / "big.bin").read_bytes()
    assert big["status"]["run"]["workspace"]["bundleBytes"] > 768 * 1024
    refs = gitserver.refs("proj")
    assert refs["refs/heads/toka/wide/result"] == done["status"]["result"]["commit"]
    out = toka(
        "export", "wide", "-n", namespace, "--dir", str(tmp_path / "d"), kubeconfig=kubeconfig
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d" / "big.bin").read_bytes() == (made / "big.bin").read_bytes()
    assert (tmp_path / "d" / "seen.txt").read_text() == "yes\n"
