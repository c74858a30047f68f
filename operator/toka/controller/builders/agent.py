"""An Agent object from a session's agent template: the session's defaults resolved in.

The kernel reads only its Agent, so whatever the session contributes (LLM
defaults, MCP servers, workspace) is written into the Agent's spec here.
"""

from __future__ import annotations

from typing import Any

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
from toka.contract import AGENT_KIND, GROUP_VERSION, recording_key
from toka.controller.builders.meta import Owner, name_of, namespace_of, owner_reference
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
        ref = llm.replay.config_map_ref.model_copy(update={"key": recording_key(agent_name)})
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


def build_agent(
    session: AgentSession, template: AgentTemplate, handoff: list[HandoffEntry]
) -> JSON:
    """The Agent of one of the session's templates, owned by the session."""
    session_name = name_of(session)
    spec = AgentSpec(
        **template.model_dump(exclude={"llm", "mcp_servers"}),
        session_ref=SessionRef(name=session_name),
        workstream=session.spec.workstream,
        llm=resolve_llm(session.spec.llm, template.llm, template.name),
        mcp_servers=merge_mcp_servers(session.spec.mcp_servers, template.mcp_servers),
        handoff=handoff or None,
        workspace=session.spec.workspace,
        pod_template=session.spec.pod_template,
        suspend=session.spec.suspend,
    )
    name = agent_object_name(session_name, template.name)
    return _agent_manifest(name, session, spec, {LABEL_SESSION: session_name})


def _agent_manifest(name: str, owner: Owner, spec: AgentSpec, labels: dict[str, str]) -> JSON:
    """An Agent owned (and garbage-collected) by `owner`, in its namespace."""
    labels = {**labels, LABEL_AGENT: name, LABEL_MANAGED_BY: MANAGED_BY}
    if spec.workstream:
        labels[LABEL_WORKSTREAM] = spec.workstream
    return {
        "apiVersion": GROUP_VERSION,
        "kind": AGENT_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace_of(owner),
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": spec.wire(),
    }


def build_child_agent(
    parent: Agent, request: SpawnRequest, depth: int, limits: AgentLimits | None
) -> JSON:
    """The Agent a spawn request asked for: the parent's settings, the request's grant and
    tasks, owned by the parent so that it goes when the parent goes."""
    parent_name = name_of(parent)
    spec = AgentSpec(
        name=request.name,
        domain=parent.spec.domain,
        capabilities=request.capabilities,
        mcp_servers=granted_mcp_servers(parent.spec.mcp_servers, request.capabilities),
        tasks=request.tasks,
        llm=_child_llm(parent.spec.llm, request.name),
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
    name = agent_object_name(parent_name, request.name)
    labels = {LABEL_PARENT: parent_name, LABEL_SPAWN_DEPTH: str(depth)}
    return _agent_manifest(name, parent, spec, labels)


def _child_llm(llm: LLMSpec | None, child: str) -> LLMSpec | None:
    """The parent's LLM settings; its recording key names the parent, so the child's is
    its own."""
    if llm is None or llm.replay is None:
        return llm
    ref = llm.replay.config_map_ref.model_copy(update={"key": None})
    replay = llm.replay.model_copy(update={"config_map_ref": ref})
    return resolve_llm(llm.model_copy(update={"replay": replay}), None, child)
