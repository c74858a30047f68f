"""The session plan: from the spec and the observed Agents, what to create, stop and report.

Level-based: the plan is recomputed from scratch on every reconcile, so an
operator killed between any two writes recomputes the same plan and, with
deterministic names, creates nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from toka.api.conditions import (
    Condition,
    ConditionStamp,
    find_condition,
    merge_conditions,
    truncate,
)
from toka.api.models import (
    Agent,
    AgentCounts,
    AgentLimits,
    AgentPhase,
    AgentSession,
    AgentSessionSpec,
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
from toka.controller.builders.meta import name_of
from toka.controller.reconcile.dag import dependents, find_cycle

JSON = dict[str, Any]
Event = tuple[str, str, str]
TERMINAL = (SessionPhase.SUCCEEDED, SessionPhase.FAILED)
FINISHED_MEMBERS = (MemberPhase.SUCCEEDED, MemberPhase.FAILED, MemberPhase.SKIPPED)
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
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    # Set once the session succeeded and has no result yet: the I/O layer merges these.
    result_inputs: list[ResultInput] = field(default_factory=list)


def result_of(agent: Agent | None) -> WorkspaceStatus | None:
    """An Agent's reported workspace, when it holds a result."""
    run = agent.status.run if agent and agent.status else None
    ws = run.workspace if run else None
    return ws if ws is not None and ws.result is not None and ws.base is not None else None


def handoff_for(template: AgentTemplate, observed: Mapping[str, Agent]) -> list[HandoffEntry]:
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


@dataclass(frozen=True)
class SessionFacts:
    """What the observed Agents and the clock say, before anything is decided."""

    phases: dict[str, AgentPhase]
    succeeded: set[str]
    failed: set[str]
    active: set[str]
    skipped: set[str]
    usage: Usage
    start_time: datetime | None
    budget_exceeded: bool
    deadline_exceeded: bool
    fail_fast: bool
    finished_before: bool
    # Succeeded agents whose result has not been reported yet, where results flow.
    awaiting: set[str]

    @property
    def stop_all(self) -> bool:
        return self.deadline_exceeded or self.fail_fast or self.finished_before


def compute_session_plan(
    session: AgentSession, observed: Mapping[str, Agent], now: datetime
) -> SessionPlan:
    """`observed` maps the session's agent names (not object names) to their Agents."""
    spec = session.spec
    prev = session.status or AgentSessionStatus()
    stamp = ConditionStamp(now, session.metadata.generation)
    deps = {a.name: list(a.depends_on or []) for a in spec.agents}
    cycle = find_cycle(deps)
    if cycle:
        return compute_cycle_failure(prev, cycle, stamp)
    facts = observe_agents(session, observed, deps, now)
    plan = SessionPlan()
    plan.create, plan.events = compute_creations(session, observed, deps, facts)
    start_time = facts.start_time or (now if plan.create else None)
    plan.set_suspend = compute_suspends(spec, observed, facts)
    plan.shares = compute_shares(spec, observed, facts, plan.create)
    members = [compute_member(t, observed, facts, plan.create) for t in spec.agents]
    counts = count_members(members, total=len({t.name for t in spec.agents}))
    phase, reason, message = compute_session_phase(
        session, facts, counts, members, running=bool(observed or plan.create)
    )
    completion = prev.completion_time or (now if phase in TERMINAL else None)
    plan.status = AgentSessionStatus(
        observed_generation=session.metadata.generation,
        phase=phase,
        progress=f"{sum(_tasks_done(a) for a in observed.values())}/"
        f"{sum(len(t.tasks) for t in spec.agents)}",
        agents=counts,
        members=members,
        usage=facts.usage,
        budget=compute_budget(spec.limits.max_total_tokens, facts.usage),
        start_time=start_time,
        completion_time=completion,
        message=truncate(message),
        result=prev.result,
        conditions=merge_conditions(
            prev.conditions,
            compute_session_conditions(spec, facts, stamp, phase, reason, message),
        ),
    )
    if phase == SessionPhase.SUCCEEDED and prev.result is None and results_flow(spec.workspace):
        plan.result_inputs = result_inputs(spec.agents, deps, observed)
    plan.events += compute_session_events(prev, members, phase, message)
    plan.delete_pods, plan.requeue_after = compute_requeue(
        spec, facts, phase, start_time, completion, now
    )
    return plan


def compute_cycle_failure(
    prev: AgentSessionStatus, cycle: list[str], stamp: ConditionStamp
) -> SessionPlan:
    """A dependency cycle: the session fails before any agent is created, naming it."""
    message = f"dependency cycle: {' → '.join(cycle)}; no agent was created"
    plan = SessionPlan()
    plan.status = prev.model_copy(
        update={
            "observed_generation": stamp.generation,
            "phase": SessionPhase.FAILED,
            "message": message,
            "conditions": merge_conditions(
                prev.conditions,
                [
                    stamp.make("Ready", False, "InvalidSpec", message),
                    stamp.make("Progressing", False, "InvalidSpec", message),
                    stamp.make("Failed", True, "InvalidSpec", message),
                    stamp.make("Succeeded", False, "InvalidSpec"),
                ],
            ),
        }
    )
    if prev.phase != SessionPhase.FAILED:
        plan.events.append(("Warning", "InvalidSpec", message))
    return plan


def observe_agents(
    session: AgentSession,
    observed: Mapping[str, Agent],
    deps: Mapping[str, list[str]],
    now: datetime,
) -> SessionFacts:
    spec = session.spec
    prev = session.status or AgentSessionStatus()
    phases = {name: _agent_phase(a) for name, a in observed.items()}
    failed = {n for n, p in phases.items() if p == AgentPhase.FAILED}
    succeeded = {n for n, p in phases.items() if p == AgentPhase.SUCCEEDED}
    usage = Usage()
    for agent in observed.values():
        usage = usage + _usage(agent)
    limit = spec.limits.max_total_tokens
    start_time = prev.start_time or (now if observed else None)
    deadline = spec.limits.active_deadline_seconds
    flows = results_flow(spec.workspace)
    return SessionFacts(
        phases=phases,
        succeeded=succeeded,
        failed=failed,
        active={
            n
            for n, p in phases.items()
            if p in (AgentPhase.PENDING, AgentPhase.RUNNING) and not observed[n].spec.suspend
        },
        skipped=dependents(deps, failed) - set(observed),
        usage=usage,
        start_time=start_time,
        budget_exceeded=limit is not None and usage.total >= limit,
        deadline_exceeded=bool(
            deadline and start_time and now >= start_time + timedelta(seconds=deadline)
        ),
        fail_fast=spec.failure_policy == FailurePolicy.FAIL_FAST and bool(failed),
        finished_before=prev.phase in TERMINAL,
        awaiting={n for n in succeeded if flows and result_of(observed[n]) is None},
    )


def compute_creations(
    session: AgentSession,
    observed: Mapping[str, Agent],
    deps: Mapping[str, list[str]],
    facts: SessionFacts,
) -> tuple[list[JSON], list[Event]]:
    """Start what is ready: dependencies succeeded (and their results reported, where
    results flow), a free slot, nothing halting. Higher priority first."""
    spec = session.spec
    if facts.stop_all or facts.budget_exceeded or spec.suspend:
        return [], []
    ready = [
        t
        for t in spec.agents
        if t.name not in observed
        and t.name not in facts.skipped
        and all(d in facts.succeeded and d not in facts.awaiting for d in deps[t.name])
    ]
    ready.sort(key=lambda t: -t.priority)
    total = len({t.name for t in spec.agents})
    slots = (spec.limits.max_parallel_agents or total) - len(facts.active)
    create, events = [], []
    for template in ready[: max(0, slots)]:
        create.append(build_agent(session, template, handoff_for(template, observed)))
        events.append(
            (
                "Normal",
                "AgentCreated",
                f"created agent {template.name} (dependencies: "
                f"{', '.join(deps[template.name]) or 'none'})",
            )
        )
    return create, events


def compute_suspends(
    spec: AgentSessionSpec, observed: Mapping[str, Agent], facts: SessionFacts
) -> dict[str, bool]:
    """Pause or stop what runs; resume what the session no longer holds."""
    want = spec.suspend or facts.stop_all
    return {
        name_of(agent): want
        for name, agent in observed.items()
        if facts.phases[name] not in (AgentPhase.SUCCEEDED, AgentPhase.FAILED)
        and agent.spec.suspend != want
    }


def compute_shares(
    spec: AgentSessionSpec,
    observed: Mapping[str, Agent],
    facts: SessionFacts,
    create: list[JSON],
) -> dict[str, AgentLimits]:
    """Each running agent's share of the rate and of what is left of the budget, by
    object name."""
    sharing = [n for n in facts.active if n in observed] + [c["spec"]["name"] for c in create]
    if not sharing:
        return {}
    object_names = {c["spec"]["name"]: c["metadata"]["name"] for c in create}
    object_names.update((n, name_of(a)) for n, a in observed.items())
    limit = spec.limits.max_total_tokens
    rpm = max(1, spec.limits.requests_per_minute // len(sharing))
    remaining = None if limit is None else max(0, limit - facts.usage.total)
    shares = {}
    for name in sharing:
        used = _usage(observed[name]).total if name in observed else 0
        tokens = None if remaining is None else used + remaining // len(sharing)
        shares[object_names[name]] = AgentLimits(requests_per_minute=rpm, max_tokens=tokens)
    return shares


def compute_member(
    template: AgentTemplate,
    observed: Mapping[str, Agent],
    facts: SessionFacts,
    create: list[JSON],
) -> Member:
    """Where one of the session's agents is, as its status lists it."""
    agent = observed.get(template.name)
    created = next((c for c in create if c["spec"]["name"] == template.name), None)
    progress = f"0/{len(template.tasks)}"
    object_name: str | None
    if agent is not None:
        phase = MemberPhase(facts.phases[template.name].value)
        run = agent.status.run if agent.status else None
        progress = run.progress if run and run.progress else progress
        object_name = name_of(agent)
    elif template.name in facts.skipped:
        phase, object_name = MemberPhase.SKIPPED, None
    else:
        phase = MemberPhase.PENDING if created else MemberPhase.WAITING
        object_name = created["metadata"]["name"] if created else None
    ws = result_of(agent)
    return Member(
        name=template.name,
        phase=phase,
        progress=progress,
        agent=object_name,
        result=ws.result if ws else None,
    )


def count_members(members: list[Member], *, total: int) -> AgentCounts:
    counts = AgentCounts(total=total)
    for m in members:
        if m.phase in (MemberPhase.WAITING, MemberPhase.PENDING, MemberPhase.SUSPENDED):
            counts.pending += 1
        elif m.phase == MemberPhase.RUNNING:
            counts.running += 1
        elif m.phase == MemberPhase.SUCCEEDED:
            counts.succeeded += 1
        elif m.phase == MemberPhase.FAILED:
            counts.failed += 1
        elif m.phase == MemberPhase.SKIPPED:
            counts.skipped += 1
    return counts


def compute_session_phase(
    session: AgentSession,
    facts: SessionFacts,
    counts: AgentCounts,
    members: list[Member],
    *,
    running: bool,
) -> tuple[SessionPhase, str, str]:
    """(phase, reason, message): a finished session stays as it ended; otherwise the first
    of deadline, fail-fast, all done, budget spent, suspended, running, waiting."""
    prev = session.status or AgentSessionStatus()
    limits = session.spec.limits
    if facts.finished_before and prev.phase is not None:
        failed = find_condition(prev.conditions, "Failed")
        reason = failed.reason if failed and failed.status == "True" else "AgentFailed"
        return prev.phase, reason, prev.message or ""
    if facts.deadline_exceeded:
        deadline = limits.active_deadline_seconds
        message = f"the session ran longer than activeDeadlineSeconds ({deadline}s)"
        return SessionPhase.FAILED, "DeadlineExceeded", f"{message}; agents were stopped"
    if facts.fail_fast:
        first = sorted(facts.failed)[0]
        message = f"agent {first} failed and failurePolicy is FailFast; the others were stopped"
        return SessionPhase.FAILED, "AgentFailed", message
    if all(m.phase in FINISHED_MEMBERS for m in members):
        return compute_finished_phase(counts, facts.failed)
    still_active = any(m.phase in (MemberPhase.PENDING, MemberPhase.RUNNING) for m in members)
    if facts.budget_exceeded and not still_active:
        message = f"the token budget ({limits.max_total_tokens}) is spent"
        return SessionPhase.FAILED, "BudgetExceeded", f"{message}: {facts.usage.total} tokens used"
    if session.spec.suspend:
        return SessionPhase.SUSPENDED, "Suspended", "suspended: no agent runs"
    if running:
        message = f"{counts.running} running, {counts.succeeded}/{counts.total} succeeded"
        return SessionPhase.RUNNING, "AgentsRunning", message
    return SessionPhase.PENDING, "Waiting", "no agent started yet"


def compute_finished_phase(counts: AgentCounts, failed: set[str]) -> tuple[SessionPhase, str, str]:
    """Every agent succeeded, failed or was skipped: succeeded only if all succeeded."""
    message = f"{counts.succeeded}/{counts.total} agents succeeded"
    if counts.failed:
        message += f", {counts.failed} failed: {', '.join(sorted(failed))}"
    if counts.skipped:
        message += f", {counts.skipped} skipped"
    if counts.failed == 0 and counts.skipped == 0:
        return SessionPhase.SUCCEEDED, "AllAgentsSucceeded", message
    return SessionPhase.FAILED, "AgentFailed", message


def compute_session_conditions(
    spec: AgentSessionSpec,
    facts: SessionFacts,
    stamp: ConditionStamp,
    phase: SessionPhase,
    reason: str,
    message: str,
) -> list[Condition]:
    limit = spec.limits.max_total_tokens
    running = phase == SessionPhase.RUNNING
    succeeded = phase == SessionPhase.SUCCEEDED
    failed = phase == SessionPhase.FAILED
    over = facts.budget_exceeded
    return [
        stamp.make("Ready", True, "Reconciled", "the spec is valid"),
        stamp.make("Progressing", running, "AgentsRunning" if running else phase.value, message),
        stamp.make("Succeeded", succeeded, "AllAgentsSucceeded" if succeeded else "NotSucceeded"),
        stamp.make("Failed", failed, reason if failed else "NotFailed", message if failed else ""),
        stamp.make(
            "BudgetExceeded",
            over,
            "BudgetExceeded" if over else "WithinBudget",
            f"{facts.usage.total} of {limit} tokens used" if limit else "no budget set",
        ),
        stamp.make(
            "DeadlineExceeded",
            facts.deadline_exceeded or reason == "DeadlineExceeded",
            "DeadlineExceeded" if facts.deadline_exceeded else "WithinDeadline",
        ),
    ]


def compute_budget(limit: int | None, usage: Usage) -> Budget:
    return Budget(
        limit_tokens=limit,
        used_tokens=usage.total,
        remaining_tokens=None if limit is None else max(0, limit - usage.total),
    )


def compute_session_events(
    prev: AgentSessionStatus, members: list[Member], phase: SessionPhase, message: str
) -> list[Event]:
    """Events on transitions only: an agent finished or was skipped; the session's phase."""
    events: list[Event] = []
    before = {m.name: m.phase for m in prev.members or []}
    for m in members:
        if before.get(m.name) != m.phase and m.phase in FINISHED_MEMBERS:
            kind = "Normal" if m.phase == MemberPhase.SUCCEEDED else "Warning"
            events.append(
                (kind, f"Agent{m.phase.value}", f"agent {m.name} {m.phase.value.lower()}")
            )
    if prev.phase != phase:
        kind = "Warning" if phase == SessionPhase.FAILED else "Normal"
        events.append((kind, f"Session{phase.value}", message))
    return events


def compute_requeue(
    spec: AgentSessionSpec,
    facts: SessionFacts,
    phase: SessionPhase,
    start_time: datetime | None,
    completion: datetime | None,
    now: datetime,
) -> tuple[bool, float | None]:
    """(delete the pods now, when to look again even if nothing changes): for a result
    not reported yet, the deadline, and the time to live of a finished session's pods."""
    terminal = phase in TERMINAL
    deadline = spec.limits.active_deadline_seconds
    waits = [2.0] if facts.awaiting else []
    if deadline and start_time and not terminal:
        waits.append((start_time + timedelta(seconds=deadline) - now).total_seconds())
    delete_pods = False
    if terminal and spec.ttl_seconds_after_finished is not None and completion is not None:
        expiry = completion + timedelta(seconds=spec.ttl_seconds_after_finished)
        if now >= expiry:
            delete_pods = True
        else:
            waits.append((expiry - now).total_seconds())
    return delete_pods, max(0.5, min(waits)) if waits else None


def results_flow(workspace: WorkspaceSpec | None) -> bool:
    """Results travel as git commits unless the agents share one volume."""
    return workspace is None or workspace.persistent_volume_claim is None


def result_inputs(
    templates: list[AgentTemplate],
    deps: Mapping[str, list[str]],
    observed: Mapping[str, Agent],
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
                object_name=name_of(observed[t.name]),
                commit=ws.result.commit,
                base=ws.base,
            )
        )
    return inputs
