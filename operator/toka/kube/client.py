"""A thin async Kubernetes REST client on httpx.

Why not the `kubernetes` package: the kernel sidecar has a 50 MB RSS budget
and needs only a handful of calls, and one small client shared by the
kernel, the operator's I/O layer, the dev node agent and the tests is one
way to do a thing. Errors carry the API server's `Status` (code, reason,
message) so callers can act on 404/409/403/422 precisely.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from toka.contract import AGENT_PLURAL, API_GROUP, API_VERSION, SESSION_PLURAL
from toka.kube.config import KubeConfig

JSON = dict[str, Any]
PatchType = Literal["merge", "strategic", "json", "apply"]
_PATCH_CONTENT = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, sub: str | None = None
    ) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


PODS = Resource("", "v1", "pods")
SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
NODES = Resource("", "v1", "nodes", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
CLUSTERROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", namespaced=False)
CLUSTERROLEBINDINGS = Resource(
    "rbac.authorization.k8s.io", "v1", "clusterrolebindings", namespaced=False
)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
AGENTS = Resource(API_GROUP, API_VERSION, AGENT_PLURAL)
SESSIONS = Resource(API_GROUP, API_VERSION, SESSION_PLURAL)


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status fields."""

    def __init__(self, status: int, reason: str, message: str, body: JSON | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def transient(self) -> bool:
        """Worth retrying as is: throttled, or the API server starting or failing."""
        return self.status == 429 or self.status >= 500


def _error(resp: httpx.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(
        resp.status_code,
        str(body.get("reason") or resp.reason_phrase),
        str(body.get("message") or resp.text[:500]),
        body,
    )


class AsyncKube:
    """Calls to one API server as one identity."""

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0, concurrency: int = 12):
        self.config = config
        # At most `concurrency` requests in flight, each on a kept-alive connection:
        # httpcore scans its pool and its waiting requests on every request, so an
        # unbounded burst costs CPU quadratically; a burst above the keep-alive count
        # would also close connections and pay a TLS handshake for each new one.
        # Watches hold connections of their own, above that count.
        self._slots = asyncio.Semaphore(concurrency)
        connections = concurrency + 8
        self._client = httpx.AsyncClient(
            base_url=config.server,
            verify=config.ssl_context(),
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"Accept": "application/json", "User-Agent": "toka"},
        )

    async def __aenter__(self) -> AsyncKube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.config.credential is not None:
            # An exec plugin may run here: not on the event loop.
            authorization = await asyncio.to_thread(self.config.authorization)
        else:
            authorization = self.config.authorization()
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def _renewed(self, refused: httpx.Response) -> bool:
        """After a 401: whether the credential was obtained again, so the call is worth
        repeating once (a token revoked or expired before its stated time)."""
        credential = self.config.credential
        if credential is None or refused.status_code != 401:
            return False
        await asyncio.to_thread(credential.renew, refused.request.headers.get("Authorization"))
        return True

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        content = json.dumps(body) if body is not None else None
        for attempt in (1, 2):
            headers = await self._headers(
                {"Content-Type": content_type} if body is not None else None
            )
            if accept:
                headers["Accept"] = accept
            async with self._slots:
                resp = await self._client.request(
                    method,
                    path,
                    content=content,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    headers=headers,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            if resp.status_code < 400 or attempt == 2 or not await self._renewed(resp):
                break
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json() if resp.content else {}

    # --- verbs ---

    async def get(
        self, res: Resource, name: str, namespace: str | None = None, sub: str | None = None
    ) -> JSON:
        result: JSON = await self.request("GET", res.path(namespace, name, sub))
        return result

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        result: JSON = await self.request(
            "GET",
            res.path(namespace),
            params={"labelSelector": label_selector, "fieldSelector": field_selector},
        )
        return result

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
        """POST; `field_validation="Strict"` rejects unknown fields as kubectl does."""
        params = {"fieldValidation": field_validation, "dryRun": "All" if dry_run else None}
        result: JSON = await self.request(
            "POST", res.path(namespace, name, sub), body=body, params=params
        )
        return result

    async def replace(
        self,
        res: Resource,
        name: str,
        body: JSON,
        namespace: str | None = None,
        sub: str | None = None,
    ) -> JSON:
        result: JSON = await self.request("PUT", res.path(namespace, name, sub), body=body)
        return result

    async def patch(
        self,
        res: Resource,
        name: str,
        body: Any,
        namespace: str | None = None,
        *,
        sub: str | None = None,
        patch_type: PatchType = "merge",
        field_manager: str | None = None,
        force: bool = False,
    ) -> JSON:
        params: dict[str, Any] = {"fieldManager": field_manager}
        if patch_type == "apply":
            params["force"] = "true" if force else None
        result: JSON = await self.request(
            "PATCH",
            res.path(namespace, name, sub),
            body=body,
            params=params,
            content_type=_PATCH_CONTENT[patch_type],
        )
        return result

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
        """Delete; a 404 means it is already gone, which is what we wanted."""
        body: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if propagation:
            body["propagationPolicy"] = propagation
        if preconditions_uid:
            body["preconditions"] = {"uid": preconditions_uid}
        try:
            result: JSON = await self.request("DELETE", res.path(namespace, name), body=body)
            return result
        except ApiError as err:
            if err.not_found:
                return None
            raise

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[JSON]:
        """Watch events (`{"type", "object"}`) from `resource_version`, bookmarks included.

        Ends when the server closes the stream; a 410 surfaces as ApiError so
        the caller relists.
        """
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
            "timeoutSeconds": str(timeout_seconds),
        }
        for attempt in (1, 2):
            async with self._client.stream(
                "GET",
                res.path(namespace),
                params={k: v for k, v in params.items() if v is not None},
                headers=await self._headers(),
                timeout=httpx.Timeout(timeout_seconds + 30, connect=5.0),
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    if attempt == 1 and await self._renewed(resp):
                        continue
                    raise _error(resp)
                async for line in resp.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        raise ApiError(
                            int(status.get("code", 500)),
                            str(status.get("reason", "")),
                            str(status.get("message", "")),
                            status,
                        )
                    yield event
                return

    async def list_and_watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        stop: asyncio.Event | None = None,
    ) -> AsyncIterator[JSON]:
        """Every object as ADDED from a list, then watch events; relists on 410, on
        429/5xx and on connection failures, forever (an informer's loop)."""
        while stop is None or not stop.is_set():
            try:
                listing = await self.list(
                    res, namespace, label_selector=label_selector, field_selector=field_selector
                )
            except (httpx.TransportError, httpx.StreamError):
                await asyncio.sleep(0.5)
                continue
            except ApiError as err:
                if not err.transient:
                    raise
                await asyncio.sleep(1.0)
                continue
            rv = listing["metadata"]["resourceVersion"]
            for item in listing.get("items", []):
                yield {"type": "ADDED", "object": item}
            try:
                while stop is None or not stop.is_set():
                    async for event in self.watch(
                        res,
                        namespace,
                        resource_version=rv,
                        label_selector=label_selector,
                        field_selector=field_selector,
                    ):
                        rv = event["object"]["metadata"].get("resourceVersion", rv)
                        if event["type"] != "BOOKMARK":
                            yield event
            except ApiError as err:
                if err.status != 410 and not err.transient:
                    raise
                if err.transient:
                    await asyncio.sleep(1.0)
            except (httpx.TransportError, httpx.StreamError):
                await asyncio.sleep(0.5)
