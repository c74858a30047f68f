"""The CRDs on a real API server: what `kubectl apply` accepts, rejects and shows."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from toka.kube.client import AGENTS, SECRETS, SESSIONS, ApiError, AsyncKube

pytestmark = pytest.mark.controlplane

REPO = Path(__file__).parents[2]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))
RESOURCE = {"AgentSession": SESSIONS, "Agent": AGENTS}


def valid_session() -> dict[str, Any]:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "s"},
        "spec": {
            "llm": {"provider": "anthropic", "apiKeySecretRef": {"name": "k", "key": "api-key"}},
            "agents": [
                {
                    "name": "a",
                    "capabilities": ["llm:complete"],
                    "tasks": [{"name": "t1", "description": "do a"}],
                },
                {
                    "name": "b",
                    "dependsOn": ["a"],
                    "capabilities": ["fs:read:src/**"],
                    "tasks": [{"name": "t1", "description": "do b"}],
                },
            ],
        },
    }


def valid_agent() -> dict[str, Any]:
    return {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "ag"},
        "spec": {"capabilities": ["llm:complete"], "tasks": [{"name": "t", "description": "x"}]},
    }


def agents(s: dict[str, Any]) -> list[dict[str, Any]]:
    return s["spec"]["agents"]  # type: ignore[no-any-return]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = obj
        for key in parents:
            node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _many_agents(s: dict[str, Any]) -> None:
    s["spec"]["agents"] = [
        {"name": f"a{i}", "tasks": [{"name": "t", "description": "x"}]} for i in range(129)
    ]


def _dup_agent(s: dict[str, Any]) -> None:
    agents(s)[1] = {**agents(s)[1], "name": "a", "dependsOn": None}
    del agents(s)[1]["dependsOn"]


def _dup_task(s: dict[str, Any]) -> None:
    agents(s)[0]["tasks"].append({"name": "t1", "description": "again"})


def mcp_server(name: str = "docs", url: str = "https://docs.example/mcp") -> dict[str, Any]:
    return {"name": name, "url": url, "headersSecretRef": {"name": "docs-token"}}


def _servers(n: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [mcp_server(f"{prefix}{i}") for i in range(n)]


def _too_many_servers_together(s: dict[str, Any]) -> None:
    s["spec"]["mcpServers"] = _servers(16)
    agents(s)[0]["mcpServers"] = _servers(1, prefix="own")


# (case, mutation, field the message must name, words it must contain)
INVALID = [
    ("duplicate agent names", _dup_agent, "spec.agents[1]", "Duplicate value"),
    (
        "dependsOn names an unknown agent",
        _set("spec.agents.1.dependsOn", ["ghost"]),
        "spec.agents",
        "every dependsOn entry must name an agent of this session",
    ),
    (
        "an agent depends on itself",
        _set("spec.agents.1.dependsOn", ["b"]),
        "spec.agents[1].dependsOn",
        "cannot depend on itself",
    ),
    (
        "unparseable capability",
        _set("spec.agents.0.capabilities", ["fs:delete:x"]),
        "spec.agents[0].capabilities[0]",
        "should match",
    ),
    (
        "capability escaping the workspace with ..",
        _set("spec.agents.0.capabilities", ["fs:read:../etc/**"]),
        "spec.agents[0].capabilities[0]",
        "should match",
    ),
    (
        "capability with an absolute path",
        _set("spec.agents.0.capabilities", ["fs:write:/etc/passwd"]),
        "spec.agents[0].capabilities[0]",
        "should match",
    ),
    (
        "shell capability naming a path, not a program",
        _set("spec.agents.0.capabilities", ["shell:exec:/bin/sh"]),
        "spec.agents[0].capabilities[0]",
        "should match",
    ),
    (
        "zero requests per minute",
        _set("spec.limits.requestsPerMinute", 0),
        "spec.limits.requestsPerMinute",
        "should be greater than or equal to 1",
    ),
    (
        "negative parallelism",
        _set("spec.limits.maxParallelAgents", -1),
        "spec.limits.maxParallelAgents",
        "should be greater than or equal to 1",
    ),
    (
        "zero token budget",
        _set("spec.limits.maxTotalTokens", 0),
        "spec.limits.maxTotalTokens",
        "should be greater than or equal to 1",
    ),
    (
        "unknown provider",
        _set("spec.llm.provider", "gemini"),
        "spec.llm.provider",
        "Unsupported value",
    ),
    (
        "an agent with no tasks",
        _set("spec.agents.0.tasks", []),
        "spec.agents[0].tasks",
        "should have at least 1 items",
    ),
    ("too many agents", _many_agents, "spec.agents", "must have at most 128 items"),
    (
        "agent name that is not a DNS label",
        _set("spec.agents.0.name", "Build_Fixer"),
        "spec.agents[0].name",
        "should match",
    ),
    (
        "session name over 63 characters",
        _set("metadata.name", "s" * 64),
        "metadata.name",
        "at most 63 characters",
    ),
    (
        "temperature as a float",
        _set("spec.llm.temperature", 0.3),
        "spec.llm.temperature",
        "must be of type string",
    ),
    (
        "temperature out of range",
        _set("spec.llm.temperature", "3.5"),
        "spec.llm.temperature",
        "should match",
    ),
    (
        "openai-compatible without baseURL",
        _set("spec.llm", {"provider": "openai-compatible"}),
        "spec.llm.baseURL",
        "baseURL is required when provider is openai-compatible",
    ),
    (
        "replay without a recording",
        _set("spec.llm", {"provider": "replay"}),
        "spec.llm.replay",
        "replay.configMapRef is required",
    ),
    (
        "record mode on replay",
        _set(
            "spec.llm",
            {"provider": "replay", "replay": {"configMapRef": {"name": "r"}}, "record": True},
        ),
        "spec.llm.record",
        "record needs a real provider",
    ),
    (
        "an OpenAI organization that is no header value",
        _set("spec.llm.organization", "org-1\r\nX-Injected: yes"),
        "spec.llm.organization",
        "should match",
    ),
    (
        "two workspace sources",
        _set("spec.workspace", {"configMap": "w", "git": {"url": "https://x/y.git"}}),
        "spec.workspace",
        "at most one of configMap, git and persistentVolumeClaim",
    ),
    ("duplicate task names", _dup_task, "spec.agents[0].tasks[1]", "Duplicate value"),
    (
        "unknown failure policy",
        _set("spec.failurePolicy", "Retry"),
        "spec.failurePolicy",
        "Unsupported value",
    ),
    (
        "a typo'd field name",
        _set("spec.agents.1.dependOn", ["a"]),
        "spec.agents[1].dependOn",
        "unknown field",
    ),
    (
        "task description over 4 KiB",
        _set("spec.agents.0.tasks.0.description", "x" * 4097),
        "spec.agents[0].tasks[0].description",
        "Too long",
    ),
    (
        "a git URL holding credentials",
        _set("spec.workspace", {"git": {"url": "https://bot:hunter2@git.example/r.git"}}),
        "spec.workspace.git.url",
        "put them in a Secret named by credentialsSecretRef",
    ),
    (
        "a git URL that is not http(s)",
        _set("spec.workspace", {"git": {"url": "ssh://git.example/r.git"}}),
        "spec.workspace.git.url",
        "should match",
    ),
    (
        "workspace size that is not a quantity",
        _set("spec.workspace", {"sizeLimit": "lots"}),
        "spec.workspace.sizeLimit",
        "should match",
    ),
    (
        "an MCP server URL holding credentials",
        _set("spec.mcpServers", [mcp_server(url="https://bot:s3cret@docs.example/mcp")]),
        "spec.mcpServers[0].url",
        "put them in a Secret named by headersSecretRef",
    ),
    (
        "an agent's MCP server URL holding credentials",
        _set("spec.agents.0.mcpServers", [mcp_server(url="http://token@docs.example/mcp")]),
        "spec.agents[0].mcpServers[0].url",
        "put them in a Secret named by headersSecretRef",
    ),
    (
        "an MCP server URL that is not http(s)",
        _set("spec.mcpServers", [mcp_server(url="stdio:///usr/bin/mcp-docs")]),
        "spec.mcpServers[0].url",
        "should match",
    ),
    (
        "two MCP servers of one name",
        _set("spec.mcpServers", [mcp_server(), mcp_server(url="https://other.example/mcp")]),
        "spec.mcpServers[1]",
        "Duplicate value",
    ),
    (
        "an MCP server name that is not a DNS label",
        _set("spec.agents.0.mcpServers", [mcp_server(name="Docs_Server")]),
        "spec.agents[0].mcpServers[0].name",
        "should match",
    ),
    (
        "more than 16 MCP servers",
        _set("spec.mcpServers", _servers(17)),
        "spec.mcpServers",
        "must have at most 16 items",
    ),
    (
        "more than 16 MCP servers for one agent, the session's and its own",
        _too_many_servers_together,
        "spec.agents",
        "together may name at most 16 servers",
    ),
    (
        "an mcp capability naming no server",
        _set("spec.agents.0.capabilities", ["mcp:docs:search_*"]),
        "spec.agents",
        "every mcp:<server>:<tool-glob> capability must name a server of mcpServers",
    ),
    (
        "an mcp capability with a path for a tool",
        _set("spec.agents.0.capabilities", ["mcp:docs:search/*"]),
        "spec.agents[0].capabilities[0]",
        "should match",
    ),
    (
        "backoffLimit over 10",
        _set("spec.agents.0.backoffLimit", 11),
        "spec.agents[0].backoffLimit",
        "should be less than or equal to 10",
    ),
]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
async def test_every_example_is_accepted(kube: AsyncKube, namespace: str, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        created = await kube.create(
            RESOURCE[doc["kind"]], doc, namespace, field_validation="Strict"
        )
        assert created["metadata"]["name"] == doc["metadata"]["name"]


@pytest.mark.parametrize(("case", "mutate", "field", "words"), INVALID, ids=[c[0] for c in INVALID])
async def test_invalid_session_is_rejected_naming_the_field(
    kube: AsyncKube,
    namespace: str,
    case: str,
    mutate: Callable[[dict[str, Any]], None],
    field: str,
    words: str,
) -> None:
    session = copy.deepcopy(valid_session())
    mutate(session)
    with pytest.raises(ApiError) as err:
        await kube.create(SESSIONS, session, namespace, field_validation="Strict")
    assert err.value.status in (400, 422), err.value
    assert field in err.value.message, err.value.message
    assert words in err.value.message, err.value.message


async def test_the_valid_baseline_is_accepted(kube: AsyncKube, namespace: str) -> None:
    created = await kube.create(SESSIONS, valid_session(), namespace, field_validation="Strict")
    # Server-side defaults from the models.
    assert created["spec"]["limits"]["requestsPerMinute"] == 60
    assert created["spec"]["failurePolicy"] == "Continue"
    assert created["spec"]["agents"][0]["backoffLimit"] == 2


async def test_a_session_with_mcp_servers_and_grants_for_them_is_accepted(
    kube: AsyncKube, namespace: str
) -> None:
    session = valid_session()
    session["spec"]["mcpServers"] = [mcp_server()]
    agents(session)[0]["capabilities"] = ["llm:complete", "mcp:docs:search_*", "mcp:wiki:*"]
    agents(session)[0]["mcpServers"] = [{"name": "wiki", "url": "http://wiki.mcp:8080/mcp"}]
    created = await kube.create(SESSIONS, session, namespace, field_validation="Strict")
    assert created["spec"]["mcpServers"] == [mcp_server()]
    assert created["spec"]["agents"][0]["mcpServers"][0]["name"] == "wiki"


async def test_the_readmes_mcp_example_applies_as_written(kube: AsyncKube, namespace: str) -> None:
    section = (REPO / "README.md").read_text().split("## MCP servers", 1)[1]
    (snippet,) = re.findall(r"```yaml\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    secret, session = yaml.safe_load_all(snippet)
    await kube.create(SECRETS, secret, namespace, field_validation="Strict")
    created = await kube.create(SESSIONS, session, namespace, field_validation="Strict")
    assert "mcp:docs:search_*" in created["spec"]["agents"][0]["capabilities"]


async def test_an_agent_may_grant_tools_only_of_its_own_mcp_servers(
    kube: AsyncKube, namespace: str
) -> None:
    agent = valid_agent()
    agent["spec"]["capabilities"] = ["mcp:docs:*"]
    with pytest.raises(ApiError) as err:
        await kube.create(AGENTS, agent, namespace, field_validation="Strict")
    assert "spec.capabilities" in err.value.message
    assert "must name a server of mcpServers" in err.value.message
    agent["spec"]["mcpServers"] = [mcp_server()]
    created = await kube.create(AGENTS, agent, namespace, field_validation="Strict")
    assert created["spec"]["capabilities"] == ["mcp:docs:*"]


async def test_the_kernels_mcp_report_is_accepted_as_status(
    kube: AsyncKube, namespace: str
) -> None:
    agent = valid_agent()
    agent["spec"]["mcpServers"] = [mcp_server()]
    await kube.create(AGENTS, agent, namespace)
    report = {
        "name": "docs",
        "ready": False,
        "reason": "Unreachable",
        "message": "connect timeout",
        "tools": ["search_pages", "v2.get-page"],
    }
    patched = await kube.patch(
        AGENTS, "ag", {"status": {"run": {"mcpServers": [report]}}}, namespace, sub="status"
    )
    assert patched["status"]["run"]["mcpServers"] == [report]


async def test_a_standalone_agent_with_bad_fields_is_rejected(
    kube: AsyncKube, namespace: str
) -> None:
    agent = valid_agent()
    agent["spec"]["capabilities"] = ["network-access", "fs:read:a/../../b"]
    with pytest.raises(ApiError) as err:
        await kube.create(AGENTS, agent, namespace)
    assert "spec.capabilities[1]" in err.value.message


async def test_duplicate_capabilities_are_rejected_as_a_set(
    kube: AsyncKube, namespace: str
) -> None:
    agent = valid_agent()
    agent["spec"]["capabilities"] = ["llm:complete", "llm:complete"]
    with pytest.raises(ApiError) as err:
        await kube.create(AGENTS, agent, namespace)
    assert "spec.capabilities[1]: Duplicate value" in err.value.message


TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


async def test_printer_columns_appear_in_the_table_kubectl_shows(
    kube: AsyncKube, namespace: str
) -> None:
    await kube.create(SESSIONS, valid_session(), namespace)
    await kube.patch(
        SESSIONS,
        "s",
        {
            "status": {
                "phase": "Running",
                "progress": "1/2",
                "agents": {"total": 2, "running": 1},
                "budget": {"usedTokens": 1234},
            }
        },
        namespace,
        sub="status",
    )
    table = await kube.request("GET", SESSIONS.path(namespace), accept=TABLE)
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names == ["Name", "Phase", "Progress", "Agents", "Tokens", "Age"]
    assert table["rows"][0]["cells"][:5] == ["s", "Running", "1/2", 2, 1234]

    agent = valid_agent()
    agent["spec"]["sessionRef"] = {"name": "s"}
    agent["spec"]["domain"] = "security"
    await kube.create(AGENTS, agent, namespace)
    await kube.patch(
        AGENTS,
        "ag",
        {"status": {"phase": "Running", "run": {"progress": "0/1", "currentTask": "t"}}},
        namespace,
        sub="status",
    )
    table = await kube.request("GET", AGENTS.path(namespace), accept=TABLE)
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Session",
        "Domain",
        "Phase",
        "Progress",
        "Task",
        "Age",
    ]
    assert table["rows"][0]["cells"][:6] == ["ag", "s", "security", "Running", "0/1", "t"]


async def test_kubectl_get_toka_lists_both_kinds(kube: AsyncKube) -> None:
    groups = await kube.request("GET", "/apis/toka.dev/v1alpha1")
    by_name = {r["name"]: r for r in groups["resources"]}
    assert by_name["agentsessions"]["shortNames"] == ["asess"]
    assert by_name["agents"]["shortNames"] == ["ag"]
    assert by_name["agentsessions"]["categories"] == ["toka"]
    assert by_name["agents"]["categories"] == ["toka"]
    assert "agents/status" in by_name
