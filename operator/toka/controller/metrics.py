"""The operator's own Prometheus metrics: the seed's "system level" report.

Level-based, like the reconcilers: each reconcile records what it last
observed of its session or Agent (phase, usage, denials), a deleted object's
record goes with its reconcile loop, and every scrape computes the gauges
from those records. So a restarted operator reports the same values once it
has reconciled everything again, and nothing is ever counted twice.

One registry per operator (`OperatorMetrics.registry`), served on the
operator's metrics address. Beside those gauges, `ControllerMetrics` reports
how the reconcilers themselves run (reconciles, work queues, leadership) under
the names and labels controller-runtime uses, so that the dashboards and alerts
written for Go operators work on this one unchanged. Only the leader
reconciles: a standby replica reports leader_election_master_status 0 and no
samples, so sums over the operator's pods count every object once.
The kernels' per-call LLM metrics are on each agent pod (`toka.llm.metrics`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from toka.api.models import AgentPhase, SessionPhase

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class SessionSample:
    """A session as its last reconcile saw it (its status as written)."""

    phase: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class AgentSample:
    """An Agent as its last reconcile saw it; `denials` is its kernel's count."""

    phase: str
    session: str | None = None
    denials: int = 0


def compute_families(
    sessions: Mapping[Key, SessionSample], agents: Mapping[Key, AgentSample]
) -> list[Metric]:
    """The gauges for one scrape, from the latest samples alone."""
    by_phase = GaugeMetricFamily(
        "toka_sessions", "AgentSessions by phase.", labels=["namespace", "phase"]
    )
    for (ns, phase), n in _count_by_phase(sessions, [p.value for p in SessionPhase]).items():
        by_phase.add_metric([ns, phase], n)
    agents_by_phase = GaugeMetricFamily(
        "toka_agents", "Agents by phase.", labels=["namespace", "phase"]
    )
    for (ns, phase), n in _count_by_phase(agents, [p.value for p in AgentPhase]).items():
        agents_by_phase.add_metric([ns, phase], n)
    tokens = GaugeMetricFamily(
        "toka_session_tokens",
        "LLM tokens a session has used (its status.usage).",
        labels=["namespace", "session", "kind"],
    )
    requests = GaugeMetricFamily(
        "toka_session_llm_requests",
        "LLM calls a session has made (its status.usage.requests).",
        labels=["namespace", "session"],
    )
    session_denials = GaugeMetricFamily(
        "toka_session_capability_denials",
        "Requests the kernels of a session's agents denied (their status.run.denials).",
        labels=["namespace", "session"],
    )
    denied_in_session: Counter[Key] = Counter()
    denied_in_namespace: Counter[str] = Counter()
    for (ns, _), agent in agents.items():
        denied_in_namespace[ns] += agent.denials
        if agent.session is not None:
            denied_in_session[(ns, agent.session)] += agent.denials
    for (ns, name), s in sorted(sessions.items()):
        tokens.add_metric([ns, name, "input"], s.input_tokens)
        tokens.add_metric([ns, name, "output"], s.output_tokens)
        requests.add_metric([ns, name], s.requests)
        session_denials.add_metric([ns, name], denied_in_session[(ns, name)])
    denials = GaugeMetricFamily(
        "toka_capability_denials",
        "Requests the kernels of a namespace's agents denied, standalone agents included.",
        labels=["namespace"],
    )
    for ns, n in sorted(denied_in_namespace.items()):
        denials.add_metric([ns], n)
    return [by_phase, agents_by_phase, tokens, requests, session_denials, denials]


def _count_by_phase(
    samples: Mapping[Key, SessionSample] | Mapping[Key, AgentSample], phases: Iterable[str]
) -> dict[tuple[str, str], int]:
    """Every known phase of every namespace seen, zeros included: a phase emptied shows 0."""
    counts = Counter((ns, s.phase) for (ns, _), s in samples.items())
    namespaces = sorted({ns for ns, _ in samples})
    return {(ns, p): counts[(ns, p)] for ns in namespaces for p in phases} | dict(counts)


class _Observed(Collector):
    def __init__(self, metrics: OperatorMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from compute_families(self.metrics.sessions, self.metrics.agents)


# controller-runtime's buckets: reconcile times in seconds, and work-queue times from 10ns
# to 1000s (prometheus.ExponentialBuckets(10e-9, 10, 12)).
RECONCILE_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5),
    *(0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5),
    *(5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60),
)
QUEUE_BUCKETS = tuple(10.0**e for e in range(-8, 4))
RESULTS = ("success", "error", "requeue", "requeue_after")


class ControllerMetrics:
    """How the reconcilers run, as controller-runtime and client-go name it.

    Every series of a controller (its four results, its errors) and of a work queue
    exists at 0 from the first call that names it, as controller-runtime makes them
    when a controller starts: a rate over a result never seen yet is 0, not absent.
    Work-queue series carry `controller` as well as `name`, both the queue's name,
    as controller-runtime's do.
    """

    def __init__(self, registry: CollectorRegistry):
        def counter(name: str, doc: str, labels: list[str]) -> PromCounter:
            return PromCounter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: list[str], buckets: Iterable[float]
        ) -> Histogram:
            return Histogram(name, doc, labels, registry=registry, buckets=tuple(buckets))

        by_controller = ["controller"]
        by_queue = ["name", "controller"]
        self._reconcile_total = counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"],
        )
        self._reconcile_errors = counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            by_controller,
        )
        self._reconcile_time = histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            by_controller,
            RECONCILE_BUCKETS,
        )
        self._max_concurrent = gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            by_controller,
        )
        self._active_workers = gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            by_controller,
        )
        self._depth = gauge("workqueue_depth", "Current depth of workqueue", by_queue)
        self._adds = counter(
            "workqueue_adds_total", "Total number of adds handled by workqueue", by_queue
        )
        self._queue_duration = histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            by_queue,
            QUEUE_BUCKETS,
        )
        self._work_duration = histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            by_queue,
            QUEUE_BUCKETS,
        )
        self._unfinished = gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration. Large values indicate stuck threads.",
            by_queue,
        )
        self._longest_running = gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            by_queue,
        )
        self._retries = counter(
            "workqueue_retries_total", "Total number of retries handled by workqueue", by_queue
        )
        self._leader = gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease.",
            ["name"],
        )
        self._controllers: set[str] = set()
        self._queues: set[str] = set()

    # --- controllers ------------------------------------------------------------------

    def reconciled(self, controller: str, result: str, seconds: float) -> None:
        """One reconcile ended with `result` (one of RESULTS) after `seconds`."""
        if result not in RESULTS:
            raise ValueError(f"reconcile result {result!r} is not one of {RESULTS}")
        self._controller(controller)
        self._reconcile_total.labels(controller, result).inc()
        if result == "error":
            self._reconcile_errors.labels(controller).inc()
        self._reconcile_time.labels(controller).observe(seconds)

    def active_workers(self, controller: str, n: int) -> None:
        self._controller(controller)
        self._active_workers.labels(controller).set(n)

    def max_concurrent(self, controller: str, n: int) -> None:
        self._controller(controller)
        self._max_concurrent.labels(controller).set(n)

    def _controller(self, controller: str) -> None:
        if controller in self._controllers:
            return
        self._controllers.add(controller)
        for result in RESULTS:
            self._reconcile_total.labels(controller, result)
        self._reconcile_errors.labels(controller)
        self._active_workers.labels(controller)

    # --- work queues ------------------------------------------------------------------

    def queue_added(self, name: str) -> None:
        self._adds.labels(*self._queue(name)).inc()

    def queue_depth(self, name: str, depth: int) -> None:
        self._depth.labels(*self._queue(name)).set(depth)

    def queue_waited(self, name: str, seconds: float) -> None:
        self._queue_duration.labels(*self._queue(name)).observe(seconds)

    def work_done(self, name: str, seconds: float) -> None:
        self._work_duration.labels(*self._queue(name)).observe(seconds)

    def retried(self, name: str) -> None:
        self._retries.labels(*self._queue(name)).inc()

    def longest_running(self, name: str, seconds: float) -> None:
        self._longest_running.labels(*self._queue(name)).set(seconds)

    def unfinished(self, name: str, seconds: float) -> None:
        self._unfinished.labels(*self._queue(name)).set(seconds)

    def _queue(self, name: str) -> tuple[str, str]:
        labels = (name, name)
        if name not in self._queues:
            self._queues.add(name)
            for family in (
                self._depth,
                self._adds,
                self._queue_duration,
                self._work_duration,
                self._unfinished,
                self._longest_running,
                self._retries,
            ):
                family.labels(*labels)
        return labels

    # --- leader election --------------------------------------------------------------

    def leader(self, name: str, is_leader: bool) -> None:
        """Whether this replica holds the Lease `name` (1) or stands by (0)."""
        self._leader.labels(name).set(1 if is_leader else 0)


class OperatorMetrics:
    """The latest sample of every session and Agent the operator reconciles."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sessions: dict[Key, SessionSample] = {}
        self.agents: dict[Key, AgentSample] = {}
        self.registry.register(_Observed(self))
        self.controller = ControllerMetrics(self.registry)

    def observe_session(self, ns: str, name: str, sample: SessionSample) -> None:
        self.sessions[(ns, name)] = sample

    def observe_agent(self, ns: str, name: str, sample: AgentSample) -> None:
        self.agents[(ns, name)] = sample

    def forget(self, kind: str, ns: str, name: str) -> None:
        """The object's reconcile loop ended (deleted, or the operator is stopping)."""
        (self.sessions if kind == "session" else self.agents).pop((ns, name), None)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app


async def serve_metrics(registry: CollectorRegistry, addr: str) -> web.AppRunner:
    """`/metrics` on `host:port` (no host: every interface); the caller cleans the runner
    up at shutdown."""
    host, _, port = addr.rpartition(":")
    runner = web.AppRunner(metrics_app(registry), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host or None, int(port)).start()
    return runner
