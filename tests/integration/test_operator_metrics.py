"""The operator's /metrics against the real API server: what a session did, as scraped.

A small session runs with real agent pods (replay recordings), one agent
asking for more than it was granted; the operator's endpoint is then scraped
over HTTP and each series compared with the objects' status. Killed and
restarted, the operator reports the same values again: the gauges are
recomputed from what it observes, never counted up on edges.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NodeAgentProcess, OperatorProcess, failed
from tests.helpers import wait_for
from tests.sessions import agent, call, finish, put_recordings, recording, session
from toka.kube.client import AGENTS, SESSIONS, AsyncKube

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def operator_with_metrics(
    kubeconfig: Path,
    namespace: str,
    node_agent: NodeAgentProcess,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[OperatorProcess, str]]:
    """The operator as its own process, serving /metrics on a loopback port of its own."""
    port = free_port()
    op = OperatorProcess(
        kubeconfig,
        namespace,
        tmp_path / "operator.log",
        [
            "--metrics-addr",
            f"127.0.0.1:{port}",
            # As the chart runs it; short, so the restarted operator need not wait long.
            "--leader-elect",
            "--leader-election-namespace",
            namespace,
            "--lease-duration",
            "4s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "500ms",
        ],
    )
    op.start()
    try:
        yield op, f"http://127.0.0.1:{port}/metrics"
    finally:
        op.stop()
        if failed(request):
            print(f"--- operator log\n{op.log.read_text(errors='replace')[-6000:]}")


async def scrape(url: str) -> Series:
    async with httpx.AsyncClient() as http:
        resp = await http.get(url, timeout=5)
    resp.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(series: Series, metric: str, /, **labels: str) -> float | None:
    return series.get((metric, frozenset(labels.items())))


async def scrape_until(url: str, expected: dict[tuple[str, frozenset[Any]], float]) -> Series:
    """Scrape (the endpoint may still be starting) until every expected series has its
    value; the last scrape is returned either way, for the assertions to name."""
    deadline = time.monotonic() + 30
    series: Series = {}
    while time.monotonic() < deadline:
        try:
            series = await scrape(url)
        except httpx.HTTPError:
            series = {}
        if all(series.get(key) == v for key, v in expected.items()):
            break
        await asyncio.sleep(0.3)
    return series


async def test_the_operator_reports_sessions_agents_tokens_and_denials_as_observed(
    kube: AsyncKube, namespace: str, operator_with_metrics: tuple[OperatorProcess, str]
) -> None:
    operator, url = operator_with_metrics
    await put_recordings(
        kube,
        namespace,
        "rec",
        {
            "tidy": recording("tidy", {"t": [finish("nothing to do")]}, tokens=(120, 8)),
            "nosy": recording(
                "nosy",
                {"t": [call("fs_read", path="../etc/passwd"), finish("was stopped")]},
                tokens=(70, 5),
            ),
        },
    )
    await kube.create(
        SESSIONS,
        session("metered", [agent("tidy"), agent("nosy", caps=["llm:complete", "fs:read:**"])]),
        namespace,
    )
    done = await wait_for(
        kube,
        SESSIONS,
        "metered",
        namespace,
        lambda s: (s.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        timeout=120,
        what="a final phase",
    )
    assert done["status"]["phase"] == "Succeeded"
    usage = done["status"]["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (120 + 2 * 70, 8 + 2 * 5)
    agents = [await kube.get(AGENTS, f"metered-{n}", namespace) for n in ("tidy", "nosy")]
    denied = sum(a["status"]["run"]["denials"]["count"] for a in agents)
    assert denied == 1

    ns, sess = {"namespace": namespace}, {"namespace": namespace, "session": "metered"}
    expected = {
        ("toka_sessions", frozenset({**ns, "phase": "Succeeded"}.items())): 1.0,
        ("toka_sessions", frozenset({**ns, "phase": "Running"}.items())): 0.0,
        ("toka_agents", frozenset({**ns, "phase": "Succeeded"}.items())): 2.0,
        ("toka_agents", frozenset({**ns, "phase": "Running"}.items())): 0.0,
        ("toka_session_tokens", frozenset({**sess, "kind": "input"}.items())): float(
            usage["inputTokens"]
        ),
        ("toka_session_tokens", frozenset({**sess, "kind": "output"}.items())): float(
            usage["outputTokens"]
        ),
        ("toka_session_llm_requests", frozenset(sess.items())): float(usage["requests"]),
        ("toka_session_capability_denials", frozenset(sess.items())): float(denied),
        ("toka_capability_denials", frozenset(ns.items())): float(denied),
    }
    series = await scrape_until(url, expected)
    assert {k: series.get(k) for k in expected} == expected

    # How it got there, in controller-runtime's names: work done per controller.
    for controller in ("agent", "agentsession"):
        done_ok = value(
            series, "controller_runtime_reconcile_total", controller=controller, result="success"
        )
        assert done_ok is not None, controller
        assert done_ok > 0, controller
        adds = value(series, "workqueue_adds_total", name=controller, controller=controller)
        assert adds is not None, controller
        assert adds >= done_ok, (controller, adds, done_ok)  # each reconcile was queued first
        assert value(series, "workqueue_depth", name=controller, controller=controller) == 0.0
    assert value(series, "controller_runtime_max_concurrent_reconciles", controller="agent") == 32.0
    assert value(series, "leader_election_master_status", name="toka-operator") == 1.0

    operator.kill()
    operator.start()
    again = await scrape_until(url, expected)
    assert {k: again.get(k) for k in expected} == expected  # the same, not doubled
    assert value(again, "toka_sessions", namespace=namespace, phase="Failed") == 0.0
