"""`toka operator`: the table of contents.

    settings.py     Kopf settings (finalizer, storages, retries, watch filters)
    handlers.py     Kopf handlers: thin adapters → runtime
    runtime.py      one reconcile: read → reconcile/ (pure) → io.py (idempotent)
    reconcile/      pure plans for sessions and agents
    builders/       pure manifests: Agent, Pod, ServiceAccount, Role, RoleBinding
    io.py           creates, deletes, status writes, Events

One replica, `--standalone` (no peering); liveness on Kopf's probe endpoint.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import replace

import kopf

from toka.controller import handlers  # noqa: F401  (registers the handlers)
from toka.controller.builders.pod import PodConfig
from toka.controller.runtime import OperatorConfig
from toka.logs import configure

# The operator's environment names the cluster's LLM defaults; kernels inherit them.
LLM_DEFAULTS = ("LLM_PROVIDER", "LLM_MODEL", "LLM_BASE_URL", "LLM_RATE_LIMIT", "LLM_TIMEOUT")


def run(
    *,
    namespaces: Sequence[str] = (),
    liveness: str | None = "http://0.0.0.0:8080/healthz",
    image: str | None = None,
    stop_flag: asyncio.Event | None = None,
    verbose: bool = False,
) -> None:
    configure(verbose=verbose)
    defaults = tuple((name, os.environ[name]) for name in LLM_DEFAULTS if os.environ.get(name))
    pod = PodConfig(llm_defaults=defaults)
    config = OperatorConfig(pod=replace(pod, image=image) if image else pod)
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=config),
        stop_flag=stop_flag,
    )
