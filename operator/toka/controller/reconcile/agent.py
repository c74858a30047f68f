"""The agent plan: from the Agent and its observed pods, the next pod and the operator's status.

Attempts are pods named `<agent>-<n>`; the number of failed attempts is
counted from the pods observed, so a restarted operator counts the same.
The operator writes only its own status fields, never `status.run`. Whatever
the I/O layer learned by acting (a child's name held by another object) comes
back as input to the next plan, never as an edit of this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from toka.api.conditions import (
    Condition,
    ConditionStamp,
    ConditionStatus,
    drop_conditions,
    merge_conditions,
    truncate,
)
from toka.api.models import (
    MCP_CONNECTED,
    MCP_CONNECTING,
    Agent,
    AgentLimits,
    AgentPhase,
    AgentStatus,
    McpServer,
    McpServerStatus,
    RunStatus,
    SpawnResult,
    TaskState,
    WorkspaceState,
    WorkspaceStatus,
)
from toka.contract import AGENT_CONTAINER, KERNEL_CONTAINER
from toka.controller.builders.meta import name_of
from toka.controller.builders.names import attempt_of, pod_name
from toka.controller.reconcile.spawn import NO_CONFLICTS, carved_tokens, compute_spawn_plan

JSON = dict[str, Any]
PULL_ERRORS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName")
CONFIG_ERRORS = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")
# Workspace failures that another attempt would meet again: the Agent fails at once.
PERMANENT_WORKSPACE_FAILURES = (
    "MergeConflict",
    "GitAuthFailed",
    "ResultTooLarge",
    "BaseMismatch",
    "InvalidWorkspace",
)
WARN_REASONS = (
    "ImagePullBackOff",
    "SecretNotFound",
    "SecretKeyNotFound",
    "ConfigMapNotFound",
    "ConfigMapKeyNotFound",
    *CONFIG_ERRORS,
)
Event = tuple[str, str, str]
TERMINAL = (AgentPhase.SUCCEEDED, AgentPhase.FAILED)
# Conditions about the pod that runs: when none runs (finished, suspended), they no longer apply.
POD_CONDITIONS = ("KernelReady", "McpServersReady")


@dataclass
class AgentPlan:
    create_attempt: int | None = None
    create_children: list[JSON] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    status: AgentStatus = field(default_factory=AgentStatus)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass(frozen=True)
class Attempts:
    """The Agent's pods by attempt number, as observed; the current one is the latest."""

    by_number: dict[int, JSON]
    number: int
    current: JSON | None
    pod_phase: str
    failed: int


@dataclass
class PodStep:
    """What the pods call for next, and the phase, message and conditions that follow."""

    phase: AgentPhase
    message: str
    conditions: list[Condition] = field(default_factory=list)
    create_attempt: int | None = None
    delete_pods: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def _statuses(pod: JSON) -> list[JSON]:
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])


def _container(pod: JSON, name: str) -> JSON:
    return next((c for c in _statuses(pod) if c.get("name") == name), {})


def _pod_phase(pod: JSON | None) -> str | None:
    return ((pod or {}).get("status") or {}).get("phase")


def _waiting_problem(pod: JSON) -> tuple[str, str] | None:
    """(reason, message) for a container that cannot start, named for a person to act on."""
    spec = pod.get("spec") or {}
    images = {
        c["name"]: c.get("image", "")
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
    }
    for c in _statuses(pod):
        waiting = (c.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        if reason in PULL_ERRORS:
            return (
                "ImagePullBackOff",
                f"container {c['name']}: image {images.get(c['name'], '?')!r} cannot be pulled "
                f"({reason}): {waiting.get('message', '')}. Fix the image (spec.image or "
                "spec.toolsImage) or the registry credentials (podTemplate.imagePullSecrets).",
            )
        if reason in CONFIG_ERRORS:
            return (reason, f"container {c['name']}: {waiting.get('message', reason)}")
    return None


def _failure(pod: JSON) -> tuple[str, str]:
    """Why an attempt's pod failed: the reason a person can act on, and the details."""
    st = pod.get("status") or {}
    if st.get("reason") == "DeadlineExceeded":
        return "DeadlineExceeded", (
            f"pod {pod['metadata']['name']} ran longer than timeoutSeconds "
            f"({(pod.get('spec') or {}).get('activeDeadlineSeconds')}s)"
        )
    for c in _statuses(pod):
        term = (c.get("state") or {}).get("terminated") or {}
        if term.get("reason") == "OOMKilled":
            return "OOMKilled", (
                f"container {c['name']} ran out of memory: raise spec.resources.limits.memory"
            )
    agent = (_container(pod, AGENT_CONTAINER).get("state") or {}).get("terminated") or {}
    if agent:
        return "AgentFailed", f"the agent exited with code {agent.get('exitCode')}"
    return st.get("reason") or "PodFailed", st.get(
        "message"
    ) or f"pod {pod['metadata']['name']} failed"


def compute_agent_plan(
    agent: Agent,
    pods: Sequence[JSON],
    now: datetime,
    *,
    share: AgentLimits | None = None,
    missing: tuple[str, str] | None = None,
    stall_after: timedelta = timedelta(seconds=60),
    conflicts: Mapping[str, str] = NO_CONFLICTS,
) -> AgentPlan:
    """The next pod, children and status of `agent`, from its pods as observed.

    `share` is the session's share of rate and budget for it; `missing` a Secret or
    ConfigMap its pod needs and cannot have; `conflicts` the children whose names
    another object holds (child object name -> why), refused rather than created.
    """
    prev = agent.status or AgentStatus()
    stamp = ConditionStamp(now, agent.metadata.generation)
    attempts = observe_attempts(name_of(agent), pods)
    step = compute_pod_step(agent, attempts, stamp, missing=missing, stall_after=stall_after)
    base = share or agent.spec.limits
    spawn = compute_spawn_plan(agent, _effective_limits(base, prev), conflicts)
    conditions = [*step.conditions, *compute_spawn_conditions(spawn.results, stamp)]
    return AgentPlan(
        create_attempt=step.create_attempt,
        create_children=spawn.create,
        delete_pods=step.delete_pods,
        status=compute_agent_status(
            agent,
            attempts,
            step,
            conditions,
            limits=_effective_limits(base, prev, spawn.results),
            spawn_results=spawn.results,
            now=now,
        ),
        events=[
            *step.events,
            *spawn.events,
            *compute_agent_events(prev, step.phase, step.message, conditions),
        ],
        requeue_after=step.requeue_after,
    )


def observe_attempts(name: str, pods: Sequence[JSON]) -> Attempts:
    """The pods named `<name>-<n>`: a restarted operator counts the same attempts."""
    by_number = {a: p for p in pods if (a := attempt_of(p["metadata"]["name"], name)) is not None}
    number = max(by_number, default=0)
    current = by_number.get(number)
    return Attempts(
        by_number=by_number,
        number=number,
        current=current,
        pod_phase=_pod_phase(current) or "Pending",
        failed=sum(1 for p in by_number.values() if _pod_phase(p) == "Failed"),
    )


def compute_pod_step(
    agent: Agent,
    attempts: Attempts,
    stamp: ConditionStamp,
    *,
    missing: tuple[str, str] | None,
    stall_after: timedelta,
) -> PodStep:
    """The Agent's phase from its latest pod, and what to do about the pods."""
    prev = agent.status or AgentStatus()
    phase = prev.phase or AgentPhase.PENDING
    current, pod_phase = attempts.current, attempts.pod_phase
    if phase in TERMINAL:
        return PodStep(phase, prev.message or "")  # nothing more to run
    if agent.spec.suspend:
        return compute_suspended(attempts, stamp)
    if current is not None:
        failure = _workspace_failure(prev)
        if current["metadata"].get("deletionTimestamp"):
            message = f"waiting for pod {current['metadata']['name']} to terminate"
            return PodStep(phase, message, requeue_after=1)
        if failure is not None and (
            pod_phase == "Succeeded"
            or (pod_phase == "Failed" and failure.reason in PERMANENT_WORKSPACE_FAILURES)
        ):
            return compute_workspace_failed(failure, stamp)
        if pod_phase == "Succeeded":
            return compute_succeeded(attempts.number, stamp)
        if pod_phase == "Failed" and attempts.failed > agent.spec.backoff_limit:
            return compute_backoff_exceeded(agent, attempts.failed, current, stamp)
    if missing is not None and (current is None or pod_phase == "Failed"):
        return compute_blocked(missing, stamp)
    if current is None or pod_phase == "Failed":
        return compute_next_attempt(prev, attempts, stamp)
    return compute_running(agent, attempts.number, current, stamp, stall_after)


def compute_suspended(attempts: Attempts, stamp: ConditionStamp) -> PodStep:
    """Suspended: the live pods go (a terminating one is already going)."""
    message = "suspended: no pod runs"
    return PodStep(
        AgentPhase.SUSPENDED,
        message,
        [stamp.make("Progressing", False, "Suspended", message)],
        delete_pods=[
            p["metadata"]["name"]
            for p in attempts.by_number.values()
            if _pod_phase(p) in (None, "Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")
        ],
    )


def compute_workspace_failed(failure: WorkspaceStatus, stamp: ConditionStamp) -> PodStep:
    """Failed for a workspace failure another attempt would meet again, or for work done
    but not delivered."""
    reason = failure.reason or "WorkspaceFailed"
    message = f"{reason}: {failure.message}"
    return PodStep(
        AgentPhase.FAILED,
        message,
        [
            stamp.make("Failed", True, reason, message),
            stamp.make("Succeeded", False, reason),
            stamp.make("Progressing", False, "Failed"),
        ],
    )


def compute_succeeded(attempt: int, stamp: ConditionStamp) -> PodStep:
    message = f"all tasks done in attempt {attempt}"
    return PodStep(
        AgentPhase.SUCCEEDED,
        message,
        [
            stamp.make("Succeeded", True, "AllTasksSucceeded", message),
            stamp.make("Failed", False, "Succeeded"),
            stamp.make("Progressing", False, "Succeeded"),
        ],
    )


def compute_backoff_exceeded(
    agent: Agent, failed: int, current: JSON, stamp: ConditionStamp
) -> PodStep:
    """Failed once more attempts failed than `backoffLimit` allows: the last one says why."""
    limit = agent.spec.backoff_limit
    reason, detail = _failure(current)
    last_error = _last_task_error(agent.status.run if agent.status else None)
    message = f"{failed} attempts failed (backoffLimit {limit}); last: {detail}" + (
        f"; task error: {last_error}" if last_error else ""
    )
    return PodStep(
        AgentPhase.FAILED,
        message,
        [
            stamp.make("Failed", True, "BackoffLimitExceeded" if failed > 1 else reason, message),
            stamp.make("Succeeded", False, reason),
            stamp.make("Progressing", False, "Failed"),
        ],
    )


def compute_blocked(missing: tuple[str, str], stamp: ConditionStamp) -> PodStep:
    """No pod while a Secret or ConfigMap it needs is missing: it would not start."""
    reason, message = missing
    return PodStep(
        AgentPhase.PENDING,
        message,
        [
            stamp.make("PodScheduled", False, reason, message),
            stamp.make("Progressing", False, reason, message),
        ],
        requeue_after=5,
    )


def compute_next_attempt(prev: AgentStatus, attempts: Attempts, stamp: ConditionStamp) -> PodStep:
    """The next attempt's pod, after none or a failed one."""
    # Never reuse a number: a pod deleted on suspend leaves only status.attempts.
    number = max(attempts.number, prev.attempts or 0) + 1
    events: list[Event] = []
    if attempts.current is not None:
        reason, detail = _failure(attempts.current)
        events.append(
            (
                "Warning",
                reason,
                f"attempt {attempts.number} failed: {detail}; starting attempt {number}",
            )
        )
    events.append(("Normal", "PodCreated", f"starting attempt {number}"))
    message = f"starting attempt {number}"
    return PodStep(
        AgentPhase.PENDING,
        message,
        [stamp.make("PodScheduled", False, "PodCreated", message)],
        create_attempt=number,
        events=events,
    )


def compute_running(
    agent: Agent, attempt: int, current: JSON, stamp: ConditionStamp, stall_after: timedelta
) -> PodStep:
    """A pod that runs or is starting: its scheduling, its kernel, and what the kernel says."""
    run = agent.status.run if agent.status else None
    pod_phase = _pod_phase(current) or "Pending"
    kernel = _container(current, KERNEL_CONTAINER)
    kernel_ready = bool(kernel.get("started")) and "running" in (kernel.get("state") or {})
    problem = _waiting_problem(current)
    if problem:
        step = PodStep(AgentPhase.PENDING, problem[1])
        kernel_condition = stamp.make("KernelReady", False, problem[0], problem[1])
    else:
        phase = AgentPhase.RUNNING if pod_phase == "Running" else AgentPhase.PENDING
        doing = (
            f"working on {run.current_task} ({run.progress})"
            if run and run.current_task
            else pod_phase.lower()
        )
        step = PodStep(phase, f"attempt {attempt}: {doing}")
        reason = "KernelStarted" if kernel_ready else "KernelStarting"
        kernel_condition = stamp.make("KernelReady", kernel_ready, reason)
    step.conditions += [compute_pod_scheduled(current, stamp), kernel_condition]
    running = step.phase == AgentPhase.RUNNING
    if running and kernel_ready:
        since = (run.last_heartbeat_time if run else None) or _started_at(kernel) or stamp.now
        step.conditions.append(compute_stalled(since, stall_after, stamp))
        step.requeue_after = stall_after.total_seconds()
    if running and agent.spec.mcp_servers:
        status, reason, detail = mcp_servers_readiness(
            agent.spec.mcp_servers, run.mcp_servers if run else None
        )
        step.conditions.append(stamp.make("McpServersReady", status, reason, detail))
    step.conditions.append(
        stamp.make("Progressing", running, "Running" if running else "Starting", step.message)
    )
    return step


def compute_pod_scheduled(pod: JSON, stamp: ConditionStamp) -> Condition:
    scheduled = any(
        c.get("type") == "PodScheduled" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )
    return stamp.make(
        "PodScheduled",
        scheduled,
        "Scheduled" if scheduled else "Unschedulable",
        f"pod {pod['metadata']['name']}"
        + (f" on node {(pod.get('spec') or {}).get('nodeName')}" if scheduled else ""),
    )


def compute_stalled(since: datetime, stall_after: timedelta, stamp: ConditionStamp) -> Condition:
    """Stalled when the running kernel has not reported for longer than `stall_after`."""
    silent = stamp.now - since
    if silent > stall_after:
        message = f"no report from the kernel for {int(silent.total_seconds())}s"
        return stamp.make("Stalled", True, "NoHeartbeat", message)
    return stamp.make("Stalled", False, "Heartbeat")


def compute_spawn_conditions(results: list[SpawnResult], stamp: ConditionStamp) -> list[Condition]:
    """SpawnRefused, once the agent has asked to spawn: the last refusal's reason."""
    if not results:
        return []
    refused = [r for r in results if not r.accepted]
    reason = (refused[-1].reason or "Refused").split(":", 1)[0] if refused else "NoRefusals"
    message = f"{len(refused)} of {len(results)} spawn requests refused" + (
        f"; last: {refused[-1].reason}" if refused else ""
    )
    return [stamp.make("SpawnRefused", bool(refused), reason, message)]


def compute_agent_status(
    agent: Agent,
    attempts: Attempts,
    step: PodStep,
    conditions: list[Condition],
    *,
    limits: AgentLimits | None,
    spawn_results: list[SpawnResult],
    now: datetime,
) -> AgentStatus:
    """The operator's part of the status (never `run`, the kernel's)."""
    prev = agent.status or AgentStatus()
    pod: str | None = prev.pod_name
    if step.create_attempt:
        pod = pod_name(name_of(agent), step.create_attempt)
    elif attempts.current:
        pod = attempts.current["metadata"]["name"]
    stale = compute_stale_conditions(step.phase, conditions)
    return AgentStatus(
        observed_generation=agent.metadata.generation,
        phase=step.phase,
        conditions=merge_conditions(drop_conditions(prev.conditions, stale), conditions),
        limits=limits,
        pod_name=pod,
        attempts=step.create_attempt or max(attempts.number, prev.attempts or 0) or None,
        spawn_results=spawn_results or None,
        start_time=prev.start_time or (now if step.create_attempt else None),
        completion_time=prev.completion_time or (now if step.phase in TERMINAL else None),
        message=truncate(step.message),
    )


def compute_stale_conditions(phase: AgentPhase, conditions: list[Condition]) -> set[str]:
    """Condition types that no longer apply: `Stalled` whenever it was not computed now
    (only a running kernel is watched for silence), and the pod's conditions once no pod
    runs (the Agent finished or is suspended)."""
    stale = {"Stalled"} - {c.type for c in conditions}
    if phase in (*TERMINAL, AgentPhase.SUSPENDED):
        stale.update(POD_CONDITIONS)
    return stale


def compute_agent_events(
    prev: AgentStatus, phase: AgentPhase, message: str, conditions: list[Condition]
) -> list[Event]:
    """Events on transitions only: the phase, and conditions a person should act on."""
    events: list[Event] = []
    # A new Agent's first Pending says nothing PodCreated does not: no Event for it.
    if prev.phase != phase and not (prev.phase is None and phase == AgentPhase.PENDING):
        kind = "Warning" if phase == AgentPhase.FAILED else "Normal"
        events.append((kind, f"Agent{phase.value}", message))
    before = {c.type: (c.status, c.reason) for c in prev.conditions or []}
    for c in conditions:
        bad = (
            c.type in ("KernelReady", "PodScheduled")
            and c.status == "False"
            and c.reason in WARN_REASONS
        ) or (c.type == "Stalled" and c.status == "True")
        bad = bad or (c.type == "McpServersReady" and c.status == "False")
        if bad and before.get(c.type) != (c.status, c.reason):
            events.append(("Warning", c.reason, c.message))
    return events


def _workspace_failure(status: AgentStatus) -> WorkspaceStatus | None:
    ws = status.run.workspace if status.run else None
    return ws if ws is not None and ws.state == WorkspaceState.FAILED else None


def _last_task_error(run: RunStatus | None) -> str | None:
    tasks = run.tasks if run else None
    return next(
        (t.error for t in reversed(tasks or []) if t.state == TaskState.FAILED and t.error), None
    )


def _effective_limits(
    base: AgentLimits | None, prev: AgentStatus, results: list[SpawnResult] | None = None
) -> AgentLimits | None:
    """The agent's share (or its spec's limits) less the tokens given to its children.

    With neither known (a restarted operator before the session's first
    reconcile), the limits already written stay: they were carved then.
    """
    if base is None:
        return prev.limits
    results = prev.spawn_results if results is None else results
    if base.max_tokens is None:
        return base
    return base.model_copy(update={"max_tokens": max(0, base.max_tokens - carved_tokens(results))})


def _started_at(container: JSON) -> datetime | None:
    raw = ((container.get("state") or {}).get("running") or {}).get("startedAt")
    return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None


def mcp_servers_readiness(
    servers: list[McpServer], reported: list[McpServerStatus] | None
) -> tuple[ConditionStatus, str, str]:
    """McpServersReady from the kernel's report: the first failing server in spec order
    names the reason; a server not reported yet, or still connecting, leaves it Unknown."""
    by_name = {s.name: s for s in reported or []}
    waiting = []
    for server in servers:
        found = by_name.get(server.name)
        if found is None or (not found.ready and found.reason == MCP_CONNECTING):
            waiting.append(server.name)
        elif not found.ready:
            reason = found.reason or "NotReady"
            return (
                ConditionStatus.FALSE,
                reason,
                f"MCP server {server.name}: " + (found.message or reason),
            )
    if waiting:
        return (
            ConditionStatus.UNKNOWN,
            MCP_CONNECTING,
            f"the kernel has not connected to MCP server {', '.join(waiting)} yet",
        )
    offered = "; ".join(
        f"{s.name}: {', '.join(by_name[s.name].tools or []) or 'no tools granted'}" for s in servers
    )
    return ConditionStatus.TRUE, MCP_CONNECTED, f"tools offered: {offered}"
