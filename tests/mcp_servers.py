"""Real MCP servers for tests: the official SDK's `MCPServer` over streamable HTTP, served by
uvicorn on 127.0.0.1 in a thread.

The kernel's MCP client is hand-written (see `toka.kernel.mcp`); these servers are the
SDK's own, so a test that passes against them proves the wire format, not our reading of
it. A server can require `Authorization: Bearer <token>` (checked in front of the SDK's
app, as a reverse proxy would), and records every header and tool call it saw.
"""

from __future__ import annotations

import functools
import inspect
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer

JSON = dict[str, Any]
Scope = dict[str, Any]


class McpTestServer:
    """One SDK server with the given tools; `calls` lists (tool, arguments) as the tools ran."""

    def __init__(self, name: str, *, token: str | None = None):
        self.name = name
        self.token = token
        self.mcp = MCPServer(name, log_level="WARNING")
        self.calls: list[tuple[str, JSON]] = []
        self.authorizations: list[str] = []  # the Authorization header of each request
        self.refused = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def tool(self, fn: Callable[..., Any], name: str | None = None) -> Callable[..., Any]:
        """Add `fn` as a tool (named as the function, or `name`); its calls are recorded."""
        name = name or fn.__name__

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def recorded(**arguments: Any) -> Any:
                self.calls.append((name, arguments))
                return await fn(**arguments)

        else:

            @functools.wraps(fn)
            def recorded(**arguments: Any) -> Any:
                self.calls.append((name, arguments))
                return fn(**arguments)

        self.mcp.add_tool(recorded, name=name, description=fn.__doc__)
        return fn

    async def _app(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.authorizations.append(headers.get("authorization", ""))
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                self.refused += 1
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"unauthorized"}'})
                return
        await self._inner(scope, receive, send)

    def start(self, port: int = 0) -> McpTestServer:
        if not port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self._inner = self.mcp.streamable_http_app()
        # The SDK's session manager runs in the app's lifespan, which `_app` passes on.
        config = uvicorn.Config(
            self._app, host="127.0.0.1", port=port, log_level="warning", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"MCP server {self.name} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None


def free_port() -> int:
    """A loopback port nothing listens on (for a server that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
