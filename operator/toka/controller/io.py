"""The operator's I/O: idempotent creates, deletes, status writes and Events.

A 409 on create adopts the existing object only if its owner is ours (same
UID); anything else is an `OwnershipConflict` the caller reports. A 404 on
delete means done. Status writes are merge patches of the operator's own
fields, so they never touch the kernel's `status.run`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from toka.api.models import AgentSpec
from toka.controller.builders.meta import owned_by
from toka.kube.client import (
    CONFIGMAPS,
    EVENTS,
    PODS,
    SECRETS,
    ApiError,
    AsyncKube,
    Resource,
)

JSON = dict[str, Any]
log = logging.getLogger("toka.operator")
COMPONENT = "toka-operator"


class OwnershipConflict(Exception):
    """An object with our name exists and belongs to someone else."""


async def ensure_created(kube: AsyncKube, res: Resource, body: JSON) -> tuple[JSON, bool]:
    """The object, and whether this call created it."""
    ns = body["metadata"].get("namespace")
    try:
        return await kube.create(res, body, ns), True
    except ApiError as err:
        if not err.conflict:
            raise
    existing = await kube.get(res, body["metadata"]["name"], ns)
    refs = body["metadata"].get("ownerReferences") or []
    owners = [ref["uid"] for ref in refs]
    owner = refs[0] if refs else {"kind": "?", "name": "?"}
    if owners and not any(owned_by(existing, uid) for uid in owners):
        raise OwnershipConflict(
            f"{body['kind']} {ns}/{body['metadata']['name']} already exists and is not owned by "
            f"{owner['kind']} {owner['name']}"
        )
    return existing, False


async def delete_pod(kube: AsyncKube, name: str, namespace: str) -> None:
    await kube.delete(PODS, name, namespace, propagation="Background")


async def patch_status(
    kube: AsyncKube, res: Resource, name: str, namespace: str, status: JSON
) -> JSON | None:
    """The object as written; None if it is gone."""
    try:
        patched: JSON = await kube.patch(res, name, {"status": status}, namespace, sub="status")
        return patched
    except ApiError as err:
        if not err.not_found:
            raise
        return None


def compute_references(spec: AgentSpec) -> list[tuple[Resource, str, str | None, str]]:
    """(resource, name, key or None, field) of every Secret and ConfigMap the pod mounts."""
    refs: list[tuple[Resource, str, str | None, str]] = []
    llm = spec.llm
    if llm and llm.api_key_secret_ref:
        ref = llm.api_key_secret_ref
        refs.append((SECRETS, ref.name, ref.key, "llm.apiKeySecretRef"))
    if llm and llm.replay:
        ref2 = llm.replay.config_map_ref
        refs.append((CONFIGMAPS, ref2.name, ref2.key, "llm.replay.configMapRef"))
    workspace = spec.workspace
    if workspace and workspace.config_map:
        refs.append((CONFIGMAPS, workspace.config_map, None, "workspace.configMap"))
    if workspace and workspace.git and workspace.git.credentials_secret_ref:
        name = workspace.git.credentials_secret_ref.name
        refs.append((SECRETS, name, None, "workspace.git.credentialsSecretRef"))
    for server in spec.mcp_servers or ():
        if server.headers_secret_ref:
            field = f"mcpServers[{server.name}].headersSecretRef"
            refs.append((SECRETS, server.headers_secret_ref.name, None, field))
    return refs


async def missing_reference(
    kube: AsyncKube, namespace: str, spec: AgentSpec
) -> tuple[str, str] | None:
    """(reason, message) for the first Secret or ConfigMap the pod needs and cannot have.

    Checked before a pod is created, so the Agent names the missing object
    instead of leaving a pod stuck in ContainerCreating.
    """
    for res, name, key, field in compute_references(spec):
        kind = "Secret" if res is SECRETS else "ConfigMap"
        try:
            obj = await kube.get(res, name, namespace)
        except ApiError as err:
            if err.not_found:
                return (
                    f"{kind}NotFound",
                    f"{kind} {name!r} ({field}) not found in namespace {namespace}: create it"
                    + (f" with the key {key!r}" if key else ""),
                )
            if err.status == 403:
                continue  # not ours to read; the pod will show it
            raise
        data = {**(obj.get("data") or {}), **(obj.get("binaryData") or {})}
        if key is not None and key not in data:
            return (
                f"{kind}KeyNotFound",
                f"{kind} {name!r} has no key {key!r} ({field}); it has: "
                f"{', '.join(sorted(data)) or 'no keys'}",
            )
    return None


async def post_event(kube: AsyncKube, involved: JSON, kind: str, reason: str, message: str) -> None:
    """A core/v1 Event on `involved`; failures are logged, never raised (events are best effort)."""
    meta = involved["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await kube.create(EVENTS, event, meta["namespace"])
    except ApiError as err:
        log.warning(
            "event %s on %s/%s not posted: %s", reason, meta["namespace"], meta["name"], err
        )
