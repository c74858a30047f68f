"""Kopf settings: Kopf only watches (event handlers need no finalizer and store
nothing on the objects), so what is set here is how it watches: server-side
filtered pods, short batching, timeouts and retries."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import kopf

from toka.contract import DEFAULT_WATCH_TIMEOUT, WATCH_TIMEOUT_ENV
from toka.controller.builders.names import LABEL_AGENT


def watch_timeout(env: Mapping[str, str]) -> int:
    """Seconds each watch stream lasts (TOKA_WATCH_TIMEOUT); a clear error if not a number."""
    value = env.get(WATCH_TIMEOUT_ENV) or str(DEFAULT_WATCH_TIMEOUT)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{WATCH_TIMEOUT_ENV} must be whole seconds, at least 1: got {value!r}")
    return int(value)


def configure(settings: kopf.OperatorSettings) -> None:
    # Kopf's own Events only for problems; ours carry the transitions.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "toka-operator"
    settings.batching.error_delays = (1, 2, 4, 8, 10)
    settings.networking.error_backoffs = (0.5, 1, 2, 5)
    settings.networking.request_timeout = 60
    timeout = watch_timeout(os.environ)
    settings.watching.server_timeout = timeout
    settings.watching.client_timeout = timeout + 30
    settings.watching.connect_timeout = 10
    # Only Toka's pods: a label selector on the watch, not a client-side filter.
    settings.watching.label_selectors["v1", "pods"] = LABEL_AGENT
    settings.background.instant_exit_timeout = 0.1
