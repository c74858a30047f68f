"""Shared model plumbing: camelCase aliases, Kubernetes schema hints, bounds.

Every model of the API derives from `KubeModel`. Field descriptions become
the CRD's descriptions, and `k8s(...)` attaches the `x-kubernetes-*` keywords
(list types, CEL rules) that pydantic has no words for.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasGenerator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

# The API's group and version, spelled once in the contract every side shares.
from toka.contract import API_GROUP as API_GROUP
from toka.contract import API_VERSION as API_VERSION
from toka.contract import GROUP_VERSION as GROUP_VERSION

# Bounds (docs/architecture.md, The API): they keep CEL within the API server's cost budget.
MAX_AGENTS = 128
MAX_TASKS = 100
MAX_DEPENDS_ON = 32
MAX_CAPABILITIES = 64
MAX_NAME = 63
MAX_SUMMARY = 1024
MAX_MESSAGE = 1024
MAX_DESCRIPTION = 4096
MAX_CONDITIONS = 16

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL_RE = re.compile(DNS_LABEL_PATTERN)


def is_dns_label(name: str) -> bool:
    return len(name) <= MAX_NAME and _DNS_LABEL_RE.match(name) is not None


def _alias(name: str) -> str:
    return _SPECIAL_ALIASES.get(name, to_camel(name))


# Where Kubernetes spelling is not plain camelCase.
_SPECIAL_ALIASES = {"base_url": "baseURL", "ttl_seconds_after_finished": "ttlSecondsAfterFinished"}


class KubeModel(BaseModel):
    """Base of every API object: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=_alias),
        populate_by_name=True,
        extra="ignore",
        validate_default=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: aliases, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def merge_patch(self, *, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
        """A JSON merge patch that writes this object whole: unset fields become null
        (which removes them), so nothing of an earlier write lingers. `exclude` names
        fields another writer owns; they are left out, untouched."""
        out = self.wire()
        for name, field in type(self).model_fields.items():
            alias = field.alias or name
            if alias not in out:
                out[alias] = None
        for key in exclude:
            out.pop(key, None)
        return out


def k8s(
    *,
    list_type: str | None = None,
    map_keys: list[str] | None = None,
    rules: list[tuple[str, str] | tuple[str, str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Schema keywords pydantic cannot express, for `json_schema_extra`.

    `rules` are `(rule, message)` or `(rule, message, fieldPath)` CEL rules.
    """
    out: dict[str, Any] = dict(extra)
    if list_type:
        out["x-kubernetes-list-type"] = list_type
    if map_keys:
        out["x-kubernetes-list-map-keys"] = map_keys
    if rules:
        out["x-kubernetes-validations"] = [
            {"rule": r[0], "message": r[1], **({"fieldPath": r[2]} if len(r) > 2 else {})}
            for r in rules
        ]
    return out
