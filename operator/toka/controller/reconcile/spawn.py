"""Answering an agent's spawn requests: narrowing, bounds and budget, decided here only.

The kernel records `SpawnSubAgent` in `status.run.spawnRequests` without
deciding; the operator is the one place that may create an Agent, so the
checks live with it. A child may hold only capabilities each equal to or
narrower than one of its parent's (`Grant.covers`), the tree is bounded in
depth and fan-out, and a child's token budget is carved out of its parent's
remaining budget, so a parent cannot escape its limits by spawning. Answers
are written once per request id; an answered request is never reconsidered,
and a child created before a crash is adopted by the 409 path. A child whose
name another object holds cannot be made: the request is refused, and so is
an acceptance already written for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from toka.api.capabilities import CapabilityError, Grant, parse
from toka.api.models import Agent, AgentLimits, SpawnRequest, SpawnResult
from toka.controller.builders.agent import build_child_agent
from toka.controller.builders.meta import name_of
from toka.controller.builders.names import LABEL_SPAWN_DEPTH, agent_object_name

JSON = dict[str, Any]
MAX_SPAWN_DEPTH = 2
MAX_CHILDREN = 4
NO_CONFLICTS: Mapping[str, str] = MappingProxyType({})


@dataclass
class SpawnPlan:
    create: list[JSON] = field(default_factory=list)
    results: list[SpawnResult] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)


def carved_tokens(results: list[SpawnResult] | None) -> int:
    """Tokens this agent has given to its children."""
    return sum(r.max_tokens or 0 for r in results or [] if r.accepted)


def compute_spawn_plan(
    agent: Agent, limits: AgentLimits | None, conflicts: Mapping[str, str] = NO_CONFLICTS
) -> SpawnPlan:
    """Answers for the unanswered requests, and the children to create for the accepted ones.

    `limits` is the agent's effective limits (its share minus what it already gave away).
    `conflicts` names the children whose object name another object holds (child name ->
    why): their requests are refused, an answer already given included, and nothing is
    created for them.
    """
    status = agent.status
    requests = (status.run.spawn_requests if status and status.run else None) or []
    plan = SpawnPlan()
    for result in (status.spawn_results if status else None) or []:
        if result.accepted and result.agent is not None and result.agent in conflicts:
            _refuse_name_conflict(plan, result.id, conflicts[result.agent])
        else:
            plan.results.append(result)
    answered = {r.id for r in plan.results}
    grant = Grant.from_strings(agent.spec.capabilities or [])
    depth = int((agent.metadata.labels or {}).get(LABEL_SPAWN_DEPTH, "0")) + 1
    remaining = _remaining_tokens(agent, limits)
    for request in requests:
        if request.id in answered:
            continue
        accepted = sum(1 for r in plan.results if r.accepted)
        child = agent_object_name(name_of(agent), request.name)
        refusal = _refusal(request, grant, depth, accepted, remaining)
        if refusal is None and child in conflicts:
            _refuse_name_conflict(plan, request.id, conflicts[child])
        elif refusal is not None:
            _refuse(plan, request, *refusal)
        else:
            child_limits = _child_limits(limits, remaining)
            if remaining is not None and child_limits is not None:
                remaining -= child_limits.max_tokens or 0
            plan.create.append(build_child_agent(agent, request, depth, child_limits))
            _accept(plan, request, child, child_limits)
    return plan


def _refuse(plan: SpawnPlan, request: SpawnRequest, reason: str, message: str) -> None:
    """Answer `request` with a refusal the kernel reads and a Warning a person reads."""
    plan.results.append(SpawnResult(id=request.id, accepted=False, reason=f"{reason}: {message}"))
    plan.events.append(
        ("Warning", "SpawnRefused", f"spawn request {request.id} ({request.name}): {message}")
    )


def _refuse_name_conflict(plan: SpawnPlan, request_id: str, why: str) -> None:
    """Answer a request with a refusal: the child's name belongs to another object."""
    plan.results.append(SpawnResult(id=request_id, accepted=False, reason=f"NameConflict: {why}"))
    plan.events.append(("Warning", "SpawnRefused", f"spawn request {request_id}: {why}"))


def _accept(plan: SpawnPlan, request: SpawnRequest, child: str, limits: AgentLimits | None) -> None:
    """Answer `request`: Agent `child` is made, with `limits` carved out of its parent's."""
    max_tokens = limits.max_tokens if limits else None
    plan.results.append(
        SpawnResult(id=request.id, agent=child, accepted=True, max_tokens=max_tokens)
    )
    plan.events.append(
        ("Normal", "SpawnAccepted", f"spawn request {request.id}: created Agent {child}")
    )


def _child_limits(limits: AgentLimits | None, remaining: int | None) -> AgentLimits | None:
    """Half of what the parent has left, and half its rate; None when it has no budget."""
    if remaining is None:
        return None
    rpm = limits.requests_per_minute if limits else None
    return AgentLimits(
        max_tokens=remaining // 2,
        requests_per_minute=max(1, rpm // 2) if rpm else None,
    )


def _remaining_tokens(agent: Agent, limits: AgentLimits | None) -> int | None:
    if limits is None or limits.max_tokens is None:
        return None
    run = agent.status.run if agent.status else None
    used = run.usage.total if run and run.usage else 0
    return max(0, limits.max_tokens - used)


def _refusal(
    request: SpawnRequest, grant: Grant, depth: int, accepted: int, remaining: int | None
) -> tuple[str, str] | None:
    """(reason, message) when the request must be refused, else None."""
    if "agent:spawn" not in grant:
        return "NotPermitted", "the agent does not hold agent:spawn"
    if depth > MAX_SPAWN_DEPTH:
        return "DepthExceeded", f"a child would be {depth} levels deep (at most {MAX_SPAWN_DEPTH})"
    if accepted >= MAX_CHILDREN:
        return "TooManyChildren", (
            f"the agent already has {accepted} children (at most {MAX_CHILDREN})"
        )
    for text in request.capabilities or []:
        try:
            wanted = parse(text)
        except CapabilityError as err:
            return "InvalidRequest", str(err)
        for cap in wanted:
            if not grant.covers(cap):
                return "Escalation", (
                    f"{cap} is not equal to or narrower than any of the parent's capabilities "
                    f"({', '.join(grant.strings()) or 'none'})"
                )
    if remaining is not None and remaining < 2:
        return "BudgetExhausted", "the agent has no token budget left to give a child"
    return None
