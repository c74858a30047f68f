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
import logging
from collections.abc import Sequence

import kopf

from toka.controller import handlers  # noqa: F401  (registers the handlers)
from toka.controller.builders.pod import PodConfig
from toka.controller.runtime import OperatorConfig


def run(
    *,
    namespaces: Sequence[str] = (),
    liveness: str | None = "http://0.0.0.0:8080/healthz",
    image: str | None = None,
    stop_flag: asyncio.Event | None = None,
    verbose: bool = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = OperatorConfig(pod=PodConfig(image=image) if image else PodConfig())
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        memo=kopf.Memo(config=config),
        stop_flag=stop_flag,
    )
