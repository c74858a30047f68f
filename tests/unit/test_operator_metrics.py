"""The operator's gauges are computed from the latest samples alone: observed twice is
counted once, forgotten is gone, and an emptied phase shows 0. How the reconcilers run
is exposed under controller-runtime's names, labels and buckets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from toka.controller.metrics import (
    AgentSample,
    ControllerMetrics,
    OperatorMetrics,
    SessionSample,
)

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: OperatorMetrics) -> Series:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def at(name: str, /, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
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


# --- how the reconcilers run, in controller-runtime's names -----------------------------

SeriesKey = tuple[str, frozenset[tuple[str, str]]]
Calls = Callable[[ControllerMetrics], None]


def calls(*steps: Calls) -> Calls:
    def run(c: ControllerMetrics) -> None:
        for step in steps:
            step(c)

    return run


def of_controller(metric: str, controller: str, **labels: str) -> SeriesKey:
    return at(f"controller_runtime_{metric}", controller=controller, **labels)


def of_queue(metric: str, queue: str) -> SeriesKey:
    """controller-runtime labels a work queue's series with its name twice."""
    return at(f"workqueue_{metric}", name=queue, controller=queue)


RESULTS = ("success", "error", "requeue", "requeue_after")
CONTROLLER_CASES: list[tuple[str, Calls, list[tuple[SeriesKey, float]]]] = [
    (
        "an error counts as a result and as an error",
        lambda c: c.reconciled("agentsession", "error", 0.2),
        [
            (of_controller("reconcile_total", "agentsession", result="error"), 1),
            (of_controller("reconcile_errors_total", "agentsession"), 1),
            (of_controller("reconcile_total", "agentsession", result="success"), 0),
            (of_controller("reconcile_time_seconds_count", "agentsession"), 1),
            (of_controller("reconcile_time_seconds_sum", "agentsession"), 0.2),
        ],
    ),
    (
        "a success is no error",
        lambda c: c.reconciled("agent", "success", 0.01),
        [
            (of_controller("reconcile_total", "agent", result="success"), 1),
            (of_controller("reconcile_errors_total", "agent"), 0),
        ],
    ),
    (
        "requeues are results of their own, not errors",
        calls(
            lambda c: c.reconciled("agent", "requeue", 0.1),
            lambda c: c.reconciled("agent", "requeue_after", 0.1),
            lambda c: c.reconciled("agent", "requeue_after", 0.3),
        ),
        [
            (of_controller("reconcile_total", "agent", result="requeue"), 1),
            (of_controller("reconcile_total", "agent", result="requeue_after"), 2),
            (of_controller("reconcile_errors_total", "agent"), 0),
            (of_controller("reconcile_time_seconds_count", "agent"), 3),
        ],
    ),
    (
        "controllers are counted apart",
        calls(
            lambda c: c.reconciled("agent", "error", 0.1),
            lambda c: c.reconciled("agentsession", "success", 0.1),
        ),
        [
            (of_controller("reconcile_errors_total", "agent"), 1),
            (of_controller("reconcile_errors_total", "agentsession"), 0),
            (of_controller("reconcile_total", "agent", result="success"), 0),
        ],
    ),
    (
        "workers are the latest values set",
        calls(
            lambda c: c.max_concurrent("agent", 8),
            lambda c: c.active_workers("agent", 5),
            lambda c: c.active_workers("agent", 3),
        ),
        [
            (of_controller("max_concurrent_reconciles", "agent"), 8),
            (of_controller("active_workers", "agent"), 3),
        ],
    ),
    (
        "a controller's results exist at zero from its first mention",
        lambda c: c.max_concurrent("agentsession", 4),
        [
            *((of_controller("reconcile_total", "agentsession", result=r), 0) for r in RESULTS),
            (of_controller("reconcile_errors_total", "agentsession"), 0),
            (of_controller("active_workers", "agentsession"), 0),
        ],
    ),
    (
        "adds and retries count up",
        calls(
            lambda c: c.queue_added("agent"),
            lambda c: c.queue_added("agent"),
            lambda c: c.retried("agent"),
        ),
        [(of_queue("adds_total", "agent"), 2), (of_queue("retries_total", "agent"), 1)],
    ),
    (
        "a queue's series exist at zero from its first mention",
        lambda c: c.queue_added("agentsession"),
        [
            (of_queue("depth", "agentsession"), 0),
            (of_queue("retries_total", "agentsession"), 0),
            (of_queue("queue_duration_seconds_count", "agentsession"), 0),
            (of_queue("work_duration_seconds_count", "agentsession"), 0),
            (of_queue("longest_running_processor_seconds", "agentsession"), 0),
            (of_queue("unfinished_work_seconds", "agentsession"), 0),
        ],
    ),
    (
        "depth and running times are the latest values set",
        calls(
            lambda c: c.queue_depth("agent", 5),
            lambda c: c.queue_depth("agent", 2),
            lambda c: c.longest_running("agent", 12.5),
            lambda c: c.unfinished("agent", 30.0),
        ),
        [
            (of_queue("depth", "agent"), 2),
            (of_queue("longest_running_processor_seconds", "agent"), 12.5),
            (of_queue("unfinished_work_seconds", "agent"), 30),
        ],
    ),
    (
        "waits and work are observed",
        calls(
            lambda c: c.queue_waited("agent", 0.5),
            lambda c: c.queue_waited("agent", 0.25),
            lambda c: c.work_done("agent", 2.0),
        ),
        [
            (of_queue("queue_duration_seconds_count", "agent"), 2),
            (of_queue("queue_duration_seconds_sum", "agent"), 0.75),
            (of_queue("work_duration_seconds_count", "agent"), 1),
            (of_queue("work_duration_seconds_sum", "agent"), 2),
        ],
    ),
    (
        "the leader reports 1",
        lambda c: c.leader("toka-operator", True),
        [(at("leader_election_master_status", name="toka-operator"), 1)],
    ),
    (
        "a replica that lost the lease reports 0",
        calls(
            lambda c: c.leader("toka-operator", True), lambda c: c.leader("toka-operator", False)
        ),
        [(at("leader_election_master_status", name="toka-operator"), 0)],
    ),
]


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [(recorded, expected) for _, recorded, expected in CONTROLLER_CASES],
    ids=[case for case, _, _ in CONTROLLER_CASES],
)
def test_the_controller_series_are_what_the_reconcilers_reported(
    recorded: Calls, expected: list[tuple[SeriesKey, float]]
) -> None:
    metrics = OperatorMetrics()
    recorded(metrics.controller)
    series = scrape(metrics)
    assert [(s, series.get(s)) for s, _ in expected] == expected


def test_an_error_reconcile_is_exposed_as_controller_runtime_exposes_it() -> None:
    metrics = OperatorMetrics()
    metrics.controller.reconciled("agentsession", "error", 0.2)
    lines = generate_latest(metrics.registry).decode().splitlines()
    total = 'controller_runtime_reconcile_total{controller="agentsession",result="error"} 1.0'
    errors = 'controller_runtime_reconcile_errors_total{controller="agentsession"} 1.0'
    bucket = "controller_runtime_reconcile_time_seconds_bucket"
    assert {
        "# TYPE controller_runtime_reconcile_total counter",
        total,
        "# TYPE controller_runtime_reconcile_errors_total counter",
        errors,
        "# TYPE controller_runtime_reconcile_time_seconds histogram",
        f'{bucket}{{controller="agentsession",le="0.15"}} 0.0',
        f'{bucket}{{controller="agentsession",le="0.2"}} 1.0',
    } <= set(lines)


def bucket_bounds(metrics: OperatorMetrics, name: str) -> list[str]:
    text = generate_latest(metrics.registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == name]
    return [s.labels["le"] for s in family.samples if s.name == f"{name}_bucket"]


RECONCILE_BOUNDS = ["0.005", "60.0", 40]
QUEUE_BOUNDS = ["1e-08", "1000.0", 12]  # 10ns to 1000s, ten times apart


@pytest.mark.parametrize(
    ("record", "histogram", "bounds"),
    [
        (
            lambda c: c.reconciled("agent", "success", 1),
            "controller_runtime_reconcile_time_seconds",
            RECONCILE_BOUNDS,
        ),
        (lambda c: c.queue_waited("agent", 1), "workqueue_queue_duration_seconds", QUEUE_BOUNDS),
        (lambda c: c.work_done("agent", 1), "workqueue_work_duration_seconds", QUEUE_BOUNDS),
    ],
    ids=["reconcile time", "queue wait", "work"],
)
def test_histograms_have_controller_runtimes_buckets(
    record: Calls, histogram: str, bounds: list[str | int]
) -> None:
    metrics = OperatorMetrics()
    record(metrics.controller)
    les = bucket_bounds(metrics, histogram)
    assert les[-1] == "+Inf"
    assert [les[0], les[-2], len(les) - 1] == bounds


def test_an_unknown_reconcile_result_is_refused_and_counts_nothing() -> None:
    metrics = OperatorMetrics()
    with pytest.raises(ValueError, match="requeued"):
        metrics.controller.reconciled("agent", "requeued", 0.1)
    assert not any(name.startswith("controller_runtime_") for name, _ in scrape(metrics))
