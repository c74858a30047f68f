"""An Agent object from a session's agent template: the session's defaults resolved in.

The kernel reads only its Agent, so whatever the session contributes (LLM
defaults, MCP servers, workspace) is written into the Agent's spec here.
"""

from __future__ import annotations

from typing import Any

from toka.api.base import GROUP_VERSION
from toka.api.capabilities import Grant
from toka.api.models import (
    Agent,
    AgentLimits,
    AgentSession,
    AgentSpec,
    AgentTemplate,
    HandoffEntry,
    LLMSpec,
    McpServer,
    SessionRef,
    SpawnRequest,
)
from toka.controller.builders.meta import owner_reference
from toka.controller.builders.names import (
    LABEL_AGENT,
    LABEL_MANAGED_BY,
    LABEL_PARENT,
    LABEL_SESSION,
    LABEL_SPAWN_DEPTH,
    LABEL_WORKSTREAM,
    MANAGED_BY,
    agent_object_name,
)

JSON = dict[str, Any]


def resolve_llm(session: LLMSpec | None, agent: LLMSpec | None, agent_name: str) -> LLMSpec | None:
    """The agent's override on top of the session's default, field by field."""
    if session is None and agent is None:
        return None
    merged: JSON = {}
    for spec in (session, agent):
        if spec is not None:
            merged.update(spec.model_dump(exclude_none=True))
    llm = LLMSpec.model_validate(merged)
    if llm.replay is not None and llm.replay.config_map_ref.key is None:
        # One recording per agent: the key defaults to the agent's name.
        ref = llm.replay.config_map_ref.model_copy(update={"key": f"{agent_name}.json"})
        llm = llm.model_copy(
            update={"replay": llm.replay.model_copy(update={"config_map_ref": ref})}
        )
    return llm


def merge_mcp_servers(
    session: list[McpServer] | None, agent: list[McpServer] | None
) -> list[McpServer] | None:
    """The session's servers and the agent's own; the agent's entry wins by name."""
    merged = {server.name: server for server in session or []}
    merged.update((server.name, server) for server in agent or [])
    return list(merged.values()) or None


def granted_mcp_servers(
    servers: list[McpServer] | None, capabilities: list[str] | None
) -> list[McpServer] | None:
    """The servers some `mcp:<server>:…` capability names: a spawned child gets no other
    server's credential into its pod."""
    grant = Grant.from_strings(capabilities or [])
    named = {cap.action for cap in grant.capabilities if cap.domain == "mcp"}
    return [server for server in servers or [] if server.name in named] or None


def build_agent(session_body: JSON, template: AgentTemplate, handoff: list[HandoffEntry]) -> JSON:
    session = AgentSession.model_validate(session_body)
    name = agent_object_name(session_body["metadata"]["name"], template.name)
    spec = AgentSpec(
        **template.model_dump(exclude={"llm", "mcp_servers"}),
        session_ref=SessionRef(name=session_body["metadata"]["name"]),
        workstream=session.spec.workstream,
        llm=resolve_llm(session.spec.llm, template.llm, template.name),
        mcp_servers=merge_mcp_servers(session.spec.mcp_servers, template.mcp_servers),
        handoff=handoff or None,
        workspace=session.spec.workspace,
        pod_template=session.spec.pod_template,
        suspend=session.spec.suspend,
    )
    return _agent_manifest(
        name, session_body, spec, {LABEL_SESSION: session_body["metadata"]["name"]}
    )


def _agent_manifest(name: str, owner: JSON, spec: AgentSpec, labels: dict[str, str]) -> JSON:
    """An Agent owned (and garbage-collected) by `owner`, in its namespace."""
    labels = {**labels, LABEL_AGENT: name, LABEL_MANAGED_BY: MANAGED_BY}
    if spec.workstream:
        labels[LABEL_WORKSTREAM] = spec.workstream
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Agent",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec.wire(),
    }


def build_child_agent(
    parent_body: JSON, request: SpawnRequest, depth: int, limits: AgentLimits | None
) -> JSON:
    """The Agent a spawn request asked for: the parent's settings, the request's grant and
    tasks, owned by the parent so that it goes when the parent goes."""
    parent = Agent.model_validate(parent_body)
    meta = parent_body["metadata"]
    name = agent_object_name(meta["name"], request.name)
    llm = parent.spec.llm
    if llm is not None and llm.replay is not None:
        # The parent's recording key names the parent; the child has its own.
        ref = llm.replay.config_map_ref.model_copy(update={"key": None})
        llm = resolve_llm(
            llm.model_copy(
                update={"replay": llm.replay.model_copy(update={"config_map_ref": ref})}
            ),
            None,
            request.name,
        )
    spec = AgentSpec(
        name=request.name,
        domain=parent.spec.domain,
        capabilities=request.capabilities,
        mcp_servers=granted_mcp_servers(parent.spec.mcp_servers, request.capabilities),
        tasks=request.tasks,
        llm=llm,
        resources=parent.spec.resources,
        image=parent.spec.image,
        tools_image=parent.spec.tools_image,
        sandbox=parent.spec.sandbox,
        timeout_seconds=parent.spec.timeout_seconds,
        workstream=parent.spec.workstream,
        workspace=parent.spec.workspace,
        pod_template=parent.spec.pod_template,
        limits=limits,
    )
    return _agent_manifest(
        name, parent_body, spec, {LABEL_PARENT: meta["name"], LABEL_SPAWN_DEPTH: str(depth)}
    )
