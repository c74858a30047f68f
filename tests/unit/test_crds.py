"""The CRDs are generated from the models and say what every field is and how big it may be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from toka.api.crdgen import all_crds
from toka.api.manifests import generated_files

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize("name", sorted(generated_files()))
def test_generated_files_are_not_stale(name: str) -> None:
    path = REPO / name
    assert path.exists(), f"{path} missing: run `toka crds`"
    assert path.read_text() == generated_files()[name], f"{path} is stale: run `toka crds`"


def _walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for key, child in (node.get("properties") or {}).items():
        out += _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def _fields(kind: str) -> list[tuple[str, dict[str, Any]]]:
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == kind)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return _walk(schema["properties"]["spec"], "spec") + _walk(
        schema["properties"]["status"], "status"
    )


@pytest.mark.parametrize("kind", ["AgentSession", "Agent"])
def test_every_field_has_a_description(kind: str) -> None:
    missing = [
        p
        for p, node in _fields(kind)
        if not p.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []


@pytest.mark.parametrize("kind", ["AgentSession", "Agent"])
def test_every_string_and_list_is_bounded(kind: str) -> None:
    unbounded = [
        p
        for p, node in _fields(kind)
        if (
            node.get("type") == "string"
            and "maxLength" not in node
            and "enum" not in node
            and node.get("format") != "date-time"
        )
        or (node.get("type") == "array" and "maxItems" not in node)
        or (
            node.get("type") == "object"
            and "additionalProperties" in node
            and "maxProperties" not in node
            and "propertyNames" not in node
            and not p.endswith(("requests", "limits"))
        )
    ]
    assert unbounded == []


def test_lists_keyed_by_name_are_list_maps_and_capabilities_are_sets() -> None:
    fields = dict(_fields("AgentSession"))
    assert fields["spec.agents"]["x-kubernetes-list-type"] == "map"
    assert fields["spec.agents"]["x-kubernetes-list-map-keys"] == ["name"]
    assert fields["spec.agents[].dependsOn"]["x-kubernetes-list-type"] == "set"
    assert fields["spec.agents[].capabilities"]["x-kubernetes-list-type"] == "set"
    assert fields["spec.agents[].tasks"]["x-kubernetes-list-map-keys"] == ["name"]
    assert fields["status.conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    for servers in ("spec.mcpServers", "spec.agents[].mcpServers"):
        assert fields[servers]["x-kubernetes-list-type"] == "map"
        assert fields[servers]["x-kubernetes-list-map-keys"] == ["name"]


def test_the_agent_status_has_both_owners_fields_and_the_kernels_are_under_run() -> None:
    status = dict(_fields("Agent"))
    operator = {
        "observedGeneration",
        "phase",
        "conditions",
        "limits",
        "podName",
        "attempts",
        "spawnResults",
        "startTime",
        "completionTime",
        "message",
    }
    assert operator | {"run"} == set(status["status"]["properties"])
    assert {
        "progress",
        "percent",
        "currentTask",
        "tasks",
        "usage",
        "lastHeartbeatTime",
        "lastObservation",
        "denials",
        "spawnRequests",
        "workspace",
        "sandbox",
        "mcpServers",
        "truncatedBytes",
    } == set(status["status.run"]["properties"])


def test_no_floats_anywhere() -> None:
    for kind in ("AgentSession", "Agent"):
        assert [p for p, n in _fields(kind) if n.get("type") == "number"] == []
