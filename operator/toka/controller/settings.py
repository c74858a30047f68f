"""Kopf settings: everything Kopf stores lives under toka.dev/, retries are short,
and watches on pods are filtered by the server, not in our memory."""

from __future__ import annotations

import logging

import kopf

from toka.controller.builders.names import LABEL_AGENT

FINALIZER = "toka.dev/finalizer"


def configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="toka.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="toka.dev", key="last-handled-configuration"
    )
    # Kopf's own Events only for problems; ours carry the transitions.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "toka-operator"
    settings.batching.error_delays = (1, 2, 4, 8, 10)
    settings.networking.error_backoffs = (0.5, 1, 2, 5)
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Only Toka's pods: a label selector on the watch, not a client-side filter.
    settings.watching.label_selectors["v1", "pods"] = LABEL_AGENT
    settings.background.instant_exit_timeout = 0.1
    settings.execution.max_workers = 20
