"""Generate the CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema 2020-12; the API server wants a structural
OpenAPI v3 subset. The translation: inline `$ref`s, turn `Optional[X]`
(`anyOf [X, null]`) into X, drop `title`, turn `const` into a one-value
`enum`, make numeric `exclusiveMinimum` boolean, and carry the
`x-kubernetes-*` keywords the models attach. Anything the translation does
not know raises, so a new construct cannot slip into a CRD unvalidated.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from toka.api.base import DNS_LABEL_PATTERN, MAX_NAME
from toka.api.models import AgentSessionSpec, AgentSessionStatus, AgentSpec, AgentStatus
from toka.contract import (
    AGENT_KIND,
    AGENT_PLURAL,
    API_GROUP,
    API_VERSION,
    GROUP_VERSION,
    SESSION_KIND,
    SESSION_PLURAL,
)

_PASSTHROUGH = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "minProperties",
    "maxProperties",
    "required",
}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI schema of `model`, with descriptions and bounds."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", ...) is None:
            del rest["default"]
        return _convert({**options[0], **rest}, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return _convert({**node["allOf"][0], **rest}, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _PASSTHROUGH or key.startswith("x-kubernetes-"):
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {k: _convert(v, defs) for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs)
        elif key == "additionalProperties":
            out["additionalProperties"] = (
                _convert(value, defs) if isinstance(value, dict) else value
            )
        elif key == "propertyNames":
            # dict[Literal[...], X]: keep the value type; keys are documented.
            continue
        elif key in ("title", "$defs"):
            continue
        else:
            raise ValueError(f"schema keyword {key!r} has no structural translation: {node}")
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "default" in out and isinstance(out["default"], dict) and not out["default"]:
        out["default"] = {}
    return out


def _name_rules(kind: str) -> list[dict[str, str]]:
    return [
        {
            "rule": f"self.metadata.name.size() <= {MAX_NAME}",
            "message": f"metadata.name: an {kind} name must be at most {MAX_NAME} characters "
            "(it names the agents' pods and ServiceAccounts)",
        },
        {
            "rule": f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
            "message": f"metadata.name: an {kind} name must be a DNS label (lowercase letters, "
            "digits and '-', starting and ending with a letter or digit)",
        },
    ]


def _crd(
    *,
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"API version: {GROUP_VERSION}."},
            "kind": {"type": "string", "description": f"Kind: {kind}."},
            "metadata": {"type": "object"},
            "spec": {"description": "Desired state.", **structural_schema(spec)},
            "status": {"description": "Observed state.", **structural_schema(status)},
        },
        "x-kubernetes-validations": _name_rules(kind),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["toka"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def agent_session_crd() -> dict[str, Any]:
    return _crd(
        kind=SESSION_KIND,
        plural=SESSION_PLURAL,
        short="asess",
        spec=AgentSessionSpec,
        status=AgentSessionStatus,
        description="A set of LLM agents with dependencies, a shared rate limit and a token "
        "budget. The operator runs each agent as an Agent and its Pod.",
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {
                "name": "Progress",
                "type": "string",
                "jsonPath": ".status.progress",
                "description": "Tasks done out of total.",
            },
            {"name": "Agents", "type": "integer", "jsonPath": ".status.agents.total"},
            {"name": "Tokens", "type": "integer", "jsonPath": ".status.budget.usedTokens"},
        ],
    )


def agent_crd() -> dict[str, Any]:
    return _crd(
        kind=AGENT_KIND,
        plural=AGENT_PLURAL,
        short="ag",
        spec=AgentSpec,
        status=AgentStatus,
        description="One LLM agent run as a Pod: the agent, its kernel (capability "
        "enforcement, LLM calls) and its tools sidecar.",
        columns=[
            {"name": "Session", "type": "string", "jsonPath": ".spec.sessionRef.name"},
            {"name": "Domain", "type": "string", "jsonPath": ".spec.domain"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Progress", "type": "string", "jsonPath": ".status.run.progress"},
            {"name": "Task", "type": "string", "jsonPath": ".status.run.currentTask"},
        ],
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD, as written to `crds/`."""
    return {
        "toka.dev_agentsessions.yaml": agent_session_crd(),
        "toka.dev_agents.yaml": agent_crd(),
    }
