"""Owner references (how garbage collection deletes what an object created), and the
identity of an object read from the API server, which every manifest built for it names."""

from __future__ import annotations

from typing import Any

from toka.api.models import Agent, AgentSession

JSON = dict[str, Any]
Owner = Agent | AgentSession


def name_of(obj: Owner) -> str:
    """The object's name; an object read from the API server always has one."""
    if obj.metadata.name is None:
        raise ValueError(f"{obj.kind} has no metadata.name")
    return obj.metadata.name


def namespace_of(obj: Owner) -> str:
    """The object's namespace, where everything built for it is created."""
    if obj.metadata.namespace is None:
        raise ValueError(f"{obj.kind} {obj.metadata.name} has no metadata.namespace")
    return obj.metadata.namespace


def owner_reference(owner: Owner | JSON, *, controller: bool = True) -> JSON:
    """A reference to `owner`: a parsed object, or a body nothing has parsed (the session
    result's ConfigMap is built from the raw session)."""
    if isinstance(owner, dict):
        meta = owner["metadata"]
        api_version, kind, name, uid = owner["apiVersion"], owner["kind"], meta["name"], meta["uid"]
    else:
        api_version, kind, name = owner.api_version, owner.kind, name_of(owner)
        uid = owner.metadata.uid
        if uid is None:
            raise ValueError(f"{kind} {name} has no metadata.uid: only a stored object can own")
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: JSON, owner_uid: str) -> bool:
    """Whether an observed object (a pod, an Agent as listed) names `owner_uid` as owner."""
    return any(
        ref.get("uid") == owner_uid for ref in obj.get("metadata", {}).get("ownerReferences") or []
    )
