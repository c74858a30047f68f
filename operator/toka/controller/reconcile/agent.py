"""The agent plan: from the Agent and its observed pods, the next pod and the operator's status.

Attempts are pods named `<agent>-<n>`; the number of failed attempts is
counted from the pods observed, so a restarted operator counts the same.
The operator writes only its own status fields, never `status.run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from toka.api.conditions import (
    Condition,
    ConditionStatus,
    make_condition,
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
    SpawnResult,
    TaskState,
    WorkspaceState,
)
from toka.controller.builders.names import attempt_of
from toka.controller.reconcile.spawn import carved_tokens, compute_spawn_plan

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


@dataclass
class AgentPlan:
    create_attempt: int | None = None
    create_children: list[JSON] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    status: AgentStatus = field(default_factory=AgentStatus)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None


def _statuses(pod: JSON) -> list[JSON]:
    st = pod.get("status") or {}
    return list(st.get("initContainerStatuses") or []) + list(st.get("containerStatuses") or [])


def _container(pod: JSON, name: str) -> JSON:
    return next((c for c in _statuses(pod) if c.get("name") == name), {})


def _waiting_problem(pod: JSON) -> tuple[str, str] | None:
    """(reason, message) for a container that cannot start, named for a person to act on."""
    images = {
        c["name"]: c.get("image", "")
        for c in (pod["spec"].get("initContainers") or []) + pod["spec"].get("containers", [])
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
            f"({pod['spec'].get('activeDeadlineSeconds')}s)"
        )
    for c in _statuses(pod):
        term = (c.get("state") or {}).get("terminated") or {}
        if term.get("reason") == "OOMKilled":
            return "OOMKilled", (
                f"container {c['name']} ran out of memory: raise spec.resources.limits.memory"
            )
    agent = (_container(pod, "agent").get("state") or {}).get("terminated") or {}
    if agent:
        return "AgentFailed", f"the agent exited with code {agent.get('exitCode')}"
    return st.get("reason") or "PodFailed", st.get(
        "message"
    ) or f"pod {pod['metadata']['name']} failed"


def compute_agent_plan(
    body: JSON,
    pods: list[JSON],
    now: datetime,
    *,
    share: AgentLimits | None = None,
    missing: tuple[str, str] | None = None,
    stall_after: timedelta = timedelta(seconds=60),
) -> AgentPlan:
    agent = Agent.model_validate(body)
    meta = body["metadata"]
    name = meta["name"]
    generation = meta.get("generation")
    prev = agent.status or AgentStatus()
    spec = agent.spec
    plan = AgentPlan()

    def cond(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
        return make_condition(type_, ok, reason, message, now=now, generation=generation)

    by_attempt = {a: p for p in pods if (a := attempt_of(p["metadata"]["name"], name)) is not None}
    current_attempt = max(by_attempt, default=0)
    current = by_attempt.get(current_attempt)
    pod_phase = ((current or {}).get("status") or {}).get("phase", "Pending")
    failed_attempts = sum(
        1 for p in by_attempt.values() if (p.get("status") or {}).get("phase") == "Failed"
    )
    attempts = max(current_attempt, prev.attempts or 0)
    run = prev.run
    workspace_failure = (
        run.workspace
        if run and run.workspace and run.workspace.state == WorkspaceState.FAILED
        else None
    )
    conditions: list[Condition] = []
    phase = prev.phase or AgentPhase.PENDING
    message = prev.message or ""
    start_time, completion = prev.start_time, prev.completion_time

    if phase in (AgentPhase.SUCCEEDED, AgentPhase.FAILED):
        pass  # terminal: nothing more to run
    elif spec.suspend:
        plan.delete_pods = [
            p["metadata"]["name"]
            for p in by_attempt.values()
            if (p.get("status") or {}).get("phase") in (None, "Pending", "Running")
            and not p["metadata"].get("deletionTimestamp")
        ]
        phase, message = AgentPhase.SUSPENDED, "suspended: no pod runs"
        conditions += [cond("Progressing", False, "Suspended", message)]
    elif current is not None and current["metadata"].get("deletionTimestamp"):
        message = f"waiting for pod {current['metadata']['name']} to terminate"
        plan.requeue_after = 1
    elif (
        current is not None
        and workspace_failure is not None
        and (
            pod_phase == "Succeeded"
            or (pod_phase == "Failed" and workspace_failure.reason in PERMANENT_WORKSPACE_FAILURES)
        )
    ):
        reason = workspace_failure.reason or "WorkspaceFailed"
        phase, message = AgentPhase.FAILED, f"{reason}: {workspace_failure.message}"
        conditions += [
            cond("Failed", True, reason, message),
            cond("Succeeded", False, reason),
            cond("Progressing", False, "Failed"),
        ]
    elif current is not None and pod_phase == "Succeeded":
        phase, message = AgentPhase.SUCCEEDED, f"all tasks done in attempt {current_attempt}"
        conditions += [
            cond("Succeeded", True, "AllTasksSucceeded", message),
            cond("Failed", False, "Succeeded"),
            cond("Progressing", False, "Succeeded"),
        ]
    elif current is not None and pod_phase == "Failed" and failed_attempts > spec.backoff_limit:
        reason, detail = _failure(current)
        last_error = (
            next(
                (
                    t.error
                    for t in reversed(run.tasks or [])
                    if t.state == TaskState.FAILED and t.error
                ),
                None,
            )
            if run
            else None
        )
        message = (
            f"{failed_attempts} attempts failed (backoffLimit {spec.backoff_limit}); last: {detail}"
            + (f"; task error: {last_error}" if last_error else "")
        )
        phase = AgentPhase.FAILED
        conditions += [
            cond(
                "Failed", True, "BackoffLimitExceeded" if failed_attempts > 1 else reason, message
            ),
            cond("Succeeded", False, reason),
            cond("Progressing", False, "Failed"),
        ]
    elif missing is not None and (current is None or pod_phase == "Failed"):
        reason, message = missing
        phase = AgentPhase.PENDING
        conditions += [
            cond("PodScheduled", False, reason, message),
            cond("Progressing", False, reason, message),
        ]
        plan.requeue_after = 5
    elif current is None or pod_phase == "Failed":
        # Never reuse a number: a pod deleted on suspend leaves only status.attempts.
        plan.create_attempt = max(current_attempt, prev.attempts or 0) + 1
        attempts = plan.create_attempt
        if current is not None:
            reason, detail = _failure(current)
            plan.events.append(
                (
                    "Warning",
                    reason,
                    f"attempt {current_attempt} failed: {detail}; "
                    f"starting attempt {plan.create_attempt}",
                )
            )
        plan.events.append(("Normal", "PodCreated", f"starting attempt {plan.create_attempt}"))
        phase, message = AgentPhase.PENDING, f"starting attempt {plan.create_attempt}"
        conditions += [cond("PodScheduled", False, "PodCreated", message)]
        start_time = start_time or now
    else:
        pod_status = current.get("status") or {}
        scheduled = any(
            c.get("type") == "PodScheduled" and c.get("status") == "True"
            for c in pod_status.get("conditions") or []
        )
        conditions.append(
            cond(
                "PodScheduled",
                scheduled,
                "Scheduled" if scheduled else "Unschedulable",
                f"pod {current['metadata']['name']}"
                + (f" on node {current['spec'].get('nodeName')}" if scheduled else ""),
            )
        )
        problem = _waiting_problem(current)
        kernel = _container(current, "kernel")
        kernel_ready = bool(kernel.get("started")) and "running" in (kernel.get("state") or {})
        if problem:
            conditions.append(cond("KernelReady", False, problem[0], problem[1]))
            phase, message = AgentPhase.PENDING, problem[1]
        else:
            conditions.append(
                cond(
                    "KernelReady",
                    kernel_ready,
                    "KernelStarted" if kernel_ready else "KernelStarting",
                )
            )
            phase = AgentPhase.RUNNING if pod_phase == "Running" else AgentPhase.PENDING
            message = f"attempt {current_attempt}: " + (
                f"working on {run.current_task} ({run.progress})"
                if run and run.current_task
                else pod_phase.lower()
            )
        heartbeat = run.last_heartbeat_time if run else None
        if phase == AgentPhase.RUNNING and kernel_ready:
            since = heartbeat or _started_at(kernel) or now
            stalled = now - since > stall_after
            conditions.append(
                cond(
                    "Stalled",
                    stalled,
                    "NoHeartbeat" if stalled else "Heartbeat",
                    f"no report from the kernel for {int((now - since).total_seconds())}s"
                    if stalled
                    else "",
                )
            )
            plan.requeue_after = stall_after.total_seconds()
        if phase == AgentPhase.RUNNING and spec.mcp_servers:
            status, reason, detail = mcp_servers_readiness(
                spec.mcp_servers, run.mcp_servers if run else None
            )
            conditions.append(
                make_condition(
                    "McpServersReady", status, reason, detail, now=now, generation=generation
                )
            )
        conditions.append(
            cond(
                "Progressing",
                phase == AgentPhase.RUNNING,
                "Running" if phase == AgentPhase.RUNNING else "Starting",
                message,
            )
        )

    terminal = phase in (AgentPhase.SUCCEEDED, AgentPhase.FAILED)
    if terminal and completion is None:
        completion = now
    limits = _effective_limits(share or spec.limits, prev)
    spawn = compute_spawn_plan(body, limits)
    plan.create_children = spawn.create
    plan.events += spawn.events
    limits = _effective_limits(share or spec.limits, prev, spawn.results)
    refused = [r for r in spawn.results if not r.accepted]
    if spawn.results:
        conditions.append(
            cond(
                "SpawnRefused",
                bool(refused),
                (refused[-1].reason or "Refused").split(":", 1)[0] if refused else "NoRefusals",
                f"{len(refused)} of {len(spawn.results)} spawn requests refused"
                + (f"; last: {refused[-1].reason}" if refused else ""),
            )
        )
    plan.status = AgentStatus(
        observed_generation=generation,
        phase=phase,
        conditions=merge_conditions(prev.conditions, conditions),
        limits=limits,
        pod_name=(
            f"{name}-{plan.create_attempt}"
            if plan.create_attempt
            else (current["metadata"]["name"] if current else prev.pod_name)
        ),
        attempts=attempts or None,
        spawn_results=spawn.results or None,
        start_time=start_time,
        completion_time=completion,
        message=truncate(message),
    )
    # A new Agent's first Pending says nothing PodCreated does not: no Event for it.
    if prev.phase != phase and not (prev.phase is None and phase == AgentPhase.PENDING):
        kind = "Warning" if phase == AgentPhase.FAILED else "Normal"
        plan.events.append((kind, f"Agent{phase.value}", message))
    before = {c.type: (c.status, c.reason) for c in prev.conditions or []}
    for c in conditions:
        bad = (
            c.type in ("KernelReady", "PodScheduled")
            and c.status == "False"
            and c.reason in (*WARN_REASONS,)
        ) or (c.type == "Stalled" and c.status == "True")
        bad = bad or (c.type == "McpServersReady" and c.status == "False")
        if bad and before.get(c.type) != (c.status, c.reason):
            plan.events.append(("Warning", c.reason, c.message))
    return plan


def refuse_conflicting_child(plan: AgentPlan, child: str, why: str) -> None:
    """Turn an accepted spawn into a refusal when its name belongs to another object."""
    for i, result in enumerate(plan.status.spawn_results or []):
        if result.accepted and result.agent == child:
            (plan.status.spawn_results or [])[i] = SpawnResult(
                id=result.id, accepted=False, reason=f"NameConflict: {why}"
            )
            plan.events.append(("Warning", "SpawnRefused", f"spawn request {result.id}: {why}"))


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
