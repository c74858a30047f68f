"""The session plan: from the spec and the observed Agents, what to create, stop and report.

Level-based: the plan is recomputed from scratch on every reconcile, so an
operator killed between any two writes recomputes the same plan and, with
deterministic names, creates nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from toka.api.conditions import Condition, make_condition, merge_conditions, truncate
from toka.api.models import (
    Agent,
    AgentCounts,
    AgentLimits,
    AgentPhase,
    AgentSession,
    AgentSessionStatus,
    AgentTemplate,
    Budget,
    FailurePolicy,
    HandoffEntry,
    Member,
    MemberPhase,
    SessionPhase,
    TaskState,
    Usage,
    WorkspaceSpec,
    WorkspaceStatus,
)
from toka.controller.builders.agent import build_agent
from toka.controller.reconcile.dag import dependents, find_cycle

JSON = dict[str, Any]
TERMINAL = (SessionPhase.SUCCEEDED, SessionPhase.FAILED)
HANDOFF_LIMIT = 1024


@dataclass(frozen=True)
class ResultInput:
    """A sink agent's result, for the session's result (the merge of them all)."""

    agent: str
    object_name: str
    commit: str
    base: str


@dataclass
class SessionPlan:
    create: list[JSON] = field(default_factory=list)
    set_suspend: dict[str, bool] = field(default_factory=dict)
    shares: dict[str, AgentLimits] = field(default_factory=dict)
    delete_pods: bool = False
    status: AgentSessionStatus = field(default_factory=AgentSessionStatus)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None
    # Set once the session succeeded and has no result yet: the I/O layer merges these.
    result_inputs: list[ResultInput] = field(default_factory=list)


def result_of(agent: Agent | None) -> WorkspaceStatus | None:
    """An Agent's reported workspace, when it holds a result."""
    run = agent.status.run if agent and agent.status else None
    ws = run.workspace if run else None
    return ws if ws is not None and ws.result is not None and ws.base is not None else None


def handoff_for(template: AgentTemplate, observed: dict[str, Agent]) -> list[HandoffEntry]:
    """Each dependency's task summaries, joined and cut to the schema's 1 KiB."""
    entries = []
    for dep in template.depends_on or []:
        agent = observed.get(dep)
        run = agent.status.run if agent and agent.status else None
        parts = [
            f"{t.name}: {t.summary}" for t in (run.tasks if run and run.tasks else []) if t.summary
        ]
        ws = result_of(agent)
        entries.append(
            HandoffEntry(
                agent=dep,
                summary=truncate("\n".join(parts) or "(no summary)", HANDOFF_LIMIT),
                commit=ws.result.commit if ws and ws.result else None,
                base=ws.base if ws else None,
            )
        )
    return entries


def _agent_phase(agent: Agent) -> AgentPhase:
    return agent.status.phase if agent.status and agent.status.phase else AgentPhase.PENDING


def _usage(agent: Agent) -> Usage:
    run = agent.status.run if agent.status else None
    return run.usage if run and run.usage else Usage()


def _tasks_done(agent: Agent) -> int:
    run = agent.status.run if agent.status else None
    return sum(1 for t in (run.tasks or []) if t.state == TaskState.SUCCEEDED) if run else 0


def compute_session_plan(body: JSON, observed: dict[str, Agent], now: datetime) -> SessionPlan:
    """`observed` maps the session's agent names (not object names) to their Agents."""
    session = AgentSession.model_validate(body)
    spec = session.spec
    prev = session.status or AgentSessionStatus()
    generation = body["metadata"].get("generation")
    plan = SessionPlan()
    templates = {a.name: a for a in spec.agents}
    deps = {a.name: list(a.depends_on or []) for a in spec.agents}

    def cond(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
        return make_condition(type_, ok, reason, message, now=now, generation=generation)

    cycle = find_cycle(deps)
    if cycle:
        message = f"dependency cycle: {' → '.join(cycle)}; no agent was created"
        plan.status = prev.model_copy(
            update={
                "observed_generation": generation,
                "phase": SessionPhase.FAILED,
                "message": message,
                "conditions": merge_conditions(
                    prev.conditions,
                    [
                        cond("Ready", False, "InvalidSpec", message),
                        cond("Progressing", False, "InvalidSpec", message),
                        cond("Failed", True, "InvalidSpec", message),
                        cond("Succeeded", False, "InvalidSpec"),
                    ],
                ),
            }
        )
        if prev.phase != SessionPhase.FAILED:
            plan.events.append(("Warning", "InvalidSpec", message))
        return plan

    phases = {name: _agent_phase(a) for name, a in observed.items()}
    succeeded = {n for n, p in phases.items() if p == AgentPhase.SUCCEEDED}
    failed = {n for n, p in phases.items() if p == AgentPhase.FAILED}
    active = {
        n
        for n, p in phases.items()
        if p in (AgentPhase.PENDING, AgentPhase.RUNNING) and not observed[n].spec.suspend
    }
    skipped = dependents(deps, failed) - set(observed)

    usage = Usage()
    for agent in observed.values():
        usage = usage + _usage(agent)
    limit = spec.limits.max_total_tokens
    budget_exceeded = limit is not None and usage.total >= limit
    start_time = prev.start_time or (now if observed else None)
    deadline = spec.limits.active_deadline_seconds
    deadline_exceeded = bool(
        deadline and start_time and now >= start_time + timedelta(seconds=deadline)
    )
    fail_fast = spec.failure_policy == FailurePolicy.FAIL_FAST and bool(failed)
    finished_before = prev.phase in TERMINAL
    stop_all = deadline_exceeded or fail_fast or finished_before

    # Start what is ready: dependencies succeeded (and their results reported, where
    # results flow), a free slot, nothing halting.
    flows = results_flow(spec.workspace)
    awaiting = {n for n in succeeded if flows and result_of(observed[n]) is None}
    if not (stop_all or budget_exceeded or spec.suspend):
        ready = [
            t
            for t in spec.agents
            if t.name not in observed
            and t.name not in skipped
            and all(d in succeeded and d not in awaiting for d in deps[t.name])
        ]
        ready.sort(key=lambda t: -t.priority)
        slots = (spec.limits.max_parallel_agents or len(templates)) - len(active)
        for template in ready[: max(0, slots)]:
            plan.create.append(build_agent(body, template, handoff_for(template, observed)))
            plan.events.append(
                (
                    "Normal",
                    "AgentCreated",
                    f"created agent {template.name} (dependencies: "
                    f"{', '.join(deps[template.name]) or 'none'})",
                )
            )
            active.add(template.name)
    if plan.create and start_time is None:
        start_time = now

    # Pause or stop what runs; resume what the session no longer holds.
    for name, agent in observed.items():
        if phases[name] in (AgentPhase.SUCCEEDED, AgentPhase.FAILED):
            continue
        want = spec.suspend or stop_all
        if agent.spec.suspend != want:
            plan.set_suspend[agent_name(agent)] = want

    # Each running agent's share of the rate and of what is left of the budget.
    sharing = [n for n in active if n in observed] + [c["spec"]["name"] for c in plan.create]
    if sharing:
        rpm = max(1, spec.limits.requests_per_minute // len(sharing))
        remaining = None if limit is None else max(0, limit - usage.total)
        for name in sharing:
            used = _usage(observed[name]).total if name in observed else 0
            tokens = None if remaining is None else used + remaining // len(sharing)
            share = AgentLimits(requests_per_minute=rpm, max_tokens=tokens)
            if name in observed:
                plan.shares[agent_name(observed[name])] = share
            else:
                obj = next(c for c in plan.create if c["spec"]["name"] == name)
                plan.shares[obj["metadata"]["name"]] = share

    # Members and counts.
    members: list[Member] = []
    counts = AgentCounts(total=len(templates))
    for t in spec.agents:
        member_agent = observed.get(t.name)
        created = next((c for c in plan.create if c["spec"]["name"] == t.name), None)
        if member_agent is not None:
            mphase = MemberPhase(phases[t.name].value)
            run = member_agent.status.run if member_agent.status else None
            progress = run.progress if run and run.progress else f"0/{len(t.tasks)}"
            obj_name: str | None = agent_name(member_agent)
        elif t.name in skipped:
            mphase, progress, obj_name = MemberPhase.SKIPPED, f"0/{len(t.tasks)}", None
        else:
            mphase = MemberPhase.PENDING if created else MemberPhase.WAITING
            progress = f"0/{len(t.tasks)}"
            obj_name = created["metadata"]["name"] if created else None
        ws = result_of(member_agent)
        members.append(
            Member(
                name=t.name,
                phase=mphase,
                progress=progress,
                agent=obj_name,
                result=ws.result if ws else None,
            )
        )
        if mphase in (MemberPhase.WAITING, MemberPhase.PENDING, MemberPhase.SUSPENDED):
            counts.pending += 1
        elif mphase == MemberPhase.RUNNING:
            counts.running += 1
        elif mphase == MemberPhase.SUCCEEDED:
            counts.succeeded += 1
        elif mphase == MemberPhase.FAILED:
            counts.failed += 1
        elif mphase == MemberPhase.SKIPPED:
            counts.skipped += 1
    total_tasks = sum(len(t.tasks) for t in spec.agents)
    done_tasks = sum(_tasks_done(a) for a in observed.values())

    # Phase and conditions.
    all_done = all(
        m.phase in (MemberPhase.SUCCEEDED, MemberPhase.FAILED, MemberPhase.SKIPPED) for m in members
    )
    still_active = any(m.phase in (MemberPhase.PENDING, MemberPhase.RUNNING) for m in members)
    phase: SessionPhase
    if finished_before and prev.phase is not None:
        phase = prev.phase
        reason = next(
            (c.reason for c in prev.conditions or [] if c.type == "Failed" and c.status == "True"),
            "AgentFailed",
        )
        message = prev.message or ""
    elif deadline_exceeded:
        phase, reason = SessionPhase.FAILED, "DeadlineExceeded"
        message = (
            f"the session ran longer than activeDeadlineSeconds ({deadline}s); agents were stopped"
        )
    elif fail_fast:
        phase, reason = SessionPhase.FAILED, "AgentFailed"
        message = (
            f"agent {sorted(failed)[0]} failed and failurePolicy is FailFast; "
            "the others were stopped"
        )
    elif all_done:
        phase = (
            SessionPhase.SUCCEEDED
            if counts.failed == 0 and counts.skipped == 0
            else SessionPhase.FAILED
        )
        reason = "AllAgentsSucceeded" if phase == SessionPhase.SUCCEEDED else "AgentFailed"
        message = (
            f"{counts.succeeded}/{counts.total} agents succeeded"
            + (f", {counts.failed} failed: {', '.join(sorted(failed))}" if counts.failed else "")
            + (f", {counts.skipped} skipped" if counts.skipped else "")
        )
    elif budget_exceeded and not still_active:
        phase, reason = SessionPhase.FAILED, "BudgetExceeded"
        message = f"the token budget ({limit}) is spent: {usage.total} tokens used"
    elif spec.suspend:
        phase, reason, message = SessionPhase.SUSPENDED, "Suspended", "suspended: no agent runs"
    elif observed or plan.create:
        phase, reason = SessionPhase.RUNNING, "AgentsRunning"
        message = f"{counts.running} running, {counts.succeeded}/{counts.total} succeeded"
    else:
        phase, reason, message = SessionPhase.PENDING, "Waiting", "no agent started yet"

    terminal = phase in TERMINAL
    completion = prev.completion_time or (now if terminal else None)
    conditions = [
        cond("Ready", True, "Reconciled", "the spec is valid"),
        cond(
            "Progressing",
            phase == SessionPhase.RUNNING,
            "AgentsRunning" if phase == SessionPhase.RUNNING else phase.value,
            message,
        ),
        cond(
            "Succeeded",
            phase == SessionPhase.SUCCEEDED,
            "AllAgentsSucceeded" if phase == SessionPhase.SUCCEEDED else "NotSucceeded",
        ),
        cond(
            "Failed",
            phase == SessionPhase.FAILED,
            reason if phase == SessionPhase.FAILED else "NotFailed",
            message if phase == SessionPhase.FAILED else "",
        ),
        cond(
            "BudgetExceeded",
            budget_exceeded,
            "BudgetExceeded" if budget_exceeded else "WithinBudget",
            f"{usage.total} of {limit} tokens used" if limit else "no budget set",
        ),
        cond(
            "DeadlineExceeded",
            deadline_exceeded or reason == "DeadlineExceeded",
            "DeadlineExceeded" if deadline_exceeded else "WithinDeadline",
        ),
    ]
    plan.status = AgentSessionStatus(
        observed_generation=generation,
        phase=phase,
        progress=f"{done_tasks}/{total_tasks}",
        agents=counts,
        members=members,
        usage=usage,
        budget=Budget(
            limit_tokens=limit,
            used_tokens=usage.total,
            remaining_tokens=None if limit is None else max(0, limit - usage.total),
        ),
        start_time=start_time,
        completion_time=completion,
        message=truncate(message),
        result=prev.result,
        conditions=merge_conditions(prev.conditions, conditions),
    )
    if phase == SessionPhase.SUCCEEDED and prev.result is None and flows:
        plan.result_inputs = result_inputs(spec.agents, deps, observed)

    # Events on transitions only.
    prev_members = {m.name: m.phase for m in prev.members or []}
    for m in members:
        before = prev_members.get(m.name)
        if before != m.phase and m.phase in (
            MemberPhase.SUCCEEDED,
            MemberPhase.FAILED,
            MemberPhase.SKIPPED,
        ):
            kind = "Normal" if m.phase == MemberPhase.SUCCEEDED else "Warning"
            plan.events.append(
                (kind, f"Agent{m.phase.value}", f"agent {m.name} {m.phase.value.lower()}")
            )
    if prev.phase != phase:
        plan.events.append(
            (
                "Warning" if phase == SessionPhase.FAILED else "Normal",
                f"Session{phase.value}",
                message,
            )
        )

    # When to look again even if nothing changes.
    waits = [2.0] if awaiting else []
    if deadline and start_time and not terminal:
        waits.append((start_time + timedelta(seconds=deadline) - now).total_seconds())
    if terminal and spec.ttl_seconds_after_finished is not None and completion is not None:
        expiry = completion + timedelta(seconds=spec.ttl_seconds_after_finished)
        if now >= expiry:
            plan.delete_pods = True
        else:
            waits.append((expiry - now).total_seconds())
    plan.requeue_after = max(0.5, min(waits)) if waits else None
    return plan


def results_flow(workspace: WorkspaceSpec | None) -> bool:
    """Results travel as git commits unless the agents share one volume."""
    return workspace is None or workspace.persistent_volume_claim is None


def result_inputs(
    templates: list[AgentTemplate], deps: dict[str, list[str]], observed: dict[str, Agent]
) -> list[ResultInput]:
    """The results of the agents nothing depends on, in spec order: the session's result."""
    depended_on = {d for ds in deps.values() for d in ds}
    inputs = []
    for t in templates:
        ws = result_of(observed.get(t.name))
        if t.name in depended_on or ws is None or ws.result is None or ws.base is None:
            continue
        inputs.append(
            ResultInput(
                agent=t.name,
                object_name=agent_name(observed[t.name]),
                commit=ws.result.commit,
                base=ws.base,
            )
        )
    return inputs


def agent_name(agent: Agent) -> str:
    return str(agent.metadata.name)
