"""Small helpers shared by the integration tests: waiting on real objects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from toka.kube.client import EVENTS, SERVICEACCOUNTS, ApiError, AsyncKube, Resource

JSON = dict[str, Any]
TOKA_IMAGE = "ghcr.io/toka-dev/toka:dev"


async def wait_for(
    kube: AsyncKube,
    res: Resource,
    name: str,
    namespace: str | None,
    predicate: Callable[[JSON], bool],
    *,
    timeout: float = 60,
    what: str = "condition",
) -> JSON:
    """Watch one object until `predicate(object)` holds; fail with its last state."""
    last: JSON = {}

    async def run() -> JSON:
        nonlocal last
        while True:
            try:
                last = await kube.get(res, name, namespace)
                if predicate(last):
                    return last
                rv = last["metadata"]["resourceVersion"]
            except ApiError as err:
                if err.transient:
                    await asyncio.sleep(0.5)  # an API server still starting: not the question
                    continue
                if not err.not_found:
                    raise
                rv = None
            try:
                async for event in kube.watch(
                    res,
                    namespace,
                    resource_version=rv,
                    field_selector=f"metadata.name={name}",
                    timeout_seconds=30,
                ):
                    if event["type"] == "BOOKMARK":
                        continue
                    last = event["object"]
                    if event["type"] != "DELETED" and predicate(last):
                        return last
            except ApiError as err:
                # A restarted API server forgot old versions (410) or is still starting.
                if err.status != 410 and not err.transient:
                    raise
                await asyncio.sleep(0.5)

    try:
        return await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"{res.plural}/{name}: {what} not reached in {timeout}s; last status: "
            f"{last.get('status')}"
        ) from None


async def wait_gone(
    kube: AsyncKube, res: Resource, name: str, namespace: str | None, timeout: float = 60
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            await kube.get(res, name, namespace)
        except ApiError as err:
            if err.not_found:
                return
            raise
        await asyncio.sleep(0.1)
    raise AssertionError(f"{res.plural}/{name} still exists after {timeout}s")


def phase_is(*phases: str) -> Callable[[JSON], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def container_status(pod: JSON, name: str) -> JSON:
    status = pod.get("status") or {}
    for c in status.get("containerStatuses", []) + status.get("initContainerStatuses", []):
        if c["name"] == name:
            return c  # type: ignore[no-any-return]
    raise KeyError(name)


def toka_pod(name: str, containers: list[JSON], **spec: Any) -> JSON:
    """A pod the dev node agent serves (labelled toka.dev/agent)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"toka.dev/agent": name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 5,
            "containers": containers,
            **spec,
        },
    }


def py(name: str, code: str, **extra: Any) -> JSON:
    """A container running a Python snippet in Toka's image."""
    return {"name": name, "image": TOKA_IMAGE, "command": ["python3", "-c", code], **extra}


async def events_for(
    kube: AsyncKube, ns: str, name: str, *, until: str | None = None, timeout: float = 15
) -> list[JSON]:
    """Events about `name`, oldest first; with `until`, wait (bounded) for that reason to
    appear: the operator posts Events in the background, after the status they describe."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        items = (await kube.list(EVENTS, ns, field_selector=f"involvedObject.name={name}"))["items"]
        events = sorted(items, key=lambda e: e.get("lastTimestamp") or "")
        if until is None or any(e["reason"] == until for e in events) or loop.time() > deadline:
            return events
        await asyncio.sleep(0.2)


async def service_account_token(
    kube: AsyncKube, namespace: str, account: str, seconds: int = 3600
) -> str:
    """A token for a ServiceAccount from TokenRequest, as a projected volume gets one."""
    resp = await kube.create(
        SERVICEACCOUNTS,
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds},
        },
        namespace,
        name=account,
        sub="token",
    )
    return str(resp["status"]["token"])
