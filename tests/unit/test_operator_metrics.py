"""The operator's gauges are computed from the latest samples alone: observed twice is
counted once, forgotten is gone, and an emptied phase shows 0."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from toka.controller.metrics import AgentSample, OperatorMetrics, SessionSample

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: OperatorMetrics) -> Series:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def at(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def observed_session(metrics: OperatorMetrics) -> None:
    metrics.observe_session("ns", "s", SessionSample("Running", 3, 300, 30))
    metrics.observe_agent("ns", "s-a", AgentSample("Succeeded", "s", denials=1))
    metrics.observe_agent("ns", "s-b", AgentSample("Running", "s", denials=2))
    metrics.observe_agent("ns", "solo", AgentSample("Failed", None, denials=4))


EXPECTED = [
    (at("toka_sessions", namespace="ns", phase="Running"), 1),
    (at("toka_sessions", namespace="ns", phase="Succeeded"), 0),
    (at("toka_agents", namespace="ns", phase="Running"), 1),
    (at("toka_agents", namespace="ns", phase="Succeeded"), 1),
    (at("toka_agents", namespace="ns", phase="Failed"), 1),
    (at("toka_agents", namespace="ns", phase="Pending"), 0),
    (at("toka_session_tokens", namespace="ns", session="s", kind="input"), 300),
    (at("toka_session_tokens", namespace="ns", session="s", kind="output"), 30),
    (at("toka_session_llm_requests", namespace="ns", session="s"), 3),
    (at("toka_session_capability_denials", namespace="ns", session="s"), 3),
    (at("toka_capability_denials", namespace="ns"), 7),
]


@pytest.mark.parametrize(("series", "expected"), EXPECTED)
def test_each_series_is_what_the_latest_samples_say(
    series: tuple[str, frozenset[tuple[str, str]]], expected: float
) -> None:
    metrics = OperatorMetrics()
    observed_session(metrics)
    observed_session(metrics)  # a second reconcile of the same state (or a restart)
    assert scrape(metrics)[series] == expected


def test_a_new_sample_replaces_the_old_one() -> None:
    metrics = OperatorMetrics()
    observed_session(metrics)
    metrics.observe_session("ns", "s", SessionSample("Succeeded", 4, 400, 40))
    series = scrape(metrics)
    assert series[at("toka_sessions", namespace="ns", phase="Running")] == 0
    assert series[at("toka_sessions", namespace="ns", phase="Succeeded")] == 1
    assert series[at("toka_session_tokens", namespace="ns", session="s", kind="input")] == 400


def test_a_forgotten_object_leaves_no_series() -> None:
    metrics = OperatorMetrics()
    observed_session(metrics)
    metrics.forget("session", "ns", "s")
    metrics.forget("agent", "ns", "solo")
    series = scrape(metrics)
    assert not any(labels and dict(labels).get("session") == "s" for _, labels in series)
    assert series[at("toka_capability_denials", namespace="ns")] == 3


def test_other_operator_metrics_can_join_the_same_registry() -> None:
    from prometheus_client import Counter

    metrics = OperatorMetrics()
    Counter("toka_reconciles", "Reconciles.", ["kind"], registry=metrics.registry).labels(
        "agent"
    ).inc()
    assert scrape(metrics)[at("toka_reconciles_total", kind="agent")] == 1
