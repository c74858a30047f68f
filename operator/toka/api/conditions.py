"""Conditions, as Kubernetes API conventions define them.

A status writer recomputes the whole list each time; `merge_conditions` keeps
`lastTransitionTime` unless the status flipped, so reconciling twice with the
same observations writes the same status (and the API server sees no change).
Reasons are CamelCase words, documented in the README's troubleshooting table.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from toka.api.base import MAX_MESSAGE, KubeModel


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(KubeModel):
    type: Annotated[
        str,
        StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Z][A-Za-z0-9]*$"),
    ] = Field(description="Condition type, e.g. Ready.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=128, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
        ),
    ] = Field(description="CamelCase reason for the last transition.")
    message: Annotated[str, StringConstraints(max_length=MAX_MESSAGE)] = Field(
        default="", description="Human-readable details."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="Generation of the spec the condition was set for."
    )
    last_transition_time: datetime = Field(description="When the status last changed.")


def truncate(text: str, limit: int = MAX_MESSAGE) -> str:
    """Cut `text` to `limit` characters, marking the cut, so status writes never 422."""
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def make_condition(
    type_: str,
    status: bool | ConditionStatus,
    reason: str,
    message: str = "",
    *,
    now: datetime,
    generation: int | None = None,
) -> Condition:
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=truncate(message),
        observed_generation=generation,
        last_transition_time=now,
    )


@dataclass(frozen=True)
class ConditionStamp:
    """When a status writer observed, and which spec generation: stamped on each condition
    it computes in one pass."""

    now: datetime
    generation: int | None = None

    def make(
        self, type_: str, status: bool | ConditionStatus, reason: str, message: str = ""
    ) -> Condition:
        return make_condition(
            type_, status, reason, message, now=self.now, generation=self.generation
        )


def merge_conditions(
    previous: Iterable[Condition] | None, current: Iterable[Condition]
) -> list[Condition]:
    """The new full list: `current`, keeping old transition times where status is unchanged.

    Types present before but not computed now are kept as they were, so one
    writer can compute a subset without erasing the rest; `drop_conditions` first
    removes those that no longer apply.
    """
    old = {c.type: c for c in previous or ()}
    out: dict[str, Condition] = dict(old)
    for cond in current:
        before = old.get(cond.type)
        if before is not None and before.status == cond.status:
            cond = cond.model_copy(update={"last_transition_time": before.last_transition_time})
        out[cond.type] = cond
    return list(out.values())


def drop_conditions(
    conditions: Iterable[Condition] | None, types: Collection[str]
) -> list[Condition]:
    """`conditions` but those of `types`: for conditions that no longer apply, which
    `merge_conditions` would otherwise keep as they were."""
    return [c for c in conditions or () if c.type not in types]


def find_condition(conditions: Iterable[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or () if c.type == type_), None)


def is_true(conditions: Iterable[Condition] | None, type_: str) -> bool:
    cond = find_condition(conditions, type_)
    return cond is not None and cond.status == ConditionStatus.TRUE
