"""The operator's own Prometheus metrics: the seed's "system level" report.

Level-based, like the reconcilers: each reconcile records what it last
observed of its session or Agent (phase, usage, denials), a deleted object's
record goes with its reconcile loop, and every scrape computes the gauges
from those records. So a restarted operator reports the same values once it
has reconciled everything again, and nothing is ever counted twice.

One registry per operator (`OperatorMetrics.registry`), served on the
operator's metrics address: other operator metrics (reconcile counts and
durations, work-queue depth) register into it and are served with these.
The kernels' per-call LLM metrics are on each agent pod (`toka.llm.metrics`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
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


class OperatorMetrics:
    """The latest sample of every session and Agent the operator reconciles."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sessions: dict[Key, SessionSample] = {}
        self.agents: dict[Key, AgentSample] = {}
        self.registry.register(_Observed(self))

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
