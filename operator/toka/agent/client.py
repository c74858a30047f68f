"""The agent's only link: HTTP to its kernel on TOKA_KERNEL_ADDR. No key, no token.

The kernel is a native sidecar: the kubelet restarts it if it exits, and it takes up
the Agent's status where it left off. A request the kernel dropped on its way out is
sent again once it answers again, so the run goes on; a tool call cut off that way
may therefore run twice (at least once, never lost).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from toka.contract import KERNEL_READY_PATH

JSON = dict[str, Any]


class KernelError(Exception):
    def __init__(self, status: int, body: JSON):
        super().__init__(f"kernel answered {status}: {body.get('message') or body.get('error')}")
        self.status = status
        self.body = body

    @property
    def reason(self) -> str:
        return str(self.body.get("error", ""))


# How long a restarting kernel may take to answer again (the kubelet's restart
# back-off, then its startup probe), and how often one request is sent again.
RESTART_WAIT_SECONDS = 180.0
RESENDS = 3


class KernelClient:
    def __init__(self, addr: str, timeout: float = 660):
        self.http = httpx.AsyncClient(
            base_url=f"http://{addr}", timeout=httpx.Timeout(timeout, connect=5)
        )

    async def _request(self, method: str, path: str, body: JSON | None) -> httpx.Response:
        """The kernel's answer, across a restart of the kernel."""
        for _ in range(RESENDS):
            try:
                return await self.http.request(method, path, json=body)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                await self.wait_ready(RESTART_WAIT_SECONDS)
        return await self.http.request(method, path, json=body)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def wait_ready(self, timeout: float = 60) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                if (await self.http.get(KERNEL_READY_PATH)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if loop.time() > deadline:
                raise TimeoutError("the kernel is not ready")
            await asyncio.sleep(0.2)

    async def _call(self, method: str, path: str, body: JSON | None = None) -> JSON:
        resp = await self._request(method, path, body)
        try:
            data: JSON = resp.json()
        except ValueError:
            data = {"error": "unreadable", "message": resp.text[:300]}
        if resp.status_code >= 400:
            raise KernelError(resp.status_code, data)
        return data

    async def describe(self) -> JSON:
        return await self._call("GET", "/v1/agent")

    async def send(self, type_: str, **fields: Any) -> JSON:
        return await self._call("POST", "/v1/messages", {"type": type_, **fields})

    async def tool(self, name: str, args: JSON) -> tuple[int, JSON]:
        return await self._answer(f"/v1/tools/{name}", args)

    async def spawn(self, args: JSON) -> tuple[int, JSON]:
        """Ask for a sub-agent; a refusal is an answer for the model, not an error."""
        return await self._answer("/v1/messages", {**args, "type": "SpawnSubAgent"})

    async def _answer(self, path: str, body: JSON) -> tuple[int, JSON]:
        resp = await self._request("POST", path, body)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, {"error": "unreadable", "message": resp.text[:300]}

    async def complete(self, body: JSON) -> JSON:
        return await self._call("POST", "/v1/llm/complete", body)
