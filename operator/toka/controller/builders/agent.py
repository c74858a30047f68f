"""An Agent object from a session's agent template: the session's defaults resolved in."""

from __future__ import annotations

from typing import Any

from toka.api.base import GROUP_VERSION
from toka.api.models import (
    AgentSession,
    AgentSpec,
    AgentTemplate,
    HandoffEntry,
    LLMSpec,
    SessionRef,
)
from toka.controller.builders.meta import owner_reference
from toka.controller.builders.names import (
    LABEL_AGENT,
    LABEL_MANAGED_BY,
    LABEL_SESSION,
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


def build_agent(session_body: JSON, template: AgentTemplate, handoff: list[HandoffEntry]) -> JSON:
    session = AgentSession.model_validate(session_body)
    name = agent_object_name(session_body["metadata"]["name"], template.name)
    spec = AgentSpec(
        **template.model_dump(exclude={"llm"}),
        session_ref=SessionRef(name=session_body["metadata"]["name"]),
        workstream=session.spec.workstream,
        llm=resolve_llm(session.spec.llm, template.llm, template.name),
        handoff=handoff or None,
        workspace=session.spec.workspace,
        pod_template=session.spec.pod_template,
        suspend=session.spec.suspend,
    )
    labels = {
        LABEL_SESSION: session_body["metadata"]["name"],
        LABEL_AGENT: name,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    if session.spec.workstream:
        labels[LABEL_WORKSTREAM] = session.spec.workstream
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Agent",
        "metadata": {
            "name": name,
            "namespace": session_body["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(session_body)],
        },
        "spec": spec.wire(),
    }
