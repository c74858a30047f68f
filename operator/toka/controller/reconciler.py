"""The operator's control loop: an informer-style store, a work queue per kind, workers.

Watch events (Kopf's, see handlers.py) are parsed once, here at the edge,
into the API models and kept in `Store`; each event adds its object's key
to its kind's `WorkQueue` (and an Agent's or a pod's event adds the key of
what it belongs to). A fixed pool of workers per kind takes keys one at a
time and reconciles: read the store, plan (pure: reconcile/ and builders/),
act (idempotent: io.py). Nothing chains on status edges; a reconcile asks
for a later one only for a deadline it knows of, and every object is
resynced now and then as a safety net.

Everything the operator remembers about an object lives in one
`ObjectState` (the share its session gives it, whether its RBAC is made,
the denials already reported, the child names found taken) and goes away
with the object through one path, `forget`.

Only a leader runs workers (`run`); a standby keeps its store warm, so it
takes over with nothing to relist. Writes go through a `FencedKube` that
refuses them the moment leadership is lost.

With tracing on, each reconcile is a span in the trace of its object's run:
the trace id derives from the object's uid (`tracing.trace_id_for`), as the
Agent's kernel derives it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from toka.api.conditions import make_condition, merge_conditions
from toka.api.models import Agent, AgentLimits, AgentSession
from toka.contract import AGENT_KIND, SESSION_KIND
from toka.controller.builders.meta import owned_by
from toka.controller.builders.names import (
    LABEL_AGENT,
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
    missing_reference,
    patch_status,
    post_event,
)
from toka.controller.metrics import AgentSample, OperatorMetrics, SessionSample
from toka.controller.queue import WorkQueue
from toka.controller.reconcile.agent import compute_agent_plan
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
    AsyncKube,
    Resource,
)
from toka.tracing import NO_TRACER, Span, Tracer, trace_id_for

JSON = dict[str, Any]
NsName = tuple[str, str]
log = logging.getLogger("toka.operator")

# Older operators ran Kopf daemons, which need a finalizer per object; owner
# references already give garbage collection, so it only delays deletion now.
LEGACY_FINALIZER = "toka.dev/finalizer"
MAX_PENDING_EVENTS = 10_000


class Kind(StrEnum):
    SESSION = SESSION_KIND
    AGENT = AGENT_KIND

    @property
    def controller(self) -> str:
        """The controller's (and its queue's) name in metrics, as controller-runtime has it."""
        return self.value.lower()

    @property
    def resource(self) -> Resource:
        return SESSIONS if self is Kind.SESSION else AGENTS


Key = tuple[Kind, str, str]  # (kind, namespace, name)


@dataclass
class OperatorConfig:
    pod: PodConfig = field(default_factory=PodConfig)
    # A safety net only: events and the plans' own deadlines drive reconciles.
    resync_seconds: float = 300.0
    stall_after_seconds: float = 60.0
    # What the operator watches (and lists when it starts); empty: the whole cluster.
    namespaces: tuple[str, ...] = ()
    session_workers: int = 8
    agent_workers: int = 32
    # Where the operator serves its Prometheus metrics (`host:port`); None: nowhere.
    metrics_addr: str | None = None


@dataclass
class ObjectState:
    """What the operator remembers of one object between reconciles (never its spec)."""

    uid: str
    share: AgentLimits | None = None
    rbac_done: bool = False
    denials_reported: int = 0
    taken_names: dict[str, str] = field(default_factory=dict)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _resource_version(value: str | None) -> int:
    """A resourceVersion as a number, to keep the newer of two copies (0: unknown)."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


class Store:
    """The latest of every watched object, parsed; pods by (namespace, agent)."""

    def __init__(self) -> None:
        self.sessions: dict[NsName, AgentSession] = {}
        self.agents: dict[NsName, Agent] = {}
        self.pods: dict[NsName, dict[str, JSON]] = {}
        self._session_agents: dict[NsName, set[str]] = {}

    def put(self, model: Agent | AgentSession) -> bool:
        """Keep `model` unless the store holds a newer version; whether it was kept."""
        meta = model.metadata
        key = (meta.namespace or "", meta.name or "")
        objects: dict[NsName, Any] = self.agents if isinstance(model, Agent) else self.sessions
        held = objects.get(key)
        if (
            held is not None
            and held.metadata.uid == meta.uid
            and _resource_version(held.metadata.resource_version)
            > _resource_version(meta.resource_version)
        ):
            return False
        objects[key] = model
        if isinstance(model, Agent):
            session = (meta.labels or {}).get(LABEL_SESSION)
            if session:
                self._session_agents.setdefault((key[0], session), set()).add(key[1])
        return True

    def get(self, kind: Kind, ns: str, name: str) -> Agent | AgentSession | None:
        return (self.agents if kind is Kind.AGENT else self.sessions).get((ns, name))

    def remove(self, kind: Kind, ns: str, name: str) -> Agent | AgentSession | None:
        if kind is Kind.SESSION:
            return self.sessions.pop((ns, name), None)
        agent = self.agents.pop((ns, name), None)
        session = (agent.metadata.labels or {}).get(LABEL_SESSION) if agent else None
        if session:
            members = self._session_agents.get((ns, session), set())
            members.discard(name)
            if not members:
                self._session_agents.pop((ns, session), None)
        return agent

    def agents_of(self, session: AgentSession) -> list[Agent]:
        """The session's Agents: its label and its owner reference (UID), as listed."""
        ns, name = session.metadata.namespace or "", session.metadata.name or ""
        found = []
        for agent_name in self._session_agents.get((ns, name), ()):
            agent = self.agents.get((ns, agent_name))
            if agent is not None and _owned_by(agent, session.metadata.uid):
                found.append(agent)
        return found

    def put_pod(self, ns: str, agent: str, pod: JSON) -> None:
        """Keep `pod` unless the store holds a newer version of it."""
        pods = self.pods.setdefault((ns, agent), {})
        held = pods.get(pod["metadata"]["name"])
        if (
            held is not None
            and held["metadata"].get("uid") == pod["metadata"].get("uid")
            and _resource_version(held["metadata"].get("resourceVersion"))
            > _resource_version(pod["metadata"].get("resourceVersion"))
        ):
            return
        pods[pod["metadata"]["name"]] = pod

    def remove_pod(self, ns: str, agent: str, name: str) -> None:
        pods = self.pods.get((ns, agent))
        if pods is not None:
            pods.pop(name, None)
            if not pods:
                self.pods.pop((ns, agent), None)


def parse(kind: Kind, body: JSON) -> Agent | AgentSession:
    """The one place a watched object's body becomes its model."""
    return Agent.model_validate(body) if kind is Kind.AGENT else AgentSession.model_validate(body)


def _owned_by(model: Agent | AgentSession, uid: str | None) -> bool:
    return any(ref.uid == uid for ref in model.metadata.owner_references or ())


def involved(model: Agent | AgentSession) -> JSON:
    """Enough of an object for an Event about it."""
    meta = model.metadata
    return {
        "apiVersion": model.api_version,
        "kind": model.kind,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
    }


class Reconciler:
    def __init__(
        self,
        kube: AsyncKube,
        config: OperatorConfig,
        tracer: Tracer = NO_TRACER,
        metrics: OperatorMetrics | None = None,
    ):
        self.kube = kube
        self.config = config
        self.tracer = tracer
        self.metrics = metrics or OperatorMetrics()
        self.store = Store()
        self.queues = {
            kind: WorkQueue[Key](kind.controller, self.metrics.controller) for kind in Kind
        }
        self.states: dict[Key, ObjectState] = {}
        self._active = dict.fromkeys(Kind, 0)
        # Events wait here for the poster: best effort, never in a reconcile's way.
        self.events: asyncio.Queue[tuple[JSON, str, str, str]] = asyncio.Queue(MAX_PENDING_EVENTS)
        # Agents a session creates at once: concurrent, but not a thundering herd.
        self._create_slots = asyncio.Semaphore(16)

    # --- the edge: watch events in ------------------------------------------------

    def observe(self, kind: Kind, event: str | None, body: JSON) -> None:
        """A watch event on a session or an Agent (`event` None: seen in a listing)."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace") or "", meta.get("name") or ""
        if event == "DELETED":
            self.forget(kind, ns, name)
            session = (meta.get("labels") or {}).get(LABEL_SESSION)
            if kind is Kind.AGENT and session:
                self.wake(Kind.SESSION, ns, session)
            return
        try:
            model = parse(kind, body)
        except ValidationError as err:
            log.warning("%s %s/%s does not parse, not reconciled: %s", kind, ns, name, err)
            return
        self.store.put(model)
        self.wake(kind, ns, name)
        session = (meta.get("labels") or {}).get(LABEL_SESSION)
        if kind is Kind.AGENT and session:
            self.wake(Kind.SESSION, ns, session)

    def observe_pod(self, event: str | None, body: JSON) -> None:
        """A watch event on a pod of an Agent's: kept (its parts that matter), the Agent woken."""
        meta = body.get("metadata") or {}
        ns = meta.get("namespace") or ""
        agent = (meta.get("labels") or {}).get(LABEL_AGENT)
        if not agent:
            return
        if event == "DELETED":
            self.store.remove_pod(ns, agent, meta["name"])
        else:
            self.store.put_pod(ns, agent, _pod_parts(body))
        self.wake(Kind.AGENT, ns, agent)

    def wake(self, kind: Kind, ns: str, name: str) -> None:
        self.queues[kind].add((kind, ns, name))

    def forget(self, kind: Kind, ns: str, name: str) -> None:
        """The one path by which an object's memory goes: store, queue, state, metrics."""
        key = (kind, ns, name)
        self.store.remove(kind, ns, name)
        self.queues[kind].discard(key)
        self.states.pop(key, None)
        self.metrics.forget("session" if kind is Kind.SESSION else "agent", ns, name)

    def _state(self, key: Key, uid: str) -> ObjectState:
        state = self.states.get(key)
        if state is None or state.uid != uid:
            state = self.states[key] = ObjectState(uid=uid)
        return state

    # --- the workers ----------------------------------------------------------------

    async def sync(self) -> None:
        """List what is watched into the store, so no worker acts on a half-filled one
        (an Agent whose pods are not yet known would start a new attempt): client-go's
        wait for the caches to sync. What the watches said meanwhile is kept if newer."""
        for ns in self.config.namespaces or (None,):
            for kind in Kind:
                for item in (await self.kube.list(kind.resource, ns))["items"]:
                    item.setdefault("apiVersion", kind.resource.api_version)
                    item.setdefault("kind", kind.value)
                    self.observe(kind, None, item)
            pods = await self.kube.list(PODS, ns, label_selector=LABEL_AGENT)
            for pod in pods["items"]:
                self.observe_pod(None, pod)

    async def run(self) -> None:
        """Every kind's workers, until cancelled; the store is synced and all it holds
        reconciled first."""
        await self.sync()
        for ns, name in list(self.store.sessions):
            self.wake(Kind.SESSION, ns, name)
        for ns, name in list(self.store.agents):
            self.wake(Kind.AGENT, ns, name)
        workers = [
            *(self._worker(Kind.SESSION) for _ in range(self.config.session_workers)),
            *(self._worker(Kind.AGENT) for _ in range(self.config.agent_workers)),
        ]
        for kind, n in (
            (Kind.SESSION, self.config.session_workers),
            (Kind.AGENT, self.config.agent_workers),
        ):
            self.metrics.controller.max_concurrent(kind.controller, n)
        await asyncio.gather(*workers, self._report_progress(), self._post_events_forever())

    async def _report_progress(self, every: float = 1.0) -> None:
        """The queues' in-progress gauges, which only time moves."""
        while True:
            for kind, queue in self.queues.items():
                self.metrics.controller.longest_running(kind.controller, queue.longest_running())
                self.metrics.controller.unfinished(kind.controller, queue.unfinished())
            await asyncio.sleep(every)

    async def _worker(self, kind: Kind) -> None:
        queue = self.queues[kind]
        while True:
            key = await queue.get()
            started = time.monotonic()
            result = "success"
            self._active[kind] += 1
            self.metrics.controller.active_workers(kind.controller, self._active[kind])
            try:
                requeue = await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                result = "error"
                delay = queue.add_rate_limited(key)
                log.warning("%s %s/%s reconcile failed, retry in %.1fs: %s", *key, delay, err)
            else:
                queue.forget(key)
                if requeue:
                    result = "requeue_after"
                    queue.add_after(key, min(requeue, self.config.resync_seconds))
                elif self._exists(key):
                    jitter = random.uniform(0.9, 1.1)  # noqa: S311  (spreads resyncs, no secret)
                    queue.add_after(key, self.config.resync_seconds * jitter)
            finally:
                log.debug("%s %s/%s reconciled: %s", *key, result)
                queue.done(key)
                self._active[kind] -= 1
                self.metrics.controller.active_workers(kind.controller, self._active[kind])
                self.metrics.controller.reconciled(
                    kind.controller, result, time.monotonic() - started
                )

    def _exists(self, key: Key) -> bool:
        """Whether the key's object is still in the store (gone objects are not resynced)."""
        return self.store.get(*key) is not None

    async def reconcile(self, key: Key) -> float | None:
        """One reconcile of one object; seconds until it wants another, if it does."""
        kind = key[0]
        model = self.store.get(*key)
        if model is None:
            return None
        if LEGACY_FINALIZER in (model.metadata.finalizers or ()):
            await self._drop_legacy_finalizer(kind, model)
        if model.metadata.deletion_timestamp:
            return None
        with self._traced(model) as span:
            if isinstance(model, Agent):
                requeue = await self._reconcile_agent(key, model)
            else:
                requeue = await self._reconcile_session(key, model)
            span.set("toka.requeue_after_seconds", requeue)
            return requeue

    async def _drop_legacy_finalizer(self, kind: Kind, model: Agent | AgentSession) -> None:
        """Remove an older operator's finalizer (guarded by resourceVersion: a 409 retries)."""
        meta = model.metadata
        keep = [f for f in meta.finalizers or () if f != LEGACY_FINALIZER]
        patched = await self.kube.patch(
            kind.resource,
            meta.name or "",
            {"metadata": {"finalizers": keep or None, "resourceVersion": meta.resource_version}},
            meta.namespace,
        )
        log.info(
            "removed the finalizer %s from %s %s/%s",
            LEGACY_FINALIZER,
            kind,
            meta.namespace,
            meta.name,
        )
        self._put_written(kind, patched)

    def _put_written(self, kind: Kind, body: JSON) -> None:
        """What a write returned: newer than the store's copy until the watch says more."""
        self.store.put(parse(kind, body))

    # --- sessions ---------------------------------------------------------------------

    async def _reconcile_session(self, key: Key, session: AgentSession) -> float | None:
        _, ns, name = key
        observed = {a.spec.name or a.metadata.name or "": a for a in self.store.agents_of(session)}
        plan = compute_session_plan(session, observed, utcnow())
        if plan.result_inputs:
            await self._session_result(session, plan)
        await asyncio.gather(*(self._create_agent(session, m) for m in plan.create))
        for agent_name, suspend in plan.set_suspend.items():
            patched = await self.kube.patch(AGENTS, agent_name, {"spec": {"suspend": suspend}}, ns)
            self._put_written(Kind.AGENT, patched)
        for agent_name, share in plan.shares.items():
            agent_key = (Kind.AGENT, ns, agent_name)
            agent = self.store.agents.get((ns, agent_name))
            if agent is None:
                continue
            state = self._state(agent_key, agent.metadata.uid or "")
            if state.share != share:
                state.share = share
                self.wake(Kind.AGENT, ns, agent_name)
        if plan.delete_pods:
            listing = await self.kube.list(PODS, ns, label_selector=f"{LABEL_SESSION}={name}")
            for pod in listing["items"]:
                await delete_pod(self.kube, pod["metadata"]["name"], ns)
        if plan.status.wire() != _written(session):
            written = await patch_status(self.kube, SESSIONS, name, ns, plan.status.merge_patch())
            if written is None:  # deleted while the watch could not say so
                self.forget(*key)
                return None
            self._put_written(Kind.SESSION, written)
        self._post_events(session, plan.events)
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

    async def _create_agent(self, session: AgentSession, manifest: JSON) -> None:
        async with self._create_slots:
            try:
                created, _ = await ensure_created(self.kube, AGENTS, manifest)
            except OwnershipConflict as err:
                self._post_events(session, [("Warning", "NameConflict", str(err))])
                return
        # Into the store and the queue now: its pod need not wait for the watch.
        self._put_written(Kind.AGENT, created)
        self.wake(Kind.AGENT, session.metadata.namespace or "", created["metadata"]["name"])

    async def _session_result(self, session: AgentSession, plan: SessionPlan) -> None:
        """Merge the sink agents' results into the session's (once; retried until made)."""
        now = utcnow()
        try:
            result = await ensure_session_result(
                self.kube,
                involved(session),
                session.spec.workspace,
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

    # --- agents -----------------------------------------------------------------------

    async def _reconcile_agent(self, key: Key, agent: Agent) -> float | None:
        _, ns, name = key
        uid = agent.metadata.uid or ""
        state = self._state(key, uid)
        phase = agent.status.phase if agent.status else None
        terminal = phase in ("Succeeded", "Failed")
        pods = [p for p in self.store.pods.get((ns, name), {}).values() if owned_by(p, uid)]
        live = any(
            (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in pods
        )
        # References matter only before a pod is made: no GETs while one runs.
        missing = None if terminal or live else await missing_reference(self.kube, ns, agent.spec)
        plan = compute_agent_plan(
            agent,
            pods,
            utcnow(),
            share=state.share,
            missing=missing,
            stall_after=timedelta(seconds=self.config.stall_after_seconds),
            conflicts=state.taken_names,
        )
        for pod in plan.delete_pods:
            await delete_pod(self.kube, pod, ns)
        if plan.create_attempt is not None:
            await self._ensure_pod(agent, state, plan.create_attempt)
        # Children before the answers: a crash in between re-answers and adopts the child.
        conflicts = len(state.taken_names)
        for child in plan.create_children:
            try:
                await ensure_created(self.kube, AGENTS, child)
            except OwnershipConflict as err:
                state.taken_names[child["metadata"]["name"]] = str(err)
        if len(state.taken_names) > conflicts:
            return 0.05  # no answer yet: the next plan refuses the request, with the reason
        if plan.status.wire() != _written(agent):
            # Never `run`: that is the kernel's.
            written = await patch_status(
                self.kube, AGENTS, name, ns, plan.status.merge_patch(exclude=frozenset({"run"}))
            )
            if written is None:
                self.forget(*key)
                return None
            self._put_written(Kind.AGENT, written)
        self._post_events(agent, plan.events)
        self._report_denials(agent, state)
        self.metrics.observe_agent(
            ns,
            name,
            AgentSample(
                phase=plan.status.phase or "Pending",
                session=(agent.metadata.labels or {}).get(LABEL_SESSION),
                denials=_denials(agent),
            ),
        )
        if terminal:
            state.rbac_done = False
        return plan.requeue_after

    async def _ensure_pod(self, agent: Agent, state: ObjectState, attempt: int) -> None:
        name = agent.metadata.name or ""
        if not state.rbac_done:
            # The pod's identity before the pod (a pod naming a missing ServiceAccount
            # is refused); the Role before its binding, which a least-privileged
            # operator may create only against an existing Role it could grant itself.
            await asyncio.gather(
                ensure_created(self.kube, SERVICEACCOUNTS, build_service_account(agent)),
                ensure_created(self.kube, ROLES, build_role(agent)),
                ensure_created(
                    self.kube, CONFIGMAPS, build_agent_configmap(agent, result_configmap_name(name))
                ),
            )
            await ensure_created(self.kube, ROLEBINDINGS, build_role_binding(agent))
            state.rbac_done = True
        if is_recording(agent):
            # Every pod, not once: `llm.record` may be turned on after the first pod.
            recording = build_agent_configmap(agent, recording_configmap_name(name))
            await ensure_created(self.kube, CONFIGMAPS, recording)
        pod, _ = await ensure_created(
            self.kube, PODS, build_agent_pod(agent, attempt, self.config.pod)
        )
        self.store.put_pod(agent.metadata.namespace or "", name, _pod_parts(pod))

    def _traced(self, model: Agent | AgentSession) -> AbstractContextManager[Span]:
        """One reconcile's span, in the trace of the object's run."""
        meta = model.metadata
        return self.tracer.span(
            f"reconcile {model.kind}",
            {
                "k8s.namespace.name": meta.namespace,
                "toka.kind": model.kind,
                "toka.name": meta.name,
                "toka.uid": meta.uid,
                "toka.generation": meta.generation,
                "toka.phase": model.status.phase if model.status else None,
            },
            trace_id=trace_id_for(meta.uid or ""),
        )

    def _post_events(self, model: Agent | AgentSession, events: list[tuple[str, str, str]]) -> None:
        """Queued for the poster, in order; dropped (and logged) if it is far behind."""
        about = involved(model)
        for kind, reason, message in events:
            try:
                self.events.put_nowait((about, kind, reason, message))
            except asyncio.QueueFull:
                log.warning(
                    "event %s on %s dropped: %d events wait",
                    reason,
                    about["metadata"]["name"],
                    MAX_PENDING_EVENTS,
                )

    async def _post_events_forever(self) -> None:
        """One poster, as client-go's event broadcaster: Events take their turn behind
        the reconciles instead of competing with them for the API server."""
        while True:
            about, kind, reason, message = await self.events.get()
            await post_event(self.kube, about, kind, reason, message)
            self.events.task_done()

    async def flush_events(self) -> None:
        """Post whatever is queued now (for a caller that runs no poster)."""
        while not self.events.empty():
            about, kind, reason, message = self.events.get_nowait()
            await post_event(self.kube, about, kind, reason, message)
            self.events.task_done()

    def _report_denials(self, agent: Agent, state: ObjectState) -> None:
        """Kernels cannot write Events; the operator turns new denials into Warnings."""
        count = _denials(agent)
        seen = state.denials_reported
        if count > seen:
            state.denials_reported = count
            run = agent.status.run if agent.status else None
            last = run.denials.last if run and run.denials else ""
            message = f"{count - seen} new denial(s), {count} in all; last: {last or ''}"
            self._post_events(agent, [("Warning", "CapabilityDenied", message)])


def _pod_parts(pod: JSON) -> JSON:
    """What a reconcile reads of a pod (its metadata, spec and status)."""
    return {k: v for k, v in pod.items() if k in ("metadata", "spec", "status")}


def _denials(agent: Agent) -> int:
    """The kernel's count of denied requests (`status.run.denials.count`)."""
    run = agent.status.run if agent.status else None
    return run.denials.count if run and run.denials else 0


def _written(model: Agent | AgentSession) -> JSON:
    """The operator's part of a status as last written (everything but the kernel's `run`)."""
    if model.status is None:
        return {}
    return {k: v for k, v in model.status.wire().items() if k != "run"}
