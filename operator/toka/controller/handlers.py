"""Kopf handlers: one-screen adapters from watch events to the `Reconciler`.

Kopf is used for its watches only (list, watch, relist, login): event
handlers need no finalizer and write nothing to the objects. Each event goes
into the reconciler's store and work queue; its workers do the rest, on the
leader only (reconciler.py, leader.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import replace
from typing import Any

import kopf

from toka import tracing
from toka.contract import AGENT_PLURAL, API_GROUP, API_VERSION, SESSION_PLURAL
from toka.controller.builders.names import LABEL_AGENT
from toka.controller.leader import FencedKube, LeaderElector, run_while_leading
from toka.controller.login import build_connection_info
from toka.controller.metrics import OperatorMetrics, serve_metrics
from toka.controller.reconciler import Kind, OperatorConfig, Reconciler
from toka.controller.settings import configure
from toka.kube.client import AsyncKube
from toka.kube.kubeconfig import from_env

log = logging.getLogger("toka.operator")


@kopf.on.startup()
async def on_operator_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Configure Kopf; start the reconciler (behind leader election when asked)."""
    configure(settings)
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    memo.kube = memo.get("kube") or await asyncio.to_thread(from_env)
    metrics = OperatorMetrics()
    election = memo.get("leader_election")
    elector: LeaderElector | None = None
    if election is not None:
        identity = election.identity or f"{socket.gethostname()}_{os.getpid()}"
        election = replace(election, identity=identity)
        elector = LeaderElector(
            AsyncKube(memo.kube),
            election,
            on_change=lambda leads: metrics.controller.leader(election.name, leads),
        )
        metrics.controller.leader(election.name, False)
    kube = FencedKube(memo.kube, (lambda: elector.is_leader) if elector else (lambda: True))
    tracer = tracing.from_env("toka-operator", os.environ)
    memo.reconciler = Reconciler(kube, config, tracer, metrics)
    memo.elector = elector
    if config.metrics_addr:
        memo.metrics_server = await serve_metrics(metrics.registry, config.metrics_addr)
    memo.control = asyncio.create_task(_control(memo))


async def _control(memo: Any) -> None:
    """The reconciler's workers (on the leader only); if they end, the operator stops."""
    reconciler: Reconciler = memo.reconciler

    def on_lost() -> None:
        memo.lost_leadership = True
        memo.stop_flag.set()

    try:
        if memo.elector is None:
            await reconciler.run()
        else:
            await run_while_leading(memo.elector, reconciler.run, on_lost)
    except Exception:
        log.exception("the reconciler stopped")
        memo.stop_flag.set()
        raise


@kopf.on.cleanup()
async def on_operator_cleanup(memo: Any, **_: Any) -> None:
    """Stop the workers (a leader releases its Lease), the metrics endpoint, the client."""
    # Kopf waits on a threading.Event stop flag in an executor thread: set, it ends.
    memo.stop_flag.set()
    memo.control.cancel()
    await asyncio.gather(memo.control, return_exceptions=True)
    if memo.get("metrics_server") is not None:
        await memo.metrics_server.cleanup()
    await memo.reconciler.kube.aclose()
    if memo.elector is not None:
        await memo.elector.kube.aclose()
    await asyncio.to_thread(memo.reconciler.tracer.shutdown)


@kopf.on.login()
async def on_operator_login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """The same credentials as our own client, renewed when Kopf logs in again."""
    login = await asyncio.to_thread(build_connection_info, memo.kube, memo.get("login"))
    memo.login = login
    return login


@kopf.on.event(API_GROUP, API_VERSION, SESSION_PLURAL)
async def on_session_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A session was listed, changed or deleted."""
    memo.reconciler.observe(Kind.SESSION, type, dict(body))


@kopf.on.event(API_GROUP, API_VERSION, AGENT_PLURAL)
async def on_agent_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """An Agent was listed, changed or deleted (its session is woken too)."""
    memo.reconciler.observe(Kind.AGENT, type, dict(body))


@kopf.on.event("v1", "pods", labels={LABEL_AGENT: kopf.PRESENT})
async def on_pod_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A pod of an Agent's changed: kept, and its Agent woken."""
    memo.reconciler.observe_pod(type, dict(body))
