"""An in-memory AsyncKube for the reconciler's unit tests: objects, and the calls made.

It keeps what an API server keeps of the verbs the operator uses (uids,
resourceVersions, 409 on a taken name, 404 on a missing object, merge
patches, the status subresource) and records every call, so a test states
"given these objects, the reconciler makes these calls". The real API
server is what the integration tier runs against; this is for the tables.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from toka.kube.client import ApiError, AsyncKube, Resource
from toka.kube.config import KubeConfig

JSON = dict[str, Any]
ObjKey = tuple[str, str | None, str]  # (plural, namespace, name)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class FakeKube(AsyncKube):
    def __init__(self) -> None:
        super().__init__(KubeConfig(server="https://fake.invalid"))
        self.objects: dict[ObjKey, JSON] = {}
        self.calls: list[tuple[str, str, str]] = []  # (verb, plural, name)
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)

    def add(self, res: Resource, body: JSON, namespace: str | None = None) -> JSON:
        """An object that exists before the test (not recorded as a call)."""
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta["resourceVersion"] = str(next(self._rv))
        obj.setdefault("apiVersion", res.api_version)
        self.objects[(res.plural, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] != "get" and c[0] != "list"]

    def _find(self, res: Resource, name: str, namespace: str | None) -> JSON:
        obj = self.objects.get((res.plural, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f"{res.plural} {name!r} not found")
        return obj

    async def get(
        self, res: Resource, name: str, namespace: str | None = None, sub: str | None = None
    ) -> JSON:
        self.calls.append(("get", res.plural, name))
        return copy.deepcopy(self._find(res, name, namespace))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        self.calls.append(("list", res.plural, label_selector or ""))
        wanted = dict(s.split("=", 1) for s in (label_selector or "").split(",") if "=" in s)
        items = [
            copy.deepcopy(o)
            for (plural, ns, _), o in self.objects.items()
            if plural == res.plural
            and ns == namespace
            and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        return {"items": items, "metadata": {"resourceVersion": str(next(self._rv))}}

    async def create(
        self,
        res: Resource,
        body: JSON,
        namespace: str | None = None,
        sub: str | None = None,
        name: str | None = None,
        *,
        field_validation: str | None = None,
        dry_run: bool = False,
    ) -> JSON:
        meta = body["metadata"]
        obj_name = meta.get("name") or f"{meta['generateName']}{next(self._uid)}"
        self.calls.append(("create", res.plural, obj_name))
        if (res.plural, namespace, obj_name) in self.objects:
            raise ApiError(409, "AlreadyExists", f"{res.plural} {obj_name!r} already exists")
        return self.add(res, {**body, "metadata": {**meta, "name": obj_name}}, namespace)

    async def replace(
        self,
        res: Resource,
        name: str,
        body: JSON,
        namespace: str | None = None,
        sub: str | None = None,
    ) -> JSON:
        self.calls.append(("replace", res.plural, name))
        current = self._find(res, name, namespace)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        return self.add(res, {**body, "metadata": {**current["metadata"]}}, namespace)

    async def patch(
        self,
        res: Resource,
        name: str,
        body: Any,
        namespace: str | None = None,
        *,
        sub: str | None = None,
        patch_type: str = "merge",
        field_manager: str | None = None,
        force: bool = False,
    ) -> JSON:
        self.calls.append((f"patch{'/' + sub if sub else ''}", res.plural, name))
        current = self._find(res, name, namespace)
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        if sub == "status":
            body = {"status": body.get("status")}
        patched = merge(current, body)
        patched["metadata"] = {**patched["metadata"], "uid": current["metadata"]["uid"]}
        return self.add(res, patched, namespace)

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
        propagation: str | None = None,
        preconditions_uid: str | None = None,
    ) -> JSON | None:
        self.calls.append(("delete", res.plural, name))
        return self.objects.pop((res.plural, namespace, name), None)
