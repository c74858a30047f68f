"""What one reconcile of a session or an agent does: read, plan (pure), act (idempotent).

Each session and each Agent has a daemon that waits for a wake-up (an
event on it, its agents or its pods; a share changed; a deadline) and then
reconciles once; bursts of wake-ups coalesce into one reconcile. Nothing
here chains on status edges: every reconcile recomputes from spec and the
observed objects.

With tracing on, each reconcile is a span in the trace of its object's run:
the trace id derives from the object's uid (`tracing.trace_id_for`), as the
Agent's kernel derives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from toka.api.conditions import make_condition, merge_conditions
from toka.api.models import Agent, AgentLimits, AgentSession
from toka.controller.builders.meta import owned_by
from toka.controller.builders.names import (
    LABEL_SESSION,
    recording_configmap_name,
    result_configmap_name,
)
from toka.controller.builders.pod import (
    PodConfig,
    build_agent_configmap,
    build_agent_pod,
    build_role,
    build_role_binding,
    build_service_account,
    is_recording,
)
from toka.controller.io import (
    OwnershipConflict,
    delete_pod,
    ensure_created,
    list_owned,
    missing_reference,
    patch_status,
    post_event,
)
from toka.controller.metrics import AgentSample, OperatorMetrics, SessionSample
from toka.controller.reconcile.agent import compute_agent_plan, refuse_conflicting_child
from toka.controller.reconcile.session import SessionPlan, compute_session_plan
from toka.controller.results import ResultError, ensure_session_result
from toka.kube.client import (
    AGENTS,
    CONFIGMAPS,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    SESSIONS,
    ApiError,
    AsyncKube,
)
from toka.tracing import NO_TRACER, Span, Tracer, trace_id_for

JSON = dict[str, Any]
Key = tuple[str, str]
MAX_CACHED_MODELS = 2000
log = logging.getLogger("toka.operator")


@dataclass
class OperatorConfig:
    pod: PodConfig = field(default_factory=PodConfig)
    debounce_seconds: float = 0.05
    resync_seconds: float = 30.0
    stall_after_seconds: float = 60.0
    # Where the operator serves its Prometheus metrics (`host:port`); None: nowhere.
    metrics_addr: str | None = None


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class Runtime:
    def __init__(self, kube: AsyncKube, config: OperatorConfig, tracer: Tracer = NO_TRACER):
        self.kube = kube
        self.config = config
        self.tracer = tracer
        self._wakeups: dict[tuple[str, str, str], asyncio.Event] = {}
        self.shares: dict[Key, AgentLimits] = {}
        self._rbac_done: set[str] = set()
        self._denials_seen: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._models: dict[tuple[str, str], Agent] = {}
        self.metrics = OperatorMetrics()
        # Agents a session creates at once: concurrent, but not a thundering herd.
        self._create_slots = asyncio.Semaphore(16)

    # --- wake-ups -----------------------------------------------------------

    def _event(self, kind: str, ns: str, name: str) -> asyncio.Event:
        return self._wakeups.setdefault((kind, ns, name), asyncio.Event())

    def wake(self, kind: str, ns: str, name: str) -> None:
        self._event(kind, ns, name).set()

    def forget(self, kind: str, ns: str, name: str) -> None:
        self._wakeups.pop((kind, ns, name), None)
        self.metrics.forget(kind, ns, name)

    async def loop(
        self,
        kind: str,
        ns: str,
        name: str,
        stopped: Any,
        once: Callable[[], Awaitable[float | None]],
    ) -> None:
        """Reconcile, then sleep until woken (or the requeue time); until stopped."""
        event = self._event(kind, ns, name)
        try:
            while not stopped:
                event.clear()
                try:
                    requeue = await once()
                except OwnershipConflict as err:
                    log.warning("%s %s/%s: %s", kind, ns, name, err)
                    requeue = self.config.resync_seconds
                except (ApiError, OSError) as err:
                    log.warning("%s %s/%s reconcile failed, retrying: %s", kind, ns, name, err)
                    requeue = 1.0
                timeout = min(requeue or self.config.resync_seconds, self.config.resync_seconds)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await event.wait()
                await asyncio.sleep(self.config.debounce_seconds)
        finally:
            self.forget(kind, ns, name)

    # --- sessions -------------------------------------------------------------

    async def reconcile_session(self, body: JSON) -> float | None:
        with self._traced("AgentSession", body) as span:
            requeue = await self._reconcile_session(body)
            span.set("toka.requeue_after_seconds", requeue)
            return requeue

    async def _reconcile_session(self, body: JSON) -> float | None:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        agents = await list_owned(self.kube, AGENTS, ns, f"{LABEL_SESSION}={name}", uid)
        observed = {a["spec"]["name"]: self._agent_model(a) for a in agents}
        plan = compute_session_plan(body, observed, utcnow())
        if plan.result_inputs:
            await self._session_result(body, plan)

        async def create(manifest: JSON) -> None:
            async with self._create_slots:
                try:
                    await ensure_created(self.kube, AGENTS, manifest)
                except OwnershipConflict as err:
                    await post_event(self.kube, body, "Warning", "NameConflict", str(err))

        await asyncio.gather(*(create(m) for m in plan.create))
        for agent_name, suspend in plan.set_suspend.items():
            await self.kube.patch(AGENTS, agent_name, {"spec": {"suspend": suspend}}, ns)
        for agent_name, share in plan.shares.items():
            if self.shares.get((ns, agent_name)) != share:
                self.shares[(ns, agent_name)] = share
                self.wake("agent", ns, agent_name)
        if plan.delete_pods:
            for pod in (await self.kube.list(PODS, ns, label_selector=f"{LABEL_SESSION}={name}"))[
                "items"
            ]:
                await delete_pod(self.kube, pod["metadata"]["name"], ns)
        status = plan.status.wire()
        if status != _comparable(body.get("status")):
            await patch_status(self.kube, SESSIONS, name, ns, plan.status.merge_patch())
        self._post_events(body, plan.events)
        usage = plan.status.usage
        self.metrics.observe_session(
            ns,
            name,
            SessionSample(
                phase=plan.status.phase or "Pending",
                requests=usage.requests if usage else 0,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
            ),
        )
        return plan.requeue_after

    async def _session_result(self, body: JSON, plan: SessionPlan) -> None:
        """Merge the sink agents' results into the session's (once; retried until made)."""
        workspace = AgentSession.model_validate(body).spec.workspace
        now = utcnow()
        try:
            result = await ensure_session_result(
                self.kube,
                body,
                workspace,
                plan.result_inputs,
                plan.status.completion_time or now,
            )
            plan.status.result = result
            message = f"session result {result.commit[:12]} in ConfigMap {result.config_map}"
            ready = make_condition("ResultReady", True, "ResultMade", message, now=now)
            plan.events.append(("Normal", "ResultReady", message))
        except ResultError as err:
            ready = make_condition("ResultReady", False, "ResultFailed", str(err), now=now)
            plan.events.append(("Warning", "ResultFailed", str(err)))
            plan.requeue_after = 10
        plan.status.conditions = merge_conditions(plan.status.conditions, [ready])

    # --- agents ---------------------------------------------------------------

    async def reconcile_agent(
        self, body: JSON, pods_of: Callable[[Key], list[JSON]]
    ) -> float | None:
        with self._traced("Agent", body) as span:
            requeue = await self._reconcile_agent(body, pods_of)
            span.set("toka.requeue_after_seconds", requeue)
            return requeue

    async def _reconcile_agent(
        self, body: JSON, pods_of: Callable[[Key], list[JSON]]
    ) -> float | None:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        status = body.get("status") or {}
        terminal = status.get("phase") in ("Succeeded", "Failed")
        pods = [p for p in pods_of((ns, name)) if owned_by(p, uid)]
        live = any(
            (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in pods
        )
        # References matter only before a pod is made: no GETs while one runs.
        missing = (
            None
            if terminal or live
            else await missing_reference(self.kube, ns, body.get("spec") or {})
        )
        plan = compute_agent_plan(
            body,
            pods,
            utcnow(),
            share=self.shares.get((ns, name)),
            missing=missing,
            stall_after=timedelta(seconds=self.config.stall_after_seconds),
        )
        for pod in plan.delete_pods:
            await delete_pod(self.kube, pod, ns)
        if plan.create_attempt is not None:
            if uid not in self._rbac_done:
                # The pod's identity before the pod (a pod naming a missing ServiceAccount
                # is refused); the Role before its binding, which a least-privileged
                # operator may create only against an existing Role it could grant itself.
                await asyncio.gather(
                    ensure_created(self.kube, SERVICEACCOUNTS, build_service_account(body)),
                    ensure_created(self.kube, ROLES, build_role(body)),
                    ensure_created(
                        self.kube,
                        CONFIGMAPS,
                        build_agent_configmap(body, result_configmap_name(name)),
                    ),
                )
                await ensure_created(self.kube, ROLEBINDINGS, build_role_binding(body))
                self._rbac_done.add(uid)
            if is_recording(body):
                # Every pod, not once: `llm.record` may be turned on after the first pod.
                recording = build_agent_configmap(body, recording_configmap_name(name))
                await ensure_created(self.kube, CONFIGMAPS, recording)
            await ensure_created(
                self.kube, PODS, build_agent_pod(body, plan.create_attempt, self.config.pod)
            )
        # Children before the answers: a crash in between re-answers and adopts the child.
        for child in plan.create_children:
            try:
                await ensure_created(self.kube, AGENTS, child)
            except OwnershipConflict as err:
                refuse_conflicting_child(plan, child["metadata"]["name"], str(err))
        new_status = plan.status.wire()
        if new_status != _comparable(status):
            # Never `run`: that is the kernel's.
            await patch_status(
                self.kube, AGENTS, name, ns, plan.status.merge_patch(exclude=frozenset({"run"}))
            )
        self._post_events(body, plan.events)
        await self._report_denials(body)
        self.metrics.observe_agent(
            ns,
            name,
            AgentSample(
                phase=plan.status.phase or "Pending",
                session=(meta.get("labels") or {}).get(LABEL_SESSION),
                denials=_denials(body),
            ),
        )
        if terminal:
            self._rbac_done.discard(uid)
        return plan.requeue_after

    def _traced(self, kind: str, body: JSON) -> AbstractContextManager[Span]:
        """One reconcile's span, in the trace of the object's run."""
        meta = body["metadata"]
        return self.tracer.span(
            f"reconcile {kind}",
            {
                "k8s.namespace.name": meta["namespace"],
                "toka.kind": kind,
                "toka.name": meta["name"],
                "toka.uid": meta["uid"],
                "toka.generation": meta.get("generation"),
                "toka.phase": (body.get("status") or {}).get("phase"),
            },
            trace_id=trace_id_for(meta["uid"]),
        )

    def _agent_model(self, body: JSON) -> Agent:
        """Parsed once per resourceVersion: a session re-reads all its agents on each wake."""
        meta = body["metadata"]
        key = (meta["uid"], meta.get("resourceVersion", ""))
        model = self._models.get(key)
        if model is None:
            if len(self._models) > MAX_CACHED_MODELS:
                self._models.clear()
            model = self._models[key] = Agent.model_validate(body)
        return model

    def _post_events(self, body: JSON, events: list[tuple[str, str, str]]) -> None:
        """Events are best effort and never hold up a reconcile; posted in order."""
        if not events:
            return

        async def post() -> None:
            for kind, reason, message in events:
                await post_event(self.kube, body, kind, reason, message)

        task = asyncio.create_task(post())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _report_denials(self, body: JSON) -> None:
        """Kernels cannot write Events; the operator turns new denials into Warnings."""
        uid = body["metadata"]["uid"]
        denials = ((body.get("status") or {}).get("run") or {}).get("denials") or {}
        count = _denials(body)
        seen = self._denials_seen.get(uid, 0)
        if count > seen:
            self._denials_seen[uid] = count
            await post_event(
                self.kube,
                body,
                "Warning",
                "CapabilityDenied",
                f"{count - seen} new denial(s), {count} in all; last: {denials.get('last', '')}",
            )


def _denials(body: JSON) -> int:
    """The kernel's count of denied requests (`status.run.denials.count`)."""
    denials = ((body.get("status") or {}).get("run") or {}).get("denials") or {}
    return int(denials.get("count", 0))


def _comparable(status: JSON | None) -> JSON:
    """The operator's part of a status as written (everything but the kernel's `run`)."""
    return {k: v for k, v in (status or {}).items() if k != "run" and v is not None}
