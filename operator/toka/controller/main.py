"""`toka operator`: the table of contents.

    settings.py     Kopf settings (watch filters, timeouts)
    handlers.py     Kopf event handlers: thin adapters → reconciler
    reconciler.py   the store, a work queue and workers per kind, one reconcile
    queue.py        the work queue (dedup, per-key serialisation, backoff)
    leader.py       leader election on a Lease; writes fenced by leadership
    reconcile/      pure plans for sessions and agents
    builders/       pure manifests: Agent, Pod, ServiceAccount, Role, RoleBinding
    io.py           creates, deletes, status writes, Events
    metrics.py      Prometheus metrics: Toka's gauges, controller-runtime's counters

Kopf runs `--standalone` (no Kopf peering): with `--leader-elect` a Lease
decides which replica reconciles. Liveness on Kopf's probe endpoint,
`/metrics` on `--metrics-addr` when given.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

import kopf

from toka import tracing
from toka.controller import handlers  # noqa: F401  (registers the handlers)
from toka.controller.builders.pod import PodConfig
from toka.controller.leader import LeaderElection
from toka.controller.reconciler import OperatorConfig
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


class LeadershipLost(Exception):
    """The Lease was lost: the operator stopped so that it writes nothing more."""


def compute_llm_defaults(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The LLM settings of the operator's environment that every kernel gets."""
    return tuple((name, env[name]) for name in LLM_DEFAULTS if env.get(name))


def run(
    *,
    namespaces: Sequence[str] = (),
    liveness: str | None = "http://0.0.0.0:8080/healthz",
    image: str | None = None,
    stop_flag: threading.Event | None = None,
    verbose: bool = False,
    kube: KubeConfig | None = None,
    metrics: str | None = None,
    leader_election: LeaderElection | None = None,
    config: OperatorConfig | None = None,
) -> None:
    """Run until stopped; `kube` defaults to `from_env()`, loaded before Kopf starts so
    a kubeconfig error is the first thing said (ConfigError). Raises LeadershipLost
    when a leader lost its Lease."""
    configure(verbose=verbose)
    kube = kube or from_env()
    pod = PodConfig(
        llm_defaults=compute_llm_defaults(os.environ), tracing_env=tracing.kernel_env(os.environ)
    )
    config = replace(
        config or OperatorConfig(),
        pod=replace(pod, image=image) if image else pod,
        metrics_addr=metrics,
        namespaces=tuple(namespaces),
    )
    stop_flag = stop_flag or threading.Event()
    memo = kopf.Memo(config=config, kube=kube, leader_election=leader_election, stop_flag=stop_flag)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        memo=memo,
        stop_flag=stop_flag,
    )
    if memo.get("lost_leadership"):
        raise LeadershipLost("lost the leader election Lease: stopped")
