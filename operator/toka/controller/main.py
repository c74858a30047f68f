"""`toka operator`: the table of contents.

    settings.py     Kopf settings (finalizer, storages, retries, watch filters)
    handlers.py     Kopf handlers: thin adapters → runtime
    runtime.py      one reconcile: read → reconcile/ (pure) → io.py (idempotent)
    reconcile/      pure plans for sessions and agents
    builders/       pure manifests: Agent, Pod, ServiceAccount, Role, RoleBinding
    io.py           creates, deletes, status writes, Events
    metrics.py      the operator's Prometheus metrics, from what it observes

One replica, `--standalone` (no peering); liveness on Kopf's probe endpoint,
`/metrics` on `--metrics-addr` when given.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

import kopf

from toka import tracing
from toka.controller import handlers  # noqa: F401  (registers the handlers)
from toka.controller.builders.pod import PodConfig
from toka.controller.runtime import OperatorConfig
from toka.kube.config import KubeConfig
from toka.kube.kubeconfig import from_env
from toka.logs import configure

# The operator's environment names the cluster's LLM defaults; kernels inherit them.
# Identifiers and switches only: a key never travels this way.
LLM_DEFAULTS = (
    "LLM_PROVIDER",
    "LLM_MODEL",
    "LLM_BASE_URL",
    "LLM_RATE_LIMIT",
    "LLM_TIMEOUT",
    "LLM_DEBUG",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
)


def compute_llm_defaults(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The LLM settings of the operator's environment that every kernel gets."""
    return tuple((name, env[name]) for name in LLM_DEFAULTS if env.get(name))


def run(
    *,
    namespaces: Sequence[str] = (),
    liveness: str | None = "http://0.0.0.0:8080/healthz",
    image: str | None = None,
    stop_flag: asyncio.Event | None = None,
    verbose: bool = False,
    kube: KubeConfig | None = None,
    metrics: str | None = None,
) -> None:
    """Run until stopped; `kube` defaults to `from_env()`, loaded before Kopf starts so
    a kubeconfig error is the first thing said (ConfigError)."""
    configure(verbose=verbose)
    kube = kube or from_env()
    pod = PodConfig(
        llm_defaults=compute_llm_defaults(os.environ), tracing_env=tracing.kernel_env(os.environ)
    )
    config = OperatorConfig(pod=replace(pod, image=image) if image else pod, metrics_addr=metrics)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=config, kube=kube),
        stop_flag=stop_flag,
    )
