"""MCP tools in a session on the dev cluster: the real operator, kernel, tools and agent.

Two servers of the official SDK run in this test process on loopback, which the dev
node's pods share: `docs` for the whole session, `vault` the agent's own, behind a
bearer token held in a Secret. The agent (a replay recording) calls a granted tool of
each. The executor offers the LLM only granted tools, so the ungranted call comes the
way an untrusted agent container would make it: straight to its kernel, while the
agent is in the middle of its task; the kernel must refuse it, count it and carry on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import NodeAgentProcess, OperatorProcess
from tests.helpers import phase_is, wait_for
from tests.mcp_servers import McpTestServer
from tests.sessions import Recorder, agent, call, finish, put_recordings, recording, session
from toka.contract import MCP_DIR
from toka.devcluster.nodeagent import pod_loopback
from toka.kube.client import AGENTS, PODS, SECRETS, SESSIONS, AsyncKube

pytestmark = pytest.mark.controlplane
TOKEN = "vault-bearer-7c1e9b04a2d5f8"
FINAL = ("Succeeded", "Failed")


class Gate:
    """Holds a tool call open until the test lets it finish (threads: the server has its own)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    async def wait_entered(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.entered.is_set():
            assert loop.time() < deadline, "the agent never called the granted MCP tool"
            await asyncio.sleep(0.1)


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def docs(gate: Gate) -> Iterator[McpTestServer]:
    server = McpTestServer("docs")

    @server.tool
    async def search(query: str) -> str:
        """Search the documentation."""
        gate.entered.set()
        while not gate.release.is_set():  # noqa: ASYNC110 - set from the test's thread
            await asyncio.sleep(0.05)
        return f"3 pages about {query}"

    @server.tool
    def delete_all() -> str:
        """Delete every page."""
        return "deleted"

    yield server.start()
    gate.release.set()
    server.stop()


@pytest.fixture
def vault() -> Iterator[McpTestServer]:
    server = McpTestServer("vault", token=TOKEN)

    @server.tool
    def lookup(key: str) -> str:
        """Look a value up."""
        return f"value of {key}"

    @server.tool
    def wipe() -> str:
        """Erase the vault."""
        return "wiped"

    yield server.start()
    server.stop()


async def kernel_address(kube: AsyncKube, ns: str, pod_name: str) -> str:
    """Where the pod's kernel listens: the pod's own loopback IP on the dev node."""
    pod = await kube.get(PODS, pod_name, ns)
    containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
    kernel = next(c for c in containers if c["name"] == "kernel")
    addr = next(e["value"] for e in kernel["env"] if e["name"] == "TOKA_KERNEL_ADDR")
    return f"{pod_loopback(pod['status']['podIP'])}:{addr.rpartition(':')[2]}"


def containers(pod_ip: str) -> dict[str, int]:
    """The pod's running containers on the dev node, by name: each is a process whose
    TOKA_KERNEL_ADDR names the pod's loopback IP and whose last argument is the
    container's role."""
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            argv = (proc / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        except (OSError, ValueError):
            continue
        if f"TOKA_KERNEL_ADDR={pod_loopback(pod_ip)}:".encode() in b"\n".join(env):
            found[argv[-1].decode()] = int(proc.name)
    return found


def mount_points(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return {line.split()[4] for line in lines}


def holds(pid: int, secret: str, roots: list[str]) -> list[str]:
    """Where in the process's environment or under `roots` (as it sees them) `secret` is."""
    found = ["environ"] if secret.encode() in Path(f"/proc/{pid}/environ").read_bytes() else []
    for root in roots:
        base = Path(f"/proc/{pid}/root{root}")
        for path in [base, *base.rglob("*")] if base.is_dir() else [base]:
            if path.is_file() and secret in path.read_text(errors="replace"):
                found.append(str(path))
    return found


async def test_a_session_agent_calls_its_granted_mcp_tools_and_nothing_else(
    kube: AsyncKube,
    namespace: str,
    operator: OperatorProcess,
    node_agent: NodeAgentProcess,
    gate: Gate,
    docs: McpTestServer,
    vault: McpTestServer,
) -> None:
    await kube.create(
        SECRETS,
        {
            "metadata": {"name": "vault-headers"},
            "data": {"Authorization": base64.b64encode(f"Bearer {TOKEN}".encode()).decode()},
        },
        namespace,
    )
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "reader": recording(
                "reader",
                {
                    "t": [
                        call("mcp__docs__search", query="toka"),
                        call("mcp__vault__lookup", key="db"),
                        finish("found the docs and the value"),
                    ]
                },
            )
        },
    )
    body = session(
        "mcp",
        [
            agent(
                "reader",
                caps=["llm:complete", "mcp:docs:search", "mcp:vault:look*"],
                mcpServers=[
                    {
                        "name": "vault",
                        "url": vault.url,
                        "headersSecretRef": {"name": "vault-headers"},
                    }
                ],
            )
        ],
        mcpServers=[{"name": "docs", "url": docs.url}],
    )
    async with Recorder(kube, namespace) as seen:
        await kube.create(SESSIONS, body, namespace)
        # The agent is inside its granted call: its kernel is up, with the tools listed.
        await gate.wait_entered(timeout=120)
        running = await kube.get(AGENTS, "mcp-reader", namespace)
        pod_name = running["status"]["podName"]
        addr = await kernel_address(kube, namespace, pod_name)
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=30) as rogue:
            offered = {t["name"] for t in (await rogue.get("/v1/agent")).json()["tools"]}
            refused = [
                await rogue.post(f"/v1/tools/{name}", json={})
                for name in ("mcp__docs__delete_all", "mcp__vault__wipe")
            ]
            # Meanwhile, the containers as they run.
            pod = await kube.get(PODS, pod_name, namespace)
            running_as = containers(pod["status"]["podIP"])
            agent_mounts = [m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]]
            kernel_sees = mount_points(running_as["kernel"])
            agent_sees = mount_points(running_as["agent"])
            agent_holds = holds(running_as["agent"], TOKEN, [*agent_mounts, "/tmp", MCP_DIR])
            kernel_holds = holds(running_as["kernel"], TOKEN, [MCP_DIR])
        gate.release.set()
        done = await wait_for(
            kube, SESSIONS, "mcp", namespace, phase_is(*FINAL), timeout=120, what="a final phase"
        )
    reader = await kube.get(AGENTS, "mcp-reader", namespace)
    assert done["status"]["phase"] == "Succeeded", (done["status"], reader.get("status"))

    # Offered: the granted tools only. Called: those. Refused: the others, by the kernel.
    assert {"mcp__docs__search", "mcp__vault__lookup"} <= offered
    assert not offered & {"mcp__docs__delete_all", "mcp__vault__wipe"}
    assert [r.status_code for r in refused] == [403, 403]
    assert "mcp:docs:delete_all" in refused[0].json()["message"]
    assert [tool for tool, _ in docs.calls] == ["search"]
    assert [tool for tool, _ in vault.calls] == ["lookup"]
    assert reader["status"]["run"]["tasks"][0]["summary"] == "found the docs and the value"

    # The Agent's status: the denials, and each server as the kernel found it.
    run = reader["status"]["run"]
    assert run["denials"]["count"] == 2
    assert "mcp:vault:wipe" in run["denials"]["last"]
    servers = {s["name"]: s for s in run["mcpServers"]}
    assert servers["docs"] == {"name": "docs", "ready": True, "reason": "Connected",
                               "tools": ["search"]}  # fmt: skip
    assert servers["vault"]["tools"] == ["lookup"]
    ready = [
        c
        for e in seen.events
        if e.kind == "agent" and e.name == "mcp-reader"
        for c in (e.obj.get("status") or {}).get("conditions") or []
        if c["type"] == "McpServersReady"
    ]
    assert ready, "the operator never reported McpServersReady"
    assert ready[-1]["status"] == "True"

    # The token went to the server, from the kernel; the agent container never held it.
    assert vault.authorizations
    assert set(vault.authorizations) == {f"Bearer {TOKEN}"}
    assert f"{MCP_DIR}/vault" in kernel_sees
    assert not any(m.startswith(MCP_DIR) for m in agent_sees)
    # The same search finds it where it is, in the kernel's Secret volume; not in the agent.
    assert any(p.endswith(f"{MCP_DIR}/vault/Authorization") for p in kernel_holds), kernel_holds
    assert agent_holds == []
    for container in ("agent", "tools", "kernel"):
        assert TOKEN not in node_agent.pod_log(namespace, pod_name, container), container
    assert TOKEN not in json.dumps(reader)
