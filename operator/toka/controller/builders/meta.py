"""Owner references: how garbage collection deletes what an object created."""

from __future__ import annotations

from typing import Any

JSON = dict[str, Any]


def owner_reference(owner: JSON, *, controller: bool = True) -> JSON:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: JSON, owner_uid: str) -> bool:
    return any(
        ref.get("uid") == owner_uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )
