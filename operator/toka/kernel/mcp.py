"""The kernel as MCP client: tools of `spec.mcpServers`, offered as far as the grant allows.

Written by hand over httpx rather than with the official `mcp` SDK: importing
`mcp.client` costs the kernel ~24 MB RSS and 0.5 s at start (measured: 59 →
83 MB, against a ≤ 50 MB target), and the kernel needs only `initialize`,
`tools/list` and `tools/call` over streamable HTTP (JSON-RPC 2.0; protocol
2025-03-26 to 2025-11-25). The tests run the SDK's own servers, which is
what proves the wire format.

Everything a server sends is bounded (answer bytes, time, tools, schema size
and nesting, description length) and checked before use; a server that is
down, refuses us, breaks the protocol or loses a tool is an `McpError` with a
reason the agent and `status.run.mcpServers` can show, never a crash: whatever
else goes wrong on a server's answer is a ProtocolError too. A tool whose
schema the kernel cannot apply (a keyword of the wrong type) is not offered;
its `pattern`s are never run (see `toka.llm.validate`). Text from a server is
redacted whole before it is cut for a message. A server's credential is the
header files mounted into the kernel alone (`$TOKA_MCP_DIR/<server>/<header>`),
re-read on each new session (and when they are refused) so rotation works;
their values join the redactor before they are first sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from toka.api.capabilities import MCP_PREFIX, is_tool_name
from toka.api.models import MAX_MCP_TOOLS, McpServer, McpServerStatus
from toka.api.models import MCP_CONNECTED as CONNECTED
from toka.api.models import MCP_CONNECTING as CONNECTING
from toka.api.models import MCP_PROTOCOL_ERROR as PROTOCOL_ERROR
from toka.api.models import MCP_SERVER_ERROR as SERVER_ERROR
from toka.api.models import MCP_TOOL_MISSING as TOOL_MISSING
from toka.api.models import MCP_UNAUTHORIZED as UNAUTHORIZED
from toka.api.models import MCP_UNREACHABLE as UNREACHABLE
from toka.llm.sanitize import MIN_SECRET_CHARS, for_log
from toka.llm.types import ToolSpec
from toka.llm.validate import schema_errors, schema_problems

log = logging.getLogger("toka.kernel.mcp")
JSON = dict[str, Any]

PROTOCOL_VERSION = "2025-06-18"
PROTOCOL_VERSIONS = frozenset({"2025-03-26", "2025-06-18", "2025-11-25"})
PREFIX = MCP_PREFIX
MAX_ANSWER_BYTES = 2 * 1024 * 1024
MAX_LISTED = 256  # tools read from one server; more are ignored, and logged
MAX_PAGES = 16
MAX_SCHEMA_BYTES = 16 * 1024
MAX_TOOL_DESCRIPTION = 1024
MAX_MESSAGE = 300
LIST_SECONDS = 20.0
CALL_SECONDS = 120.0
CONNECT_SECONDS = 5.0
RETRY_SECONDS = 10.0  # a server that failed is tried again at most this often
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
# Ours: a header file of the same name is ignored.
_OWN_HEADERS = frozenset(
    {"accept", "content-type", "content-length", "host", "mcp-session-id", "mcp-protocol-version"}
)

_LINE_END = re.compile(r"\r\n|\r|\n")


class McpError(Exception):
    """Why an MCP request failed, as a status reason and a short message without credentials."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def llm_name(server: str, tool: str) -> str:
    """`mcp__<server>__<tool>` in the characters LLM APIs accept; a long one ends in a hash
    (of server and tool: two long server names may share their first 50 characters).
    Different tools may share one (`a.b`, `a_b`): `McpTools` makes such names unusable."""
    name = f"{PREFIX}{server}__{re.sub(r'[^A-Za-z0-9_-]', '_', tool)}"
    if len(name) <= 64:
        return name
    return f"{name[:55]}_{hashlib.sha256(f'{server}/{tool}'.encode()).hexdigest()[:8]}"


def split_llm_name(name: str) -> tuple[str, str] | None:
    """(server, tool) as the name spells them, which need not be the tool's real name
    (`search.delete` is spelled `search_delete`): only for a name no listed tool has.
    Server names hold no `_`, so the first `__` after the prefix ends the server's."""
    if not name.startswith(PREFIX):
        return None
    server, sep, tool = name[len(PREFIX) :].partition("__")
    return (server, tool) if server and sep and tool else None


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str  # as the server names it
    description: str
    schema: JSON
    output_schema: JSON | None = None  # what its structuredContent must match, if it has one

    @property
    def llm_name(self) -> str:
        return llm_name(self.server, self.name)

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.llm_name, description=self.description, parameters=self.schema)


def header_values(directory: Path | None) -> dict[str, str]:
    """A server's headers from its mounted Secret: a file per header (dot-files are the
    Secret volume's own)."""
    if directory is None or not directory.is_dir():
        return {}
    headers: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        name = path.name
        if name.startswith(".") or not _HEADER_NAME.fullmatch(name) or not path.is_file():
            continue
        if name.lower() in _OWN_HEADERS:
            continue
        value = path.read_text(errors="replace").strip()
        if value and "\n" not in value and "\r" not in value:
            headers[name] = value
    return headers


def secrets_of(headers: dict[str, str]) -> list[str]:
    """What the redactor must hide: each value, and the credential of `<scheme> <credential>`."""
    out: list[str] = []
    for value in headers.values():
        out.append(value)
        credential = value.partition(" ")[2]
        if credential.strip():
            out.append(credential.strip())
    return out


@dataclass
class Listing:
    """One server's answer to tools/list: the well-formed tools, what was wrong with the
    others, and every name listed (a tool refused is not a tool gone)."""

    tools: list[McpTool] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


class McpSession:
    """One server: a lazily initialised MCP session, re-initialised when the server forgets it."""

    def __init__(
        self,
        server: McpServer,
        http: httpx.AsyncClient,
        *,
        headers_dir: Path | None,
        on_secret: Callable[[str], None],
        redact: Callable[[str], str] = lambda text: text,
    ):
        self.server = server
        self.http = http
        self.headers_dir = headers_dir
        self.on_secret = on_secret
        self.redact = redact
        self._headers: dict[str, str] = {}
        self._session_id: str | None = None
        self._version: str | None = None
        self._ids = 0
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.server.name

    def quote(self, value: Any, limit: int) -> str:
        """Text from the server as a message may show it: redacted, then cut."""
        return for_log(str(value), self.redact, limit)

    async def list_tools(self) -> Listing:
        """The server's usable tools, and what was wrong with the others."""
        listing = Listing()
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            result = await self.request(
                "tools/list", {"cursor": cursor} if cursor else {}, seconds=LIST_SECONDS
            )
            page = result.get("tools")
            if not isinstance(page, list):
                raise McpError(PROTOCOL_ERROR, "tools/list answered without a list of tools")
            for raw in page:
                if len(listing.names) >= MAX_LISTED:
                    listing.skipped.append(f"more than {MAX_LISTED} tools: the rest are ignored")
                    return listing
                if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                    listing.names.add(raw["name"])
                tool, problem = _tool(self.name, raw, self.quote)
                if tool is not None:
                    listing.tools.append(tool)
                else:
                    listing.skipped.append(problem)
            cursor = result.get("nextCursor")
            if not cursor:
                return listing
            if not isinstance(cursor, str) or len(cursor) > 1024:
                raise McpError(PROTOCOL_ERROR, "tools/list answered with an unusable nextCursor")
        listing.skipped.append(f"more than {MAX_PAGES} pages of tools: the rest are ignored")
        return listing

    async def call(self, tool: McpTool, arguments: JSON) -> JSON:
        result = await self.request(
            "tools/call", {"name": tool.name, "arguments": arguments}, seconds=CALL_SECONDS
        )
        return _call_result(tool, result)

    async def request(self, method: str, params: JSON, *, seconds: float) -> JSON:
        """The result of one JSON-RPC request. A forgotten session is re-initialised once, and
        so is one whose credentials were refused if the Secret has changed since (rotation)."""
        try:
            async with asyncio.timeout(seconds):
                try:
                    return await self._request(method, params)
                except _SessionLost:
                    return await self._request(method, params)
        except _SessionLost:
            raise McpError(PROTOCOL_ERROR, "the server forgot the session twice") from None
        except TimeoutError:
            raise McpError(UNREACHABLE, f"{method} got no answer within {seconds:.0f} s") from None

    async def _request(self, method: str, params: JSON) -> JSON:
        if self._version is None:
            await self._initialize()
        session = self._session_id
        try:
            return await self._exchange(method, params)
        except _SessionLost:
            if self._session_id == session:
                self._session_id = self._version = None
            raise
        except McpError as err:
            if err.reason != UNAUTHORIZED:
                raise
            # The next session reads the header files again.
            self._session_id = self._version = None
            if header_values(self.headers_dir) != self._headers:
                raise _SessionLost() from None
            raise

    async def _initialize(self) -> None:
        async with self._lock:
            if self._version is not None:
                return
            self._headers = header_values(self.headers_dir)
            for secret in secrets_of(self._headers):
                self.on_secret(secret)
                if len(secret) < MIN_SECRET_CHARS:
                    log.warning(
                        "MCP server %s: a header value (or its credential) is under %d "
                        "characters: it is sent, but not redacted from logs and status",
                        self.name,
                        MIN_SECRET_CHARS,
                    )
            self._session_id = None
            result = await self._exchange(
                "initialize",
                {
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "toka-kernel", "version": "1"},
                },
                initializing=True,
            )
            version = result.get("protocolVersion")
            if version not in PROTOCOL_VERSIONS:
                raise McpError(
                    PROTOCOL_ERROR,
                    f"the server speaks MCP {self.quote(version, 40)!r}, not one we know",
                )
            if not isinstance(result.get("capabilities"), dict) or (
                "tools" not in result["capabilities"]
            ):
                raise McpError(PROTOCOL_ERROR, "the server offers no tools")
            self._version = str(version)
            await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, None)

    async def _exchange(self, method: str, params: JSON, *, initializing: bool = False) -> JSON:
        self._ids += 1
        rid = self._ids
        message = await self._post(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
            rid,
            initializing=initializing,
        )
        if message is None:
            raise McpError(PROTOCOL_ERROR, f"{method} was answered with no JSON-RPC response")
        if "error" in message:
            error = message["error"] if isinstance(message["error"], dict) else {}
            raise McpError(
                SERVER_ERROR,
                f"{method} failed: {self.quote(error.get('message'), MAX_MESSAGE)} "
                f"(code {self.quote(error.get('code'), 12)})",
            )
        result = message.get("result")
        if not isinstance(result, dict):
            raise McpError(PROTOCOL_ERROR, f"{method} was answered without a result object")
        return result

    async def _post(
        self, body: JSON, rid: int | None, *, initializing: bool = False
    ) -> JSON | None:
        headers = {
            **self._headers,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if self._session_id:
            headers["Mcp-Session-Id"] = self._session_id
        if self._version:
            headers["MCP-Protocol-Version"] = self._version
        try:
            async with self.http.stream(
                "POST", self.server.url, headers=headers, content=json.dumps(body)
            ) as resp:
                status = resp.status_code
                if status in (401, 403):
                    raise McpError(
                        UNAUTHORIZED,
                        f"the server refused our credentials ({status}); check the Secret "
                        "named by headersSecretRef",
                    )
                if status == 404 and self._session_id and not initializing:
                    raise _SessionLost()
                if status >= 500:
                    raise McpError(UNREACHABLE, f"the server answered {status}")
                if status >= 400:
                    raise McpError(
                        PROTOCOL_ERROR,
                        f"the server answered {status} to {body.get('method')}: "
                        "is the url its streamable-HTTP MCP endpoint?",
                    )
                if initializing:
                    session = resp.headers.get("mcp-session-id")
                    if session is not None and not re.fullmatch(r"[\x21-\x7e]{1,256}", session):
                        raise McpError(PROTOCOL_ERROR, "the server sent an invalid Mcp-Session-Id")
                    self._session_id = session
                if rid is None:
                    return None
                kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if kind == "text/event-stream":
                    return await _from_events(resp, rid)
                if kind == "application/json":
                    return _matching(_loads(await _bounded(resp)), rid)
                raise McpError(
                    PROTOCOL_ERROR,
                    f"the server answered with content type {self.quote(kind, 60)!r}",
                )
        except httpx.TimeoutException:
            raise McpError(UNREACHABLE, "the server did not answer in time") from None
        except httpx.HTTPError as err:
            raise McpError(UNREACHABLE, f"cannot reach the server: {type(err).__name__}") from None


class _SessionLost(Exception):
    pass


async def _bounded(resp: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise McpError(PROTOCOL_ERROR, f"an answer over {MAX_ANSWER_BYTES} bytes")
    return bytes(data)


def _loads(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise McpError(PROTOCOL_ERROR, "the server's answer nests too deep") from None
    except ValueError:
        raise McpError(PROTOCOL_ERROR, "the server's answer is not JSON") from None


def _size(value: Any) -> int | None:
    """The length of `value` as JSON; None if it cannot be written (nested too deep)."""
    try:
        return len(json.dumps(value))
    except (RecursionError, ValueError, TypeError):
        return None


def _matching(message: Any, rid: int) -> JSON | None:
    """The JSON-RPC response to request `rid` in `message` (one message or a batch)."""
    for item in message if isinstance(message, list) else [message]:
        if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
            raise McpError(PROTOCOL_ERROR, "the server's answer is not JSON-RPC 2.0")
        if item.get("id") == rid and ("result" in item or "error" in item):
            return item
    return None


async def _from_events(resp: httpx.Response, rid: int) -> JSON | None:
    """Read an SSE stream until it carries the response to `rid`; notifications before it
    are skipped. Bounded in bytes like a JSON answer."""
    data: list[str] = []
    async with aclosing(_lines(resp)) as lines:
        async for line in lines:
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line == "" and data:
                found = _matching(_loads("\n".join(data)), rid)
                data = []
                if found is not None:
                    return found
    if data:
        return _matching(_loads("\n".join(data)), rid)
    return None


async def _lines(resp: httpx.Response) -> AsyncGenerator[str, None]:
    """The lines of an event stream (CR, LF or CRLF ends), in time linear in its length:
    each chunk is searched once, and a line's pieces are joined once, when it ends."""
    seen = 0
    pending: list[str] = []  # the pieces of the line not ended yet
    after_cr = False  # the last chunk ended in "\r": a "\n" first in this one is its half
    async for chunk in resp.aiter_text():
        if not chunk:
            continue
        seen += len(chunk)
        if seen > MAX_ANSWER_BYTES:
            raise McpError(PROTOCOL_ERROR, f"an answer over {MAX_ANSWER_BYTES} bytes")
        start = 1 if after_cr and chunk.startswith("\n") else 0
        after_cr = chunk.endswith("\r")
        for end in _LINE_END.finditer(chunk, start):
            pending.append(chunk[start : end.start()])
            start = end.end()
            line = "".join(pending)
            pending = []
            yield line
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield "".join(pending)


def _tool(server: str, raw: Any, quote: Callable[[Any, int], str]) -> tuple[McpTool | None, str]:
    """A listed tool fit to offer, or why it is not. A schema the kernel would check
    arguments against must be one it can apply: a keyword of the wrong type refuses it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None, "a tool without a name"
    name = raw["name"]
    if not is_tool_name(name):
        return None, f"tool {quote(name, 40)!r}: names are 1-128 of A-Z a-z 0-9 _ - ."
    for key, schema in (
        ("inputSchema", raw.get("inputSchema")),
        ("outputSchema", raw.get("outputSchema")),
    ):
        if schema is None and key == "outputSchema":
            continue
        if not isinstance(schema, dict) or (
            key == "inputSchema" and schema.get("type") != "object"
        ):
            return None, f"tool {name!r}: its {key} is not an object schema"
        size = _size(schema)
        if size is None or size > MAX_SCHEMA_BYTES:
            return (
                None,
                f"tool {name!r}: its {key} is over {MAX_SCHEMA_BYTES} bytes or nests too deep",
            )
        problems = schema_problems(schema)
        if problems:
            return None, f"tool {name!r}: its {key} is malformed: {'; '.join(problems[:3])}"
    description = raw.get("description")
    description = description if isinstance(description, str) else ""
    output = raw.get("outputSchema")
    return McpTool(server, name, description[:MAX_TOOL_DESCRIPTION], raw["inputSchema"], output), ""


_CONTENT_TYPES = frozenset({"text", "image", "audio", "resource", "resource_link"})


def _call_result(tool: McpTool, result: JSON) -> JSON:
    """A CallToolResult checked and made small for the agent: text kept, binary described."""
    content = result.get("content")
    if not isinstance(content, list) or not all(
        isinstance(c, dict) and c.get("type") in _CONTENT_TYPES for c in content
    ):
        raise McpError(
            PROTOCOL_ERROR, "tools/call answered without a valid content list (CallToolResult)"
        )
    is_error = result.get("isError", False)
    if not isinstance(is_error, bool):
        raise McpError(PROTOCOL_ERROR, "tools/call answered with a non-boolean isError")
    out: list[JSON] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise McpError(PROTOCOL_ERROR, "tools/call answered a text block without text")
            out.append({"type": "text", "text": block["text"]})
        elif kind in ("image", "audio"):
            size = len(str(block.get("data") or "")) * 3 // 4
            out.append({"type": kind, "mimeType": str(block.get("mimeType"))[:100], "bytes": size})
        elif kind == "resource_link":
            out.append({"type": kind, "uri": str(block.get("uri"))[:2048]})
        else:
            resource = block.get("resource") if isinstance(block.get("resource"), dict) else {}
            item: JSON = {"type": kind, "uri": str(resource.get("uri"))[:2048]}
            if isinstance(resource.get("text"), str):
                item["text"] = resource["text"]
            out.append(item)
    answer: JSON = {"content": out, "isError": is_error}
    structured = result.get("structuredContent")
    if structured is not None:
        if not isinstance(structured, dict):
            raise McpError(PROTOCOL_ERROR, "tools/call answered a structuredContent not an object")
        problems = schema_errors(structured, tool.output_schema) if tool.output_schema else []
        if problems and not is_error:
            raise McpError(
                PROTOCOL_ERROR,
                f"the answer of {tool.name!r} does not match its outputSchema: "
                + "; ".join(problems[:3]),
            )
        answer["structuredContent"] = structured
    return answer


@dataclass
class _Server:
    session: McpSession
    tools: dict[str, McpTool] = field(default_factory=dict)  # of the last good listing
    refused: list[str] = field(default_factory=list)  # what was wrong with the others
    status: McpServerStatus | None = None  # of the last listing or call that failed
    missing: set[str] = field(default_factory=set)  # listed once, gone since
    tried: float = -1e9


class McpTools:
    """Every server of `spec.mcpServers`: their tools, their state, and calls to them.

    The grant is not checked here (the kernel's handler does it, on the tool's real
    name, and audits); this decides what can be offered and called: tools of a server
    that answers, well-formed, with an LLM name no other listed tool has (`names`, the
    one map from LLM names to tools), at most `MAX_MCP_TOOLS` offered in all.
    """

    def __init__(
        self,
        servers: Sequence[McpServer],
        *,
        headers_root: Path | None = None,
        on_secret: Callable[[str], None] = lambda _: None,
        redact: Callable[[str], str] = lambda text: text,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.headers_root = headers_root
        self.on_secret = on_secret
        self.redact = redact
        self.http = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(CALL_SECONDS, connect=CONNECT_SECONDS),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=32),
        )
        self.servers: dict[str, _Server] = {}
        # LLM name -> the one listed tool of that name; a name two tools share is in
        # neither this map nor the offer (`clashes` has it, by server, for the status).
        self.names: dict[str, McpTool] = {}
        self.shared: dict[str, list[McpTool]] = {}  # LLM name -> the tools that share it
        self.clashes: dict[str, list[str]] = {}
        self.update(servers)

    async def aclose(self) -> None:
        await self.http.aclose()

    def update(self, servers: Sequence[McpServer]) -> bool:
        """Follow the spec: a new or changed server starts afresh. Whether anything changed."""
        wanted = {s.name: s for s in servers}
        changed = set(wanted) != set(self.servers)
        for name in list(self.servers):
            if name not in wanted:
                del self.servers[name]
        for name, server in wanted.items():
            known = self.servers.get(name)
            if known is None or known.session.server != server:
                headers = self.headers_root / name if self.headers_root is not None else None
                session = McpSession(
                    server,
                    self.http,
                    headers_dir=headers,
                    on_secret=self.on_secret,
                    redact=self.redact,
                )
                self.servers[name] = _Server(session)
                changed = True
        self._index()
        return changed

    def _index(self) -> None:
        """`names` and `clashes` from every server's listed tools, granted or not: which
        tool an LLM name calls must not depend on the grant."""
        by_name: dict[str, list[McpTool]] = {}
        for server in self.servers.values():
            for tool in server.tools.values():
                by_name.setdefault(tool.llm_name, []).append(tool)
        self.names = {name: tools[0] for name, tools in by_name.items() if len(tools) == 1}
        self.shared = {name: tools for name, tools in by_name.items() if len(tools) > 1}
        self.clashes = {}
        for tools in self.shared.values():
            for tool in tools:
                self.clashes.setdefault(tool.server, []).append(tool.name)

    async def refresh(self, *, only_failed: bool = False) -> None:
        """List the servers' tools (concurrently); with `only_failed`, only those that
        failed and whose retry is due."""
        now = asyncio.get_running_loop().time()
        due = [
            s
            for s in self.servers.values()
            if not only_failed
            or ((s.status is None or not s.status.ready) and now - s.tried >= RETRY_SECONDS)
        ]
        await asyncio.gather(*(self._list(s) for s in due))

    async def _list(self, server: _Server) -> None:
        """List one server's tools; a failure, whatever it is, is the server's state."""
        server.tried = asyncio.get_running_loop().time()
        try:
            listing = await server.session.list_tools()
        except McpError as err:
            self._failed(server, err)
            return
        except Exception as err:  # a server's answer must never crash the kernel
            self._failed(server, _unexpected("tools/list", server, err))
            return
        listed: dict[str, McpTool] = {}
        twice: set[str] = set()
        for tool in listing.tools:
            if tool.name in listed:
                twice.add(tool.name)
            listed[tool.name] = tool
        for name in sorted(twice):
            del listed[name]
            listing.skipped.append(f"tool {name!r}: listed twice")
        server.missing = (server.missing | (set(server.tools) - listing.names)) - listing.names
        server.tools = listed
        server.refused = listing.skipped
        server.status = McpServerStatus(name=server.session.name, ready=True, reason=CONNECTED)
        self._index()
        if listing.skipped:
            log.info(
                "MCP server %s: %s",
                server.session.name,
                for_log("; ".join(listing.skipped), self.redact),
            )

    def _failed(self, server: _Server, err: McpError, *, keep_tools: bool = False) -> McpError:
        """Record a failure as the server's state; the error as the agent may see it."""
        message = for_log(err.message, self.redact, MAX_MESSAGE)
        log.warning("MCP server %s: %s: %s", server.session.name, err.reason, message)
        if not keep_tools:
            server.tools = {}
            self._index()
        server.status = McpServerStatus(
            name=server.session.name, ready=False, reason=err.reason, message=message
        )
        return McpError(err.reason, message)

    def offered(self, granted: Callable[[McpTool], bool]) -> list[McpTool]:
        """The tools to offer: granted, listed by a server that answers, with an LLM name
        no other tool has, bounded."""
        return [t for t in self.names.values() if granted(t)][:MAX_MCP_TOOLS]

    def statuses(self, granted: Callable[[McpTool], bool]) -> list[McpServerStatus]:
        """`status.run.mcpServers`: each server's state and the tools it offers the agent.
        A granted tool that was listed and is gone makes its server ToolMissing; tools that
        cannot be used (a clashing LLM name, a malformed schema) are named."""
        offered = self.offered(granted)
        out = []
        for name, server in self.servers.items():
            status = server.status or McpServerStatus(
                name=name, ready=False, reason=CONNECTING, message="not listed yet"
            )
            if status.ready:
                mine = [t for t in offered if t.server == name]
                gone = sorted(t for t in server.missing if granted(McpTool(name, t, "", {})))
                clashing = self.clashes.get(name, [])
                over = [
                    t.name
                    for t in server.tools.values()
                    if granted(t) and t not in mine and t.name not in clashing
                ]
                notes = []
                if clashing:
                    notes.append("not usable, their LLM names clash: " + ", ".join(clashing))
                if over:
                    notes.append(f"not offered, over {MAX_MCP_TOOLS} tools: " + ", ".join(over))
                if server.refused:
                    notes.append("refused: " + "; ".join(server.refused))
                update: JSON = {"tools": [t.name for t in mine] or None, "message": None}
                if gone:
                    notes.insert(0, "no longer listed by the server: " + ", ".join(gone))
                    update |= {"ready": False, "reason": TOOL_MISSING}
                if notes:
                    update["message"] = for_log("; ".join(notes), self.redact, MAX_MESSAGE)
                status = status.model_copy(update=update)
            out.append(status)
        return out

    def find(self, name: str) -> McpTool | None:
        """The listed tool of this LLM name, unless another has it too."""
        return self.names.get(name)

    def failure(self, server: str) -> McpError | None:
        """Why a server's tools cannot be used now, if they cannot."""
        known = self.servers.get(server)
        if known is None:
            return McpError(TOOL_MISSING, "the server is no longer in spec.mcpServers")
        status = known.status
        if status is None or status.ready:
            return None
        return McpError(status.reason or PROTOCOL_ERROR, status.message or "")

    async def relist(self, server: str, min_seconds: float = 2.0) -> None:
        """List one server again, unless it just was: an agent calling names that do not
        exist cannot make the kernel hammer the server."""
        known = self.servers.get(server)
        if known is not None and asyncio.get_running_loop().time() - known.tried >= min_seconds:
            await self._list(known)

    async def call(self, tool: McpTool, arguments: JSON) -> JSON:
        """The tool's result; a tool the server no longer lists is ToolMissing, and the
        server's state says so. Whatever goes wrong is an McpError."""
        server = self.servers.get(tool.server)
        if server is None:  # the spec changed since the tool was found
            raise McpError(TOOL_MISSING, "the server is no longer in spec.mcpServers")
        try:
            result = await server.session.call(tool, arguments)
            answer = _redacted(result, self.redact)
        except McpError as err:
            if err.reason in (UNREACHABLE, UNAUTHORIZED):
                raise self._failed(server, err) from None
            if err.reason == PROTOCOL_ERROR:
                # Shown until the server is listed again; its other tools stay offered.
                raise self._failed(server, err, keep_tools=True) from None
            if err.reason == SERVER_ERROR:
                await self._missing(server, tool)
            raise McpError(err.reason, for_log(err.message, self.redact, MAX_MESSAGE)) from None
        except Exception as err:  # a server's answer must never crash the kernel
            raise self._failed(
                server, _unexpected("tools/call", server, err), keep_tools=True
            ) from None
        if result["isError"]:
            await self._missing(server, tool)
        return answer

    async def _missing(self, server: _Server, tool: McpTool) -> None:
        """A failed call may be to a tool the server has dropped since it was listed (the
        SDK answers an error result, the spec a JSON-RPC error): look again, and say so."""
        await self._list(server)
        if tool.name in server.missing:
            raise McpError(TOOL_MISSING, f"the server no longer lists tool {tool.name!r}")


def _unexpected(method: str, server: _Server, err: Exception) -> McpError:
    """An error no check foresaw (say, a RecursionError on an answer nested too deep):
    the server broke the protocol, the kernel goes on."""
    log.warning("MCP server %s: %s: unexpected %s", server.session.name, method, type(err).__name__)
    return McpError(PROTOCOL_ERROR, f"{method} failed on the server's answer: {type(err).__name__}")


def _redacted(result: JSON, redact: Callable[[str], str]) -> JSON:
    """A result as the agent may see it: a credential echoed by the server is hidden."""
    text = json.dumps(result)
    clean = redact(text)
    if clean == text:
        return result
    try:
        loaded: JSON = json.loads(clean)
        return loaded
    except ValueError:
        return {"content": [{"type": "text", "text": clean}], "isError": result["isError"]}
