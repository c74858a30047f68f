"""Names and labels of everything the operator creates.

The label keys are the pod contract's (`toka.contract`), imported here so the
builders' users find names and labels in one place.
"""

from __future__ import annotations

import hashlib

from toka.api.base import MAX_NAME
from toka.contract import (
    LABEL_AGENT,
    LABEL_ATTEMPT,
    LABEL_MANAGED_BY,
    LABEL_PARENT,
    LABEL_SESSION,
    LABEL_SPAWN_DEPTH,
    LABEL_WORKSTREAM,
    MANAGED_BY,
)

__all__ = [
    "LABEL_AGENT",
    "LABEL_ATTEMPT",
    "LABEL_MANAGED_BY",
    "LABEL_PARENT",
    "LABEL_SESSION",
    "LABEL_SPAWN_DEPTH",
    "LABEL_WORKSTREAM",
    "MANAGED_BY",
    "agent_object_name",
    "attempt_of",
    "pod_name",
    "recording_configmap_name",
    "result_configmap_name",
    "session_result_configmap_name",
]


def agent_object_name(session: str, agent: str) -> str:
    """`<session>-<agent>`, shortened with a hash when over 63 characters (stays unique)."""
    name = f"{session}-{agent}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def pod_name(agent: str, attempt: int) -> str:
    return f"{agent}-{attempt}"


def attempt_of(pod: str, agent: str) -> int | None:
    """The attempt number of a pod named by `pod_name`, or None."""
    prefix = f"{agent}-"
    if not pod.startswith(prefix):
        return None
    tail = pod[len(prefix) :]
    return int(tail) if tail.isdigit() else None


def result_configmap_name(agent: str) -> str:
    """The ConfigMap holding an Agent's result bundle. Object names are DNS labels (no
    dots), so the dotted suffix keeps it apart from any other object's name."""
    return f"{agent}.result"


def recording_configmap_name(agent: str) -> str:
    """The ConfigMap an Agent's kernel writes its recording to, in record mode."""
    return f"{agent}.recording"


def session_result_configmap_name(session: str) -> str:
    """The ConfigMap holding a session's result bundle."""
    return f"{session}.session-result"
