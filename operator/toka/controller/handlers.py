"""Kopf handlers: one-screen adapters from events to `Runtime`.

Sessions and Agents each get a daemon (a reconcile loop woken by events);
events on Agents wake their session, events on pods wake their Agent. The
pod index is Kopf's, fed by a server-side filtered watch. Handlers return
nothing, so Kopf writes nothing into status.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Mapping
from typing import Any

import kopf

from toka import tracing
from toka.controller.builders.names import LABEL_AGENT, LABEL_SESSION
from toka.controller.login import build_connection_info
from toka.controller.metrics import serve_metrics
from toka.controller.runtime import OperatorConfig, Runtime
from toka.controller.settings import configure
from toka.kube.client import AsyncKube
from toka.kube.kubeconfig import from_env

GROUP, VERSION = "toka.dev", "v1alpha1"
POD_FIELDS = ("metadata", "spec", "status")
PodIndex = kopf.Index[tuple[str, str], dict[str, Any]]


@kopf.on.startup()
async def on_operator_startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Configure Kopf and build the runtime shared by all handlers."""
    configure(settings)
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    memo.kube = memo.get("kube") or await asyncio.to_thread(from_env)
    tracer = tracing.from_env("toka-operator", os.environ)
    memo.runtime = Runtime(AsyncKube(memo.kube), config, tracer)
    if config.metrics_addr:
        memo.metrics_server = await serve_metrics(
            memo.runtime.metrics.registry, config.metrics_addr
        )


@kopf.on.cleanup()
async def on_operator_cleanup(memo: Any, **_: Any) -> None:
    """Close the API client and the metrics endpoint; export the last spans."""
    if memo.get("metrics_server") is not None:
        await memo.metrics_server.cleanup()
    await memo.runtime.kube.aclose()
    await asyncio.to_thread(memo.runtime.tracer.shutdown)


@kopf.on.login()
async def on_operator_login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """The same credentials as our own client, renewed when Kopf logs in again."""
    login = await asyncio.to_thread(build_connection_info, memo.kube, memo.get("login"))
    memo.login = login
    return login


@kopf.index("v1", "pods", labels={LABEL_AGENT: kopf.PRESENT})
def pods_by_agent(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    """Toka's pods by (namespace, agent), for the agent reconciler."""
    return {(namespace, labels[LABEL_AGENT]): {k: dict(body[k]) for k in POD_FIELDS if k in body}}


@kopf.on.event("v1", "pods", labels={LABEL_AGENT: kopf.PRESENT})
def on_pod_event(namespace: str | None, labels: Mapping[str, str], memo: Any, **_: Any) -> None:
    """A pod changed: wake its Agent."""
    memo.runtime.wake("agent", namespace, labels[LABEL_AGENT])


@kopf.on.event(GROUP, VERSION, "agents")
def on_agent_event(
    namespace: str | None, name: str, labels: Mapping[str, str], memo: Any, **_: Any
) -> None:
    """An Agent changed: wake it and its session."""
    memo.runtime.wake("agent", namespace, name)
    if LABEL_SESSION in labels:
        memo.runtime.wake("session", namespace, labels[LABEL_SESSION])


@kopf.on.event(GROUP, VERSION, "agentsessions")
def on_session_event(namespace: str | None, name: str, memo: Any, **_: Any) -> None:
    """A session changed: wake it."""
    memo.runtime.wake("session", namespace, name)


def snapshot(body: kopf.Body) -> dict[str, Any]:
    """A plain copy of Kopf's live body, as it is now."""
    return copy.deepcopy(dict(body))


@kopf.daemon(GROUP, VERSION, "agentsessions", cancellation_timeout=2, backoff=1)
async def on_session_daemon(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    stopped: kopf.DaemonStopped,
    memo: Any,
    **_: Any,
) -> None:
    """Reconcile the session whenever something about it changes."""
    runtime: Runtime = memo.runtime

    async def once() -> float | None:
        return await runtime.reconcile_session(snapshot(body))

    await runtime.loop("session", namespace or "", name, stopped, once)


@kopf.daemon(GROUP, VERSION, "agents", cancellation_timeout=2, backoff=1)
async def on_agent_daemon(
    body: kopf.Body,
    name: str,
    namespace: str | None,
    stopped: kopf.DaemonStopped,
    memo: Any,
    pods_by_agent: PodIndex | None = None,
    **_: Any,
) -> None:
    """Reconcile the Agent whenever it or its pods change."""
    runtime: Runtime = memo.runtime
    index = pods_by_agent
    assert index is not None  # Kopf injects every index into resource handlers

    def pods_of(key: tuple[str, str]) -> list[dict[str, Any]]:
        return list(index.get(key, []))

    async def once() -> float | None:
        return await runtime.reconcile_agent(snapshot(body), pods_of)

    await runtime.loop("agent", namespace or "", name, stopped, once)
