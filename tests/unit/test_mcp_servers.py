"""MCP servers from the API to the pod: merged into each Agent, credentials for the kernel only."""

from __future__ import annotations

from typing import Any

import pytest

from toka.api.models import Agent, AgentSession, McpServer
from toka.contract import MCP_DIR
from toka.controller.builders.agent import build_agent, merge_mcp_servers
from toka.controller.builders.pod import PodConfig, build_agent_pod

JSON = dict[str, Any]
DOCS = {"name": "docs", "url": "https://docs.example/mcp", "headersSecretRef": {"name": "docs-h"}}
WIKI = {"name": "wiki", "url": "http://wiki.mcp.svc:8080/mcp"}


def an_agent(servers: list[JSON] | None) -> Agent:
    spec: JSON = {"tasks": [{"name": "t", "description": "x"}]}
    if servers is not None:
        spec["mcpServers"] = servers
    return Agent.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "ag", "namespace": "ns", "uid": "ag-uid"},
            "spec": spec,
        }
    )


def containers(pod: JSON) -> dict[str, JSON]:
    spec = pod["spec"]
    return {c["name"]: c for c in spec["initContainers"] + spec["containers"]}


def secret_mounts(pod: JSON, container: str) -> dict[str, str]:
    """mountPath -> Secret name, for every Secret volume `container` mounts."""
    secrets = {
        v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v
    }
    mounts = containers(pod)[container].get("volumeMounts", [])
    return {m["mountPath"]: secrets[m["name"]] for m in mounts if m["name"] in secrets}


def env(pod: JSON, container: str) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in containers(pod)[container].get("env", [])}


def test_each_servers_headers_secret_is_mounted_read_only_into_the_kernel_alone() -> None:
    pod = build_agent_pod(an_agent([DOCS, WIKI]), 1, PodConfig())
    assert secret_mounts(pod, "kernel") == {f"{MCP_DIR}/docs": "docs-h"}
    assert secret_mounts(pod, "tools") == {}
    assert secret_mounts(pod, "agent") == {}
    (mount,) = [
        m for m in containers(pod)["kernel"]["volumeMounts"] if m["mountPath"].startswith(MCP_DIR)
    ]
    assert mount["readOnly"] is True


def test_the_kernel_is_told_where_the_headers_are_and_no_other_container_is() -> None:
    pod = build_agent_pod(an_agent([WIKI]), 1, PodConfig())
    assert env(pod, "kernel")["TOKA_MCP_DIR"] == MCP_DIR
    assert "TOKA_MCP_DIR" not in env(pod, "tools")
    assert "TOKA_MCP_DIR" not in env(pod, "agent")


def test_an_agent_without_mcp_servers_gets_no_mcp_directory() -> None:
    pod = build_agent_pod(an_agent(None), 1, PodConfig())
    assert "TOKA_MCP_DIR" not in env(pod, "kernel")
    assert not any(v["name"].startswith("mcp-") for v in pod["spec"]["volumes"])


def test_a_server_name_of_63_characters_still_makes_a_valid_volume_name() -> None:
    long = {**DOCS, "name": "d" * 63}
    pod = build_agent_pod(
        an_agent([long, {**DOCS, "headersSecretRef": {"name": "other"}}]), 1, PodConfig()
    )
    names = [v["name"] for v in pod["spec"]["volumes"]]
    assert all(len(n) <= 63 for n in names)
    assert len(names) == len(set(names))
    assert secret_mounts(pod, "kernel")[f"{MCP_DIR}/{'d' * 63}"] == "docs-h"


MERGES = [
    # (session's servers, agent's servers, the Agent's servers as (name, url))
    ("none anywhere", None, None, None),
    ("the session's only", [DOCS], None, [("docs", DOCS["url"])]),
    ("the agent's only", None, [WIKI], [("wiki", WIKI["url"])]),
    ("both, different names", [DOCS], [WIKI], [("docs", DOCS["url"]), ("wiki", WIKI["url"])]),
    (
        "the agent's entry wins by name",
        [DOCS, WIKI],
        [{"name": "docs", "url": "https://mirror.example/mcp"}],
        [("docs", "https://mirror.example/mcp"), ("wiki", WIKI["url"])],
    ),
]


@pytest.mark.parametrize(
    ("case", "session_servers", "agent_servers", "expected"), MERGES, ids=[m[0] for m in MERGES]
)
def test_a_session_agent_gets_the_sessions_servers_and_its_own(
    case: str,
    session_servers: list[JSON] | None,
    agent_servers: list[JSON] | None,
    expected: list[tuple[str, str]] | None,
) -> None:
    template: JSON = {"name": "a", "tasks": [{"name": "t", "description": "x"}]}
    if agent_servers is not None:
        template["mcpServers"] = agent_servers
    spec: JSON = {"agents": [template]}
    if session_servers is not None:
        spec["mcpServers"] = session_servers
    body = {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "s", "namespace": "ns", "uid": "s-uid"},
        "spec": spec,
    }
    session = AgentSession.model_validate(body)
    agent = build_agent(session, session.spec.agents[0], [])
    servers = agent["spec"].get("mcpServers")
    assert (None if servers is None else [(s["name"], s["url"]) for s in servers]) == expected


def test_the_agents_entry_replaces_the_sessions_whole_credential_included() -> None:
    merged = merge_mcp_servers(
        [McpServer.model_validate(DOCS)],
        [McpServer.model_validate({"name": "docs", "url": "https://public.example/mcp"})],
    )
    assert merged is not None
    (docs,) = merged
    assert docs.headers_secret_ref is None
