"""The agent across a restart of its kernel: a request the kernel dropped on its way
out is sent again once the kernel answers again, so the run goes on."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from toka.agent import client as client_module
from toka.agent.client import KernelClient


async def test_a_request_the_kernel_dropped_is_sent_again_once_it_answers_again() -> None:
    calls: list[str] = []

    async def tool(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        if len(calls) == 1:
            # The kernel is killed mid-call: the connection closes without an answer.
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        return web.json_response({"stdout": "released"})

    async def readyz(_: web.Request) -> web.Response:
        calls.append("/readyz")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/tools/shell.exec", tool)
    app.router.add_get("/readyz", readyz)
    async with TestServer(app, host="127.0.0.1") as server:
        kernel = KernelClient(f"127.0.0.1:{server.port}")
        try:
            status, body = await kernel.tool("shell.exec", {"argv": ["true"]})
        finally:
            await kernel.aclose()
    assert (status, body) == (200, {"stdout": "released"})
    assert calls == ["/v1/tools/shell.exec", "/readyz", "/v1/tools/shell.exec"]


async def test_a_kernel_that_never_comes_back_ends_the_run_with_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "RESTART_WAIT_SECONDS", 0.5)
    app = web.Application()
    async with TestServer(app, host="127.0.0.1") as server:
        port = server.port
    kernel = KernelClient(f"127.0.0.1:{port}")  # nothing listens there any more
    try:
        with pytest.raises(TimeoutError):
            await kernel.tool("shell.exec", {"argv": ["true"]})
    finally:
        await kernel.aclose()
