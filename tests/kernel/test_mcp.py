"""MCP tools through the kernel: offered as far as the grant goes, checked, audited, and
called with a credential only the kernel holds.

The servers are the official SDK's (`tests/mcp_servers.py`) on loopback, one behind a
bearer token; the kernel is the real aiohttp app of `tests/kernel/stack.py` with its
hand-written MCP client. What goes wrong (a server down, a tool gone, a broken answer)
must reach the agent as a clear error and `status.run.mcpServers` as a reason, and the
kernel must go on serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from tests.kernel.stack import Stack, kernel_stack, replay_file
from tests.llm.test_budget_enforcement import IDS, KINDS, gateway
from tests.llm.test_providers import KEY
from tests.llm_servers import ProviderServer, Reply, anthropic_message, openai_completion
from tests.mcp_servers import McpTestServer, free_port
from toka.agent.client import KernelClient
from toka.agent.executor import Executor
from toka.api.models import McpServer, Provider
from toka.kernel import main as kernel_main
from toka.kernel.mcp import MAX_ANSWER_BYTES, McpTools, _from_events

JSON = dict[str, Any]
TOKEN = "mcp-vault-token-5f0c2a9e1d"
CAPS = ["llm:complete", "fs:write:**", "mcp:docs:search", "mcp:vault:*"]


@pytest.fixture
def docs() -> Iterator[McpTestServer]:
    server = McpTestServer("docs")

    @server.tool
    def search(query: str, limit: int = 3) -> str:
        """Search the documentation."""
        return f"{limit} pages about {query}"

    @server.tool
    def delete_all() -> str:
        """Delete every page."""
        return "deleted"

    yield server.start()
    server.stop()


@pytest.fixture
def vault() -> Iterator[McpTestServer]:
    server = McpTestServer("vault", token=TOKEN)

    @server.tool
    def lookup(key: str) -> str:
        """Look a value up."""
        return f"value of {key}"

    @server.tool
    def whoami() -> str:
        """Which credential the caller sent (a careless server echoing it)."""
        return f"you sent {server.authorizations[-1]}"

    yield server.start()
    server.stop()


def headers_dir(tmp: Path, server: str, headers: dict[str, str]) -> Path:
    """The header files as the kernel's Secret volume holds them: `<root>/<server>/<header>`."""
    root = tmp / "mcp"
    (root / server).mkdir(parents=True, exist_ok=True)
    for name, value in headers.items():
        (root / server / name).write_text(value + "\n")
    return root


@asynccontextmanager
async def mcp_kernel(
    tmp: Path,
    servers: dict[str, str],
    *,
    capabilities: list[str] = CAPS,
    headers: dict[str, dict[str, str]] | None = None,
    recording: Path | None = None,
) -> AsyncIterator[Stack]:
    """A kernel whose Agent has `servers` (name → url) in spec.mcpServers, listed as at start."""
    root = tmp / "mcp"
    root.mkdir(exist_ok=True)
    for name, values in (headers or {}).items():
        headers_dir(tmp, name, values)
    async with kernel_stack(tmp, capabilities, recording=recording) as stack:
        redactor = stack.kernel.policy.redact
        stack.reporter.redact = redactor  # one redactor, as in `toka kernel`
        stack.kernel.mcp = McpTools(
            [McpServer(name=n, url=u) for n, u in servers.items()],
            headers_root=root,
            on_secret=redactor.add,
            redact=redactor,
        )
        await stack.kernel.refresh_mcp()
        yield stack


def servers_status(stack: Stack) -> dict[str, JSON]:
    return {s.name: s.wire() for s in stack.reporter.run.mcp_servers or []}


def offered(agent: JSON) -> dict[str, JSON]:
    return {t["name"]: t for t in agent["tools"]}


async def call(stack: Stack, tool: str, **arguments: Any) -> tuple[int, JSON]:
    resp = await stack.http.post(f"/v1/tools/{tool}", json=arguments)
    return resp.status_code, resp.json()


# --- what the agent is offered --------------------------------------------------


async def test_the_agent_is_offered_only_the_granted_mcp_tools_with_their_schemas(
    tmp_path: Path, docs: McpTestServer, vault: McpTestServer
) -> None:
    async with mcp_kernel(
        tmp_path,
        {"docs": docs.url, "vault": vault.url},
        headers={"vault": {"Authorization": f"Bearer {TOKEN}"}},
    ) as stack:
        tools = offered((await stack.http.get("/v1/agent")).json())
        mcp = sorted(n for n in tools if n.startswith("mcp__"))
        assert mcp == ["mcp__docs__search", "mcp__vault__lookup", "mcp__vault__whoami"]
        search = tools["mcp__docs__search"]
        assert search["description"] == "Search the documentation."
        assert search["parameters"]["properties"]["query"]["type"] == "string"
        assert search["parameters"]["required"] == ["query"]
        status = servers_status(stack)
        assert status["docs"] == {"name": "docs", "ready": True, "reason": "Connected",
                                  "tools": ["search"]}  # fmt: skip
        assert status["vault"]["tools"] == ["lookup", "whoami"]


@pytest.mark.parametrize(("kind", "provider"), KINDS, ids=IDS)
@pytest.mark.parametrize("door", ["/v1/llm/complete", "/openai/v1/chat/completions"])
async def test_the_llm_sees_the_granted_mcp_tools_and_may_call_them(
    tmp_path: Path, docs: McpTestServer, kind: str, provider: Provider, door: str
) -> None:
    llm = await ProviderServer(kind, KEY).start()
    try:
        async with mcp_kernel(tmp_path, {"docs": docs.url}) as stack:
            stack.kernel.gateway = gateway(llm, provider)
            tools = list((await stack.http.get("/v1/agent")).json()["tools"])
            use = {"id": "c1", "name": "mcp__docs__search", "input": {"query": "mcp"}}
            made = anthropic_message if kind == "anthropic" else openai_completion
            llm.script(Reply(body=made("", [use])))
            ask = [{"role": "user", "content": "Find the MCP page."}]
            if door == "/v1/llm/complete":
                resp = await stack.http.post(door, json={"messages": ask, "tools": tools})
                called = resp.json()["completion"]["tool_calls"][0]
                assert (called["name"], called["arguments"]) == ("mcp__docs__search", use["input"])
            else:
                functions = [{"type": "function", "function": t} for t in tools]
                resp = await stack.http.post(door, json={"messages": ask, "tools": functions})
                called = resp.json()["choices"][0]["message"]["tool_calls"][0]["function"]
                assert called["name"] == "mcp__docs__search"
            assert resp.status_code == 200, resp.text
            sent = llm.requests[0]["body"]["tools"]
            if kind == "anthropic":
                seen = {t["name"]: t["input_schema"] for t in sent}
            else:
                seen = {t["function"]["name"]: t["function"]["parameters"] for t in sent}
            assert "mcp__docs__delete_all" not in seen
            assert seen["mcp__docs__search"]["required"] == ["query"]
    finally:
        await llm.stop()


# --- calls ---------------------------------------------------------------------------


async def test_a_granted_call_returns_the_tools_result_and_is_audited(
    tmp_path: Path, docs: McpTestServer
) -> None:
    async with mcp_kernel(tmp_path, {"docs": docs.url}) as stack:
        status, body = await call(stack, "mcp__docs__search", query="kernels", limit=2)
        assert status == 200, body
        assert body["content"] == [{"type": "text", "text": "2 pages about kernels"}]
        assert body["isError"] is False
        assert docs.calls == [("search", {"query": "kernels", "limit": 2})]
        record = stack.audit_records()[-1]
        assert (record["op"], record["decision"], record["target"], record["server"]) == (
            "mcp.call",
            "allow",
            "search",
            "docs",
        )
        assert record["capability"] == "mcp:docs:search"


async def test_an_ungranted_call_is_refused_counted_and_audited(
    tmp_path: Path, docs: McpTestServer
) -> None:
    async with mcp_kernel(tmp_path, {"docs": docs.url}) as stack:
        status, body = await call(stack, "mcp__docs__delete_all")
        assert status == 403
        assert body["error"] == "denied"
        assert "mcp:docs:delete_all" in body["message"]
        # Neither a server nor a tool the agent was not given is reachable by name.
        assert (await call(stack, "mcp__other__anything"))[0] == 403
        assert docs.calls == []
        assert stack.denials == 2
        assert stack.reporter.run.denials is not None
        assert "mcp:other:anything" in (stack.reporter.run.denials.last or "")
        denied = [r for r in stack.audit_records() if r["decision"] == "deny"]
        assert [(r["op"], r["target"]) for r in denied] == [
            ("mcp.call", "delete_all"),
            ("mcp.call", "anything"),
        ]


async def test_arguments_that_break_the_schema_are_refused_before_the_server_is_called(
    tmp_path: Path, docs: McpTestServer
) -> None:
    async with mcp_kernel(tmp_path, {"docs": docs.url}) as stack:
        status, body = await call(stack, "mcp__docs__search", query=42)
        assert (status, body["error"]) == (400, "invalid_arguments")
        assert "$.query: expected string" in body["message"]
        status, body = await call(stack, "mcp__docs__search", limit=1)
        assert (status, body["error"]) == (400, "invalid_arguments")
        assert "$.query: required" in body["message"]
        assert docs.calls == []


async def test_the_executor_calls_an_mcp_tool_by_the_name_the_kernel_offered(
    tmp_path: Path, docs: McpTestServer
) -> None:
    turns = [
        {"task": "t", "turn": 1, "response": {
            "content": "", "stop_reason": "tool_use",
            "tool_calls": [{"id": "c1", "name": "mcp__docs__search",
                            "arguments": {"query": "toka"}}]}},
        {"task": "t", "turn": 2, "response": {
            "content": "", "stop_reason": "tool_use",
            "tool_calls": [{"id": "c2", "name": "finish_task",
                            "arguments": {"status": "succeeded", "summary": "found it"}}]}},
    ]  # fmt: skip
    async with mcp_kernel(
        tmp_path, {"docs": docs.url}, recording=replay_file(tmp_path, turns)
    ) as stack:
        client = KernelClient(stack.http.base_url.netloc.decode())
        try:
            assert await Executor(client).run() == 0
        finally:
            await client.aclose()
        assert [(tool, args["query"]) for tool, args in docs.calls] == [("search", "toka")]
        task = stack.reporter.run.tasks[0]  # type: ignore[index]
        assert (task.state, task.summary) == ("Succeeded", "found it")


# --- the credential ----------------------------------------------------------------


async def test_the_bearer_token_reaches_the_server_and_never_the_agent(
    tmp_path: Path, vault: McpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with mcp_kernel(
        tmp_path, {"vault": vault.url}, headers={"vault": {"Authorization": f"Bearer {TOKEN}"}}
    ) as stack:
        agent = await stack.http.get("/v1/agent")
        status, looked_up = await call(stack, "mcp__vault__lookup", key="db")
        assert status == 200
        assert looked_up["content"][0]["text"] == "value of db"
        # A server that echoes the credential does not get it to the agent either.
        status, echoed = await call(stack, "mcp__vault__whoami")
        assert status == 200
        assert "[REDACTED]" in echoed["content"][0]["text"]
        await call(stack, "mcp__vault__nope")
        assert vault.authorizations
        assert set(vault.authorizations) == {f"Bearer {TOKEN}"}
        seen_by_agent = agent.text + json.dumps(looked_up) + json.dumps(echoed)
        status_written = json.dumps(stack.reporter.snapshot())
        # The kernel's log lines and its HTTP client's; the SDK server's own are not ours.
        kernel_log = "\n".join(
            r.getMessage()
            for r in caplog.records
            if not r.name.startswith(("mcp.", "sse_starlette", "uvicorn"))
        )
        for place in (seen_by_agent, status_written, stack.audit.getvalue(), kernel_log):
            assert TOKEN not in place


async def test_a_refused_credential_is_unauthorized_and_the_kernel_keeps_serving(
    tmp_path: Path, vault: McpTestServer
) -> None:
    async with mcp_kernel(
        tmp_path, {"vault": vault.url}, headers={"vault": {"Authorization": "Bearer wrong-token"}}
    ) as stack:
        status = servers_status(stack)["vault"]
        assert (status["ready"], status["reason"]) == (False, "Unauthorized")
        assert "headersSecretRef" in status["message"]
        code, body = await call(stack, "mcp__vault__lookup", key="db")
        assert (code, body["error"]) == (502, "mcp_unauthorized")
        assert (await stack.http.get("/v1/agent")).status_code == 200


# --- failures ---------------------------------------------------------------------


async def test_a_server_that_is_down_is_a_clear_error_and_the_kernel_keeps_serving(
    tmp_path: Path, docs: McpTestServer
) -> None:
    down = f"http://127.0.0.1:{free_port()}/mcp"
    async with mcp_kernel(
        tmp_path, {"docs": docs.url, "gone": down}, capabilities=[*CAPS, "mcp:gone:*"]
    ) as stack:
        status = servers_status(stack)
        assert (status["gone"]["ready"], status["gone"]["reason"]) == (False, "Unreachable")
        assert status["docs"]["ready"] is True
        tools = offered((await stack.http.get("/v1/agent")).json())
        assert "mcp__docs__search" in tools
        assert not any(n.startswith("mcp__gone__") for n in tools)
        code, body = await call(stack, "mcp__gone__anything")
        assert (code, body["error"]) == (503, "mcp_unavailable")
        assert body["message"].startswith("MCP server 'gone': cannot reach the server")
        # The rest of the kernel is untouched.
        assert (await call(stack, "fs.write", path="a.txt", content="x"))[0] == 200
        assert (await call(stack, "mcp__docs__search", query="q"))[0] == 200

        # A server that goes away after it was listed.
        docs.stop()
        code, body = await call(stack, "mcp__docs__search", query="q")
        assert (code, body["error"]) == (503, "mcp_unavailable")
        assert servers_status(stack)["docs"]["reason"] == "Unreachable"
        assert (await stack.http.get("/healthz")).status_code == 200


async def test_a_server_that_restarts_is_reconnected_with_a_new_session(
    tmp_path: Path, docs: McpTestServer
) -> None:
    async with mcp_kernel(tmp_path, {"docs": docs.url}) as stack:
        assert (await call(stack, "mcp__docs__search", query="before"))[0] == 200
        docs.stop()
        again = McpTestServer("docs")

        @again.tool
        def search(query: str, limit: int = 3) -> str:
            """Search the documentation."""
            return f"fresh pages about {query}"

        again.start(port=docs.port)  # forgets the kernel's session: a 404, then initialize
        try:
            code, body = await call(stack, "mcp__docs__search", query="after")
            assert code == 200, body
            assert body["content"][0]["text"] == "fresh pages about after"
        finally:
            again.stop()


async def test_a_tool_removed_after_listing_is_a_clear_error_and_shows_in_status(
    tmp_path: Path, docs: McpTestServer
) -> None:
    async with mcp_kernel(tmp_path, {"docs": docs.url}) as stack:
        assert "mcp__docs__search" in offered((await stack.http.get("/v1/agent")).json())
        docs.mcp.remove_tool("search")
        code, body = await call(stack, "mcp__docs__search", query="q")
        assert (code, body["error"]) == (404, "tool_missing")
        assert "search" in body["message"]
        status = servers_status(stack)["docs"]
        assert (status["ready"], status["reason"]) == (False, "ToolMissing")
        assert "search" in status["message"]
        assert "mcp__docs__search" not in offered((await stack.http.get("/v1/agent")).json())


# --- a server that breaks the protocol -----------------------------------------------

LISTED = {
    "tools": [
        {
            "name": "get",
            "description": "Get a thing.",
            "inputSchema": {"type": "object", "properties": {"id": {"type": "string"}}},
            "outputSchema": {
                "type": "object",
                "properties": {"count": {"type": "integer"}},
                "required": ["count"],
            },
        }
    ],
    "nextCursor": "page-2",
}
PAGE_2 = {"tools": [{"name": "put", "inputSchema": {"type": "object"}}]}


class BrokenServer:
    """Speaks enough MCP to be listed (over two pages), then answers `tools/call` with
    `answer`: raw bytes, or a JSON-RPC result. `tools` replaces the listing (`listed`, as
    raw bytes), `version` the protocol version it claims, `delay` slows each listing;
    `calls` and `listings` count what it was asked."""

    def __init__(
        self,
        answer: bytes | JSON | list[JSON],
        tools: list[JSON] | None = None,
        *,
        listed: bytes | None = None,
        version: str = "2025-06-18",
        delay: float = 0.0,
    ):
        self.answer = answer
        self.tools = tools
        self.listed = listed
        self.version = version
        self.delay = delay
        self.calls: list[JSON] = []
        self.listings = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        message = await request.json()
        method = message.get("method")
        if "id" not in message:
            return web.Response(status=202)
        result: JSON
        if method == "tools/list":
            self.listings += 1
            await asyncio.sleep(self.delay)
        elif method == "tools/call":
            self.calls.append(message.get("params") or {})
        if method == "initialize":
            result = {
                "protocolVersion": self.version,
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "broken", "version": "0"},
            }
        elif method == "tools/list" and self.listed is not None:
            return web.Response(body=self.listed, content_type="application/json")
        elif method == "tools/list" and self.tools is not None:
            result = {"tools": self.tools}
        elif method == "tools/list":
            result = PAGE_2 if (message.get("params") or {}).get("cursor") else LISTED
        elif isinstance(self.answer, list):
            return await self.stream(request, message["id"])
        elif isinstance(self.answer, bytes):
            return web.Response(body=self.answer, content_type="application/json")
        else:
            return web.json_response({"jsonrpc": "2.0", "id": message["id"], **self.answer})
        return web.json_response({"jsonrpc": "2.0", "id": message["id"], "result": result})

    async def stream(self, request: web.Request, rid: int) -> web.StreamResponse:
        """`answer` (JSON-RPC messages) as an event stream, CRLF-separated, sent in pieces
        that cut lines, and the CRLFs themselves, in two."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        assert isinstance(self.answer, list)
        messages = [{"jsonrpc": "2.0", **m, **({"id": rid} if "result" in m else {})}
                    for m in self.answer]  # fmt: skip
        text = "".join(f"event: message\r\ndata: {json.dumps(m)}\r\n\r\n" for m in messages)
        for i in range(0, len(text), 7):
            await resp.write(text[i : i + 7].encode())
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def start(self) -> BrokenServer:
        app = web.Application()
        app.router.add_post("/mcp", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


BROKEN: dict[str, tuple[bytes | JSON, str]] = {
    # what the server answers to tools/call, and what the agent is told
    "not JSON": (b"<html>oops</html>", "not JSON"),
    "content not a list": (
        {"result": {"content": "three pages"}},
        "without a valid content list",
    ),
    "a text block without text": (
        {"result": {"content": [{"type": "text"}]}},
        "a text block without text",
    ),
    "isError not a boolean": (
        {"result": {"content": [], "isError": "yes"}},
        "non-boolean isError",
    ),
    "structuredContent against the outputSchema": (
        {"result": {"content": [], "structuredContent": {"count": "three"}}},
        "does not match its outputSchema: $.count: expected integer",
    ),
    "an answer too large": (
        b'{"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "'
        + b"x" * MAX_ANSWER_BYTES
        + b'"}]}}',
        f"an answer over {MAX_ANSWER_BYTES} bytes",
    ),
}


@pytest.mark.parametrize(("answer", "told"), list(BROKEN.values()), ids=list(BROKEN))
async def test_a_malformed_answer_is_a_clear_error(
    tmp_path: Path, answer: bytes | JSON, told: str
) -> None:
    server = await BrokenServer(answer).start()
    try:
        async with mcp_kernel(tmp_path, {"odd": server.url}, capabilities=["mcp:odd:*"]) as stack:
            tools = offered((await stack.http.get("/v1/agent")).json())
            assert {"mcp__odd__get", "mcp__odd__put"} <= set(tools)  # both pages were read
            code, body = await call(stack, "mcp__odd__get", id="1")
            assert (code, body["error"]) == (502, "mcp_protocol_error"), body
            assert body["message"].startswith("MCP server 'odd': ")
            assert told in body["message"]
            status = servers_status(stack)["odd"]
            assert (status["ready"], status["reason"]) == (False, "ProtocolError")
            assert told in status["message"]
            # The server's other tools are still offered; the kernel still serves.
            assert "mcp__odd__put" in offered((await stack.http.get("/v1/agent")).json())
    finally:
        await server.stop()


async def test_an_error_answer_is_passed_on_and_leaves_the_server_ready(tmp_path: Path) -> None:
    failure = {"error": {"code": -32603, "message": "the index is rebuilding"}}
    server = await BrokenServer(failure).start()
    try:
        async with mcp_kernel(tmp_path, {"odd": server.url}, capabilities=["mcp:odd:*"]) as stack:
            code, body = await call(stack, "mcp__odd__get", id="1")
            assert (code, body["error"]) == (502, "mcp_server_error")
            assert "the index is rebuilding (code -32603)" in body["message"]
            assert servers_status(stack)["odd"]["ready"] is True
    finally:
        await server.stop()


async def test_an_answer_streamed_in_pieces_after_a_notification_is_read_whole(
    tmp_path: Path,
) -> None:
    progress = {"method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
    result = {"result": {"content": [{"type": "text", "text": "a line\r\nand another"}]}}
    server = await BrokenServer([progress, result]).start()
    try:
        async with mcp_kernel(tmp_path, {"odd": server.url}, capabilities=["mcp:odd:*"]) as stack:
            code, body = await call(stack, "mcp__odd__get", id="1")
            assert code == 200, body
            assert body["content"] == [{"type": "text", "text": "a line\r\nand another"}]
    finally:
        await server.stop()


async def test_tools_whose_llm_names_collide_are_not_offered_and_a_long_name_is_shortened(
    tmp_path: Path,
) -> None:
    def tool(name: str) -> JSON:
        return {"name": name, "inputSchema": {"type": "object"}}

    long = "summarise_" + "very_" * 20 + "long"
    tools = [tool("a.b"), tool("a_b"), tool(long), tool("bad name"), tool("ok")]
    server = await BrokenServer({"result": {"content": []}}, tools=tools).start()
    try:
        async with mcp_kernel(tmp_path, {"odd": server.url}, capabilities=["mcp:odd:*"]) as stack:
            tools = offered((await stack.http.get("/v1/agent")).json())
            mcp = {n for n in tools if n.startswith("mcp__")}
            assert "mcp__odd__ok" in mcp
            assert "mcp__odd__a_b" not in mcp  # a.b and a_b: the LLM could not tell them apart
            shortened = next(n for n in mcp if n.startswith("mcp__odd__summarise_"))
            assert len(shortened) <= 64
            assert (await call(stack, shortened))[0] == 200
            status = servers_status(stack)["odd"]
            assert status["tools"] == [long, "ok"]
            assert "a.b, a_b" in status["message"]
    finally:
        await server.stop()


async def test_a_rotated_token_is_read_again_when_the_old_one_is_refused(
    tmp_path: Path, vault: McpTestServer
) -> None:
    async with mcp_kernel(
        tmp_path, {"vault": vault.url}, headers={"vault": {"Authorization": f"Bearer {TOKEN}"}}
    ) as stack:
        assert (await call(stack, "mcp__vault__lookup", key="a"))[0] == 200
        rotated = "mcp-vault-token-rotated-77aa"
        vault.token = rotated
        headers_dir(tmp_path, "vault", {"Authorization": f"Bearer {rotated}"})
        code, body = await call(stack, "mcp__vault__lookup", key="b")
        assert code == 200, body
        assert vault.authorizations[-1] == f"Bearer {rotated}"
        _, echoed = await call(stack, "mcp__vault__whoami")
        assert rotated not in json.dumps(echoed)


# --- the reviewer's findings, each as a class ------------------------------------------


async def test_the_grant_is_checked_on_the_real_name_of_a_tool_listed_since(
    tmp_path: Path, docs: McpTestServer
) -> None:
    """`search.delete` is spelled `mcp__docs__search_delete`: a grant of `search_*` covers
    the spelling, not the tool, also when the name is new and the server is listed again."""
    async with mcp_kernel(
        tmp_path, {"docs": docs.url}, capabilities=["mcp:docs:search_*"]
    ) as stack:

        def delete_pages() -> str:
            """Delete matching pages."""
            return "deleted"

        docs.tool(delete_pages, "search.delete")  # listed after the kernel's first look
        await asyncio.sleep(2.1)  # the kernel may list the server again by now
        code, body = await call(stack, "mcp__docs__search_delete")
        assert (code, body["error"]) == (403, "denied"), body
        assert "mcp:docs:search.delete" in body["message"]
        assert docs.calls == []
        denied = [r for r in stack.audit_records() if r["decision"] == "deny"]
        assert [(r["target"], r["server"]) for r in denied] == [("search.delete", "docs")]
        # Known now, refused the same way; a name no tool has is refused alike.
        assert (await call(stack, "mcp__docs__search_delete"))[0] == 403
        assert (await call(stack, "mcp__docs__nothing_here"))[0] == 403
        assert docs.calls == []
        assert stack.denials == 3


@pytest.mark.parametrize("grant", ["mcp:docs:a_b", "mcp:docs:a.b", "mcp:docs:*"])
async def test_tools_sharing_an_llm_name_are_neither_offered_nor_callable_whatever_the_grant(
    tmp_path: Path, docs: McpTestServer, grant: str
) -> None:
    def dotted() -> str:
        return "a.b ran"

    def underscored() -> str:
        return "a_b ran"

    docs.tool(dotted, "a.b")
    docs.tool(underscored, "a_b")
    async with mcp_kernel(tmp_path, {"docs": docs.url}, capabilities=[grant]) as stack:
        assert "mcp__docs__a_b" not in offered((await stack.http.get("/v1/agent")).json())
        code, body = await call(stack, "mcp__docs__a_b")
        if grant == "mcp:docs:a.b":  # checked as spelled, a_b, which a.b does not grant
            assert (code, body["error"]) == (403, "denied"), body
        else:
            assert (code, body["error"]) == (404, "tool_missing"), body
            assert "several tools (a.b, a_b)" in body["message"]
        assert docs.calls == []
        message = servers_status(stack)["docs"]["message"]
        assert "LLM names clash: a.b, a_b" in message


async def test_an_answer_nested_too_deep_is_a_protocol_error_and_the_kernel_serves_on(
    tmp_path: Path,
) -> None:
    deep = b"[" * 50_000 + b"]" * 50_000
    listing = await BrokenServer({}, listed=deep).start()
    calling = await BrokenServer(deep).start()
    try:
        async with mcp_kernel(
            tmp_path,
            {"deep": listing.url, "odd": calling.url},
            capabilities=["mcp:deep:*", "mcp:odd:*"],
        ) as stack:
            status = servers_status(stack)
            assert (status["deep"]["ready"], status["deep"]["reason"]) == (False, "ProtocolError")
            assert "nests too deep" in status["deep"]["message"]
            assert (await stack.http.get("/v1/agent")).status_code == 200
            code, body = await call(stack, "mcp__odd__get", id="1")
            assert (code, body["error"]) == (502, "mcp_protocol_error"), body
            assert (await stack.http.get("/v1/agent")).status_code == 200
    finally:
        await listing.stop()
        await calling.stop()


def nested(depth: int) -> JSON:
    schema: JSON = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


MALFORMED: dict[str, JSON] = {
    # the inputSchema of a tool the kernel must refuse: it could not apply it
    "pattern that does not compile": {"properties": {"q": {"type": "string", "pattern": 3}}},
    "a property that is no schema": {"properties": {"a": "x"}},
    "a type that is no type": {"properties": {"a": {"type": {}}}},
    "maxLength a string": {"properties": {"a": {"type": "string", "maxLength": "3"}}},
    "required not a list": {"required": "a"},
    "nested too deep": nested(40),
}


async def test_schemas_the_kernel_cannot_apply_refuse_their_tool_and_say_so(
    tmp_path: Path,
) -> None:
    tools = [{"name": "ok", "inputSchema": {"type": "object"}}] + [
        {"name": f"bad{i}", "inputSchema": {"type": "object", **schema}}
        for i, schema in enumerate(MALFORMED.values())
    ]
    server = await BrokenServer({"result": {"content": []}}, tools=tools).start()
    try:
        async with mcp_kernel(tmp_path, {"odd": server.url}, capabilities=["mcp:odd:*"]) as stack:
            names = set(offered((await stack.http.get("/v1/agent")).json()))
            assert "mcp__odd__ok" in names
            assert not any(n.startswith("mcp__odd__bad") for n in names)
            for i in range(len(MALFORMED)):
                code, body = await call(stack, f"mcp__odd__bad{i}", q="x", a="x")
                assert code == 404, body  # never a 500
            status = servers_status(stack)["odd"]
            assert status["ready"] is True
            assert "refused: tool 'bad0': its inputSchema is malformed" in status["message"]
            assert server.calls == []
    finally:
        await server.stop()


async def test_a_servers_pattern_is_never_run_by_the_kernel(tmp_path: Path) -> None:
    """`^(a+)+$` backtracks for minutes on 30 a's and a `!`; the server checks its input."""
    schema = {"type": "object", "properties": {"q": {"type": "string", "pattern": "^(a+)+$"}}}
    broken = {"type": "object", "properties": {"q": {"type": "string", "pattern": "("}}}
    tools = [{"name": "get", "inputSchema": schema}, {"name": "put", "inputSchema": broken}]
    server = await BrokenServer({"result": {"content": []}}, tools=tools).start()
    try:
        async with mcp_kernel(tmp_path, {"odd": server.url}, capabilities=["mcp:odd:*"]) as stack:
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert (await call(stack, "mcp__odd__get", q="a" * 30 + "!"))[0] == 200
            assert loop.time() - started < 5
            assert (await call(stack, "mcp__odd__put", q="x"))[0] == 200
            assert [c["name"] for c in server.calls] == ["get", "put"]
    finally:
        await server.stop()


@pytest.mark.parametrize("where", ["version", "error code"])
async def test_a_credential_the_server_echoes_is_redacted_before_any_cut(
    tmp_path: Path, where: str
) -> None:
    """A cut at 40 (or 12) characters before redaction left the token's first characters."""
    echo = "x" * 30 + TOKEN
    failure = {"error": {"code": "xxxx" + TOKEN, "message": "no"}}
    if where == "version":
        server = await BrokenServer({}, version=echo).start()
    else:
        server = await BrokenServer(failure).start()
    try:
        async with mcp_kernel(
            tmp_path,
            {"odd": server.url},
            capabilities=["mcp:odd:*"],
            headers={"odd": {"Authorization": f"Bearer {TOKEN}"}},
        ) as stack:
            _, body = await call(stack, "mcp__odd__get", id="1")
            seen = json.dumps(body) + json.dumps(stack.reporter.snapshot())
            assert "xxxx[REDACTE" in seen  # the cut may halve the mark, never the token
            assert TOKEN[:8] not in seen  # "mcp-vaul": not even a prefix
    finally:
        await server.stop()


class Chunks:
    """An httpx response's `aiter_text` as a server trickling an event stream."""

    def __init__(self, text: str, size: int):
        self.text = text
        self.size = size

    async def aiter_text(self) -> AsyncIterator[str]:
        for i in range(0, len(self.text), self.size):
            yield self.text[i : i + self.size]


async def test_an_event_stream_is_read_in_time_linear_in_its_length() -> None:
    """One 1 MB data line in 64-byte pieces: re-reading the line on every piece took
    minutes; each piece is searched once."""
    text = "x" * 1_000_000
    message = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": text}]}}
    stream = f"event: message\r\ndata: {json.dumps(message)}\r\n\r\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    found = await _from_events(Chunks(stream, 64), 1)  # type: ignore[arg-type]
    assert loop.time() - started < 3
    assert found is not None
    assert found["result"]["content"][0]["text"] == text
    # Line ends of every kind, split anywhere, read alike.
    for size in (1, 2, 3, 7):
        for end in ("\n", "\r", "\r\n"):
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress"})
            small = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"ok": True}})
            lines = ["event: message", f"data: {note}", "", f"data: {small}", "", ""]
            found = await _from_events(Chunks(end.join(lines), size), 1)  # type: ignore[arg-type]
            assert found == json.loads(small), (size, end)


class SlowKernel:
    """What `follow_mcp` uses of a Kernel, with listings that take `seconds`."""

    def __init__(self, seconds: float, fail: bool = False):
        self.mcp = McpTools([])
        self.spec = SimpleNamespace(mcp_servers=[])
        self.seconds = seconds
        self.fail = fail
        self.full: list[float] = []
        self.retries = 0

    async def refresh_mcp(self, *, only_failed: bool = False) -> None:
        if self.fail:
            raise RecursionError("a server's answer")
        if only_failed:
            self.retries += 1
            return
        self.full.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)

    def report_mcp(self) -> None:
        pass


async def test_mcp_servers_are_followed_in_a_task_of_their_own_that_nothing_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernel_main, "MCP_LIST_SECONDS", 0.2)
    slow = SlowKernel(seconds=0.5)
    task = asyncio.create_task(kernel_main.follow_mcp(slow, interval=0.02))  # type: ignore[arg-type]
    failing = SlowKernel(seconds=0, fail=True)
    broken = asyncio.create_task(kernel_main.follow_mcp(failing, interval=0.02))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(1.6)
        # A listing of 0.5 s, then 0.2 s before the next: never one right after another.
        gaps = [b - a for a, b in zip(slow.full, slow.full[1:], strict=False)]
        assert gaps
        assert all(gap >= 0.5 + 0.2 - 0.05 for gap in gaps), gaps
        assert slow.retries > 0  # failed servers are retried in between
        assert not broken.done()  # an error from MCP does not end the task
    finally:
        task.cancel()
        broken.cancel()
        await asyncio.gather(task, broken, return_exceptions=True)


def test_the_kernel_does_not_load_the_mcp_sdk() -> None:
    """The SDK's client would cost the kernel ~24 MB: the kernel speaks MCP itself."""
    code = (
        "import sys, toka.kernel.main, toka.kernel.mcp; "
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
