"""Install CustomResourceDefinitions and wait until the API server serves them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from toka.kube.client import CRDS, ApiError, AsyncKube, Resource

KINDS = {
    "ValidatingAdmissionPolicy": Resource(
        "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", namespaced=False
    ),
    "ValidatingAdmissionPolicyBinding": Resource(
        "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings", namespaced=False
    ),
}


async def ensure_crds(kube: AsyncKube, crds: Iterable[dict[str, Any]], timeout: float = 60) -> None:
    """Create or update each CRD (idempotent), then wait until it is established and served."""
    crds_list = list(crds)
    for crd in crds_list:
        name = crd["metadata"]["name"]
        try:
            await kube.create(CRDS, crd)
        except ApiError as err:
            if not err.conflict:
                raise
            current = await kube.get(CRDS, name)
            body = dict(
                crd,
                metadata={
                    **crd["metadata"],
                    "resourceVersion": current["metadata"]["resourceVersion"],
                },
            )
            await kube.replace(CRDS, name, body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in (c["metadata"]["name"] for c in crds_list):
        while True:
            crd = await kube.get(CRDS, name)
            conds = {
                c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []
            }
            if conds.get("Established") == "True":
                break
            if loop.time() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s: {conds}")
            await asyncio.sleep(0.1)
    # Established is not yet served: the API server answers 429 "storage is
    # (re)initializing" for a moment. Callers get a CRD they can list.
    for crd in crds_list:
        spec = crd["spec"]
        served = next(v["name"] for v in spec["versions"] if v.get("storage"))
        res = Resource(
            spec["group"], served, spec["names"]["plural"], spec["scope"] == "Namespaced"
        )
        while True:
            try:
                await kube.list(res)
                break
            except ApiError as err:
                if not err.transient or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def apply_cluster_manifests(kube: AsyncKube, manifests: Iterable[dict[str, Any]]) -> None:
    """Server-side apply of cluster-scoped objects (the admission policies)."""
    for doc in manifests:
        res = KINDS[doc["kind"]]
        await kube.patch(
            res, doc["metadata"]["name"], doc, patch_type="apply", field_manager="toka", force=True
        )
