"""The kernel's HTTP API on `TOKA_KERNEL_ADDR` (the pod's loopback), and metrics on their own port.

    GET  /v1/agent                     who the agent is: tasks (with resume state), tools allowed
    POST /v1/messages                  EmitObservation, ReportProgress, TaskStarted, TaskCompleted,
                                       TaskFailed, SpawnSubAgent, ScheduleAgentTask
    POST /v1/tools/{name}              fs.read, fs.write, fs.list, shell.exec, http.fetch,
                                       and MCP servers' tools as mcp__<server>__<tool>
    POST /v1/llm/complete              an LLM call through the gateway
    POST /openai/v1/chat/completions   the same, OpenAI-compatible (stream too), no key needed
    GET  /healthz, /readyz

Malformed or oversized input gets a 4xx with a reason, never a 5xx; a
provider's failure is a 502/503/504 naming the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field, StringConstraints, ValidationError

from toka.api.base import MAX_CAPABILITIES, MAX_DESCRIPTION, MAX_NAME
from toka.api.capabilities import MCP_PREFIX, CapabilityError, parse
from toka.api.models import (
    MCP_SERVER_ERROR,
    MCP_TOOL_MISSING,
    MCP_UNAUTHORIZED,
    MCP_UNREACHABLE,
    AgentSpec,
    SandboxMode,
    SpawnRequest,
    TaskSpec,
)
from toka.contract import KERNEL_READY_PATH, MAX_SPAWN_REQUESTS
from toka.kernel.mcp import McpError, McpTool, McpTools, split_llm_name
from toka.kernel.netfetch import FetchRefused, Resolve, fetch, system_resolve
from toka.kernel.policy import Decision, Policy
from toka.kernel.reporter import Reporter
from toka.kernel.results import Results
from toka.kernel.tooldefs import FINISH_TASK, SPAWN_AGENT, TOOLS, ToolDef
from toka.llm import (
    BudgetExceeded,
    ChatMessage,
    Completion,
    CompletionRequest,
    LLMError,
    LLMGateway,
    PermanentProviderError,
    RateLimited,
    ReplayError,
    RetryableProviderError,
    ToolCall,
    ToolSpec,
)
from toka.llm.errors import ConfigError, InvalidResponse
from toka.llm.types import CallStats, TextDelta, Usage
from toka.paths import PathError, canonical_path
from toka.tracing import NO_TRACER, Span, Tracer

log = logging.getLogger("toka.kernel")
JSON = dict[str, Any]
MAX_BODY = 2 * 1024 * 1024
MAX_OBSERVATION = 1024 * 1024
OPENAI_RATE_WAIT = 20.0
MAX_TURN_COUNTERS = 256  # tasks whose OpenAI-style turns are counted; the oldest go first
MAX_TURN = 100_000
MCP_RETRY_WAIT = 5.0
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Big = Annotated[str, StringConstraints(max_length=MAX_OBSERVATION)]


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class EmitObservation(_Strict):
    type: Literal["EmitObservation"]
    message: Big


class ReportProgress(_Strict):
    type: Literal["ReportProgress"]
    percent: int | None = Field(default=None, ge=0, le=100)
    message: Big | None = None


class TaskStarted(_Strict):
    type: Literal["TaskStarted"]
    task: Name


class TaskCompleted(_Strict):
    type: Literal["TaskCompleted"]
    task: Name
    summary: Big = ""


class TaskFailed(_Strict):
    type: Literal["TaskFailed"]
    task: Name
    error: Big = ""


class NewTask(_Strict):
    name: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=MAX_NAME, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        ),
    ]
    description: Annotated[str, StringConstraints(min_length=1, max_length=MAX_DESCRIPTION)]


class SpawnSubAgent(_Strict):
    type: Literal["SpawnSubAgent"]
    name: Annotated[
        str,
        StringConstraints(
            min_length=1, max_length=MAX_NAME, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        ),
    ]
    capabilities: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=list, max_length=MAX_CAPABILITIES
    )
    tasks: list[NewTask] = Field(min_length=1, max_length=16)


class ScheduleAgentTask(_Strict):
    type: Literal["ScheduleAgentTask"]
    task: NewTask


Message = Annotated[
    EmitObservation
    | ReportProgress
    | TaskStarted
    | TaskCompleted
    | TaskFailed
    | SpawnSubAgent
    | ScheduleAgentTask,
    Field(discriminator="type"),
]


MESSAGE_TYPES = frozenset(
    get_args(m.model_fields["type"].annotation)[0]
    for m in (
        EmitObservation,
        ReportProgress,
        TaskStarted,
        TaskCompleted,
        TaskFailed,
        SpawnSubAgent,
        ScheduleAgentTask,
    )
)


class _Envelope(BaseModel):
    message: Message


class WireMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=MAX_OBSERVATION)] = ""
    tool_calls: list[ToolCall] = Field(default_factory=list, max_length=64)
    tool_call_id: Annotated[str, StringConstraints(max_length=256)] | None = None


class LLMCall(_Strict):
    messages: list[WireMessage] = Field(min_length=1, max_length=512)
    # The built-in tools, spawn_agent, finish_task and at most 64 MCP tools.
    tools: list[ToolSpec] = Field(default_factory=list, max_length=128)
    task: Annotated[str, StringConstraints(max_length=MAX_NAME)] = ""
    turn: int = Field(default=0, ge=0, le=MAX_TURN)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)


def _error(status: int, reason: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, "message": message, **extra}, status=status)


def _reason(resp: web.Response) -> str:
    """The `error` of one of the kernel's own error answers (see `_error`)."""
    try:
        return str(json.loads(resp.text or "{}").get("error") or f"http_{resp.status}")
    except (ValueError, AttributeError):
        return f"http_{resp.status}"


def _validation(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg')}"


class Kernel:
    def __init__(
        self,
        *,
        agent: str,
        spec: AgentSpec,
        policy: Policy,
        reporter: Reporter,
        gateway: LLMGateway | None,
        gateway_error: str | None = None,
        tools_socket: str | None = None,
        resolve: Resolve = system_resolve,
        registry: CollectorRegistry | None = None,
        results: Results | None = None,
        tracer: Tracer = NO_TRACER,
        mcp: McpTools | None = None,
    ):
        self.agent = agent
        self.tracer = tracer
        self.spec = spec
        self.policy = policy
        self.reporter = reporter
        self.gateway = gateway
        self.gateway_error = gateway_error
        self.resolve = resolve
        self.ready = False
        self._tools = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=tools_socket) if tools_socket else None,
            base_url="http://tools",
            timeout=httpx.Timeout(660, connect=5),
        )
        self.results = results
        if results is not None:
            results.attach(self._tools)
        self.mcp = mcp
        self._follow_ups: dict[str, str] = {}
        self._sandbox: JSON | None = None
        self._openai_turns: dict[str, int] = {}
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "toka_kernel_decisions", "Policy decisions.", ["op", "decision"], registry=self.registry
        )
        self.messages = Counter(
            "toka_kernel_messages", "Agent messages by type.", ["type"], registry=self.registry
        )

    async def aclose(self) -> None:
        await self._tools.aclose()
        if self.mcp is not None:
            await self.mcp.aclose()
        if self.results is not None:
            await self.results.aclose()
        if self.gateway is not None:
            await self.gateway.aclose()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._never_500])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get(KERNEL_READY_PATH, self.readyz)
        app.router.add_get("/v1/agent", self.describe)
        app.router.add_post("/v1/messages", self.message)
        app.router.add_post("/v1/tools/{name}", self.tool)
        app.router.add_post("/v1/llm/complete", self.llm_complete)
        app.router.add_post("/openai/v1/chat/completions", self.openai_chat)
        if self.results is not None:
            self.results.routes(app)
        return app

    def metrics_app(self) -> web.Application:
        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app

    @web.middleware
    async def _never_500(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "too_large", f"request body over {MAX_BODY} bytes")
        except web.HTTPException:
            raise
        except (ValueError, UnicodeDecodeError) as err:
            return _error(400, "bad_request", str(err)[:300])
        except Exception:
            log.exception("kernel error on %s", request.path)
            return _error(500, "internal", "the kernel failed on this request; see its log")

    async def _json(self, request: web.Request) -> Any:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_BODY, actual_size=request.content_length
            )
        raw = await request.read()
        try:
            return json.loads(raw)
        except ValueError:
            raise ValueError("the body is not valid JSON") from None

    # --- health and self ---------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(self, _: web.Request) -> web.Response:
        return web.json_response({"ready": self.ready}, status=200 if self.ready else 503)

    def allowed_tools(self) -> list[ToolSpec]:
        grant = self.policy.grant
        builtin = [t.spec for t in TOOLS.values() if f"{t.domain}:{t.action}" in grant]
        mcp = self.mcp.offered(self._mcp_granted) if self.mcp is not None else []
        return builtin + [t.spec for t in mcp]

    def _mcp_granted(self, tool: McpTool) -> bool:
        return self.policy.grant.permits("mcp", tool.server, tool.name) is not None

    def report_mcp(self) -> None:
        """`status.run.mcpServers` as the servers and the grant now stand."""
        if self.mcp is not None and self.mcp.servers:
            self.reporter.mcp_servers(self.mcp.statuses(self._mcp_granted))

    async def refresh_mcp(self, *, only_failed: bool = False) -> None:
        if self.mcp is not None and self.mcp.servers:
            await self.mcp.refresh(only_failed=only_failed)
            self.report_mcp()

    async def _workspace_gate(self) -> web.Response | None:
        """Nothing runs on a workspace that failed to be set up (a merge conflict, say)."""
        if self.results is None:
            return None
        await self.results.refresh()
        failed = self.results.failed
        if failed is None:
            return None
        return _error(409, "workspace_failed", f"{failed.reason}: {failed.message}")

    async def describe(self, _: web.Request) -> web.Response:
        workspace = await self.results.refresh() if self.results is not None else None
        # A server that was down gets another chance before the agent learns its tools,
        # for a few seconds at most: the answer is the agent's, not the server's.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(MCP_RETRY_WAIT):
                await self.refresh_mcp(only_failed=True)
        spec = self.spec
        run = self.reporter.run
        states = {t.name: t for t in run.tasks or []}
        tasks = []
        for t in spec.tasks:
            st = states.get(t.name)
            tasks.append(
                {
                    "name": t.name,
                    "description": t.description,
                    "state": st.state if st else "Pending",
                    "summary": st.summary if st else None,
                    "attempts": st.attempts if st else 0,
                }
            )
        for extra in run.tasks or []:
            if extra.name not in {x.name for x in spec.tasks}:
                tasks.append(
                    {
                        "name": extra.name,
                        "description": extra.description or self._follow_ups.get(extra.name, ""),
                        "state": extra.state,
                        "summary": extra.summary,
                        "attempts": extra.attempts,
                    }
                )
        llm = spec.llm
        return web.json_response(
            {
                "name": self.agent,
                "domain": spec.domain.value,
                "workstream": spec.workstream,
                "tasks": tasks,
                "capabilities": self.policy.grant.strings(),
                "handoff": [h.wire() for h in spec.handoff or []],
                "tools": [t.model_dump() for t in self.allowed_tools()]
                + ([SPAWN_AGENT.model_dump()] if "agent:spawn" in self.policy.grant else [])
                + [FINISH_TASK.model_dump()],
                "llm": {
                    "model": llm.model if llm else None,
                    "temperature": llm.temperature if llm else None,
                    "available": "llm:complete" in self.policy.grant,
                },
                "workspace": workspace.wire() if workspace is not None else None,
            }
        )

    # --- messages -------------------------------------------------------------------

    async def message(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        try:
            msg = _Envelope.model_validate({"message": body}).message
        except ValidationError as err:
            kind = body.get("type") if isinstance(body, dict) else None
            if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
                return _error(
                    400,
                    "unknown_operation",
                    f"type must be one of {', '.join(sorted(MESSAGE_TYPES))}, not {kind!r:.100}",
                )
            return _error(422, "invalid", _validation(err))
        self.messages.labels(msg.type).inc()
        r = self.reporter
        if isinstance(msg, EmitObservation):
            r.observe(msg.message)
        elif isinstance(msg, ReportProgress):
            r.progress(msg.percent, msg.message)
        elif isinstance(msg, (TaskStarted, TaskCompleted, TaskFailed)):
            if not r.has_task(msg.task):
                return _error(404, "unknown_task", f"no task named {msg.task!r}")
            if isinstance(msg, TaskStarted):
                r.task_started(msg.task)
            elif isinstance(msg, TaskCompleted):
                if self.results is not None:
                    error = await self.results.task_completed(msg.task, msg.summary)
                    if error is not None:
                        return _error(409, "not_committed", error)
                r.task_completed(msg.task, msg.summary)
                if self.results is not None:
                    await self.results.push_if_done()
            else:
                r.task_failed(msg.task, msg.error)
        elif isinstance(msg, ScheduleAgentTask):
            if not r.follow_up(msg.task.name, msg.task.description):
                return _error(
                    409,
                    "not_scheduled",
                    f"task {msg.task.name!r} exists or the limit of follow-up tasks is reached",
                )
            self._follow_ups[msg.task.name] = msg.task.description
        elif isinstance(msg, SpawnSubAgent):
            return self._spawn(msg)
        return web.json_response({"ok": True})

    def _spawn(self, msg: SpawnSubAgent) -> web.Response:
        decision = self.policy.check("agent.spawn", "agent", "spawn", name=msg.name)
        self.decisions.labels("agent.spawn", "allow" if decision.allowed else "deny").inc()
        if not decision.allowed:
            return _error(403, "denied", decision.reason)
        try:
            for cap in msg.capabilities:
                parse(cap)
        except CapabilityError as err:
            return _error(422, "invalid", str(err))
        request = SpawnRequest(
            id=uuid.uuid4().hex[:12],
            name=msg.name,
            capabilities=msg.capabilities or None,
            tasks=[TaskSpec(name=t.name, description=t.description) for t in msg.tasks],
        )
        if not self.reporter.spawn_request(request):
            return _error(
                409, "not_requested", f"at most {MAX_SPAWN_REQUESTS} spawn requests per agent"
            )
        # The operator decides (narrowing, count, depth, budget) and answers in status.spawnResults.
        return web.json_response({"ok": True, "id": request.id, "state": "requested"}, status=202)

    # --- tools -------------------------------------------------------------------------

    async def tool(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        # Only names of real tools name spans: anything else would grow the span names.
        mcp = name.startswith(MCP_PREFIX) and self.mcp is not None and self.mcp.find(name)
        known = name in TOOLS or bool(mcp)
        with self.tracer.span(
            f"execute_tool {name}" if known else "execute_tool",
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name if known else None,
                "gen_ai.tool.type": "extension" if mcp else "function",
            },
        ) as span:
            resp = await self._tool(request, name)
            if resp.status >= 400 and span.recording:
                span.fail(_reason(resp), f"HTTP {resp.status}")
            return resp

    async def _tool(self, request: web.Request, name: str) -> web.Response:
        if name.startswith(MCP_PREFIX):
            return await self._mcp_tool(request, name)
        tool = TOOLS.get(name)
        if tool is None:
            return _error(
                404, "unknown_tool", f"no tool {name!r}; tools: {', '.join(sorted(TOOLS))}"
            )
        args = await self._json(request)
        if not isinstance(args, dict):
            return _error(400, "bad_request", "the body must be a JSON object of arguments")
        from toka.llm.validate import schema_errors

        # The kernel's own schemas: their patterns are ours, and applied.
        problems = schema_errors(args, tool.spec.parameters, patterns=True)
        if problems:
            return _error(422, "invalid", "; ".join(problems[:5]))
        gate = await self._workspace_gate()
        if gate is not None:
            return gate
        as_sent = None
        if tool.domain == "fs":
            raw = str(args.get("path") or "")
            path, bad = _canonical(raw, directory=name == "fs.list")
            if bad is not None:
                decision = self.policy.deny(name, bad, target=raw)
                self.decisions.labels(name, "deny").inc()
                return _error(403, "denied", decision.reason)
            # The grant is checked on exactly the path the tools sidecar opens.
            args = {**args, "path": path}
            as_sent = raw if raw != path else None
        target = tool.target(args)
        if tool.domain == "shell" and ("/" in target or target in ("", ".", "..")):
            decision = self.policy.deny(
                name, f"argv[0] must be a program name, not {target!r}", target=target
            )
            self.decisions.labels(name, "deny").inc()
            return _error(403, "denied", decision.reason)
        decision = self.policy.check(name, tool.domain, tool.action, target, raw=as_sent)
        self.decisions.labels(name, "allow" if decision.allowed else "deny").inc()
        if not decision.allowed:
            return _error(403, "denied", decision.reason)
        if tool.domain == "fs":
            refused = await self._check_symlink_target(name, tool, args, target)
            if refused is not None:
                return refused
        if name == "http.fetch":
            return await self._fetch(args)
        if tool.domain == "shell":
            refused = await self._confine(name, args)
            if refused is not None:
                return refused
        answer = await self._call_tools(name, args)
        if isinstance(answer, web.Response):
            return answer
        if name == "fs.list":
            answer = self._covered(answer)
        return web.json_response(answer)

    async def _mcp_tool(self, request: web.Request, name: str) -> web.Response:
        """A tool of an MCP server: granted per tool (`mcp:<server>:<tool-glob>`), its
        arguments checked against the schema the server listed, then called by the kernel,
        which alone holds the server's credential.

        The tool is found first (its server listed again if the name is new), and the
        grant is checked on its real name: an LLM name only spells it (`search.delete`
        is `mcp__docs__search_delete`), and `mcp:docs:search_*` must not reach it. A name
        no tool has is checked as spelled, so that a name not granted is refused alike
        whether a tool has it or not."""
        args = await self._json(request)
        if not isinstance(args, dict):
            return _error(400, "bad_request", "the body must be a JSON object of arguments")
        mcp = self.mcp
        tool = mcp.find(name) if mcp is not None else None
        spelled = split_llm_name(name)
        if (
            tool is None
            and mcp is not None
            and spelled
            and spelled[0] in mcp.servers
            and any(c.key == f"mcp:{spelled[0]}" for c in self.policy.grant.capabilities)
        ):
            # Listed since the agent last asked, or gone: the server says which (not
            # asked for an agent that may call none of its tools).
            await mcp.relist(spelled[0])
            self.report_mcp()
            tool = mcp.find(name)
        server, tool_name = (tool.server, tool.name) if tool else spelled or ("", "")
        if not server:
            return _error(
                404, "unknown_tool", f"{name[:100]!r} is not an MCP tool: mcp__<server>__<tool>"
            )
        decision = self.policy.check("mcp.call", "mcp", server, tool_name, server=server)
        self.decisions.labels("mcp.call", "allow" if decision.allowed else "deny").inc()
        if not decision.allowed:
            return _error(403, "denied", decision.reason)
        if mcp is None or server not in mcp.servers:
            return _error(404, "unknown_tool", f"no MCP server {server!r} in spec.mcpServers")
        gate = await self._workspace_gate()
        if gate is not None:
            return gate
        if tool is None:
            failure = mcp.failure(server)
            if failure is not None:
                return _mcp_failure(server, failure)
            shared = [t.name for t in mcp.shared.get(name, [])]
            if shared:
                return _error(
                    404,
                    "tool_missing",
                    f"{name!r} stands for several tools ({', '.join(shared)}): none is callable",
                )
            return _error(404, "tool_missing", f"MCP server {server!r} lists no tool {tool_name!r}")
        from toka.llm.validate import schema_errors

        # Not the server's patterns (see toka.llm.validate): it validates its own input.
        problems = schema_errors(args, tool.schema)
        if problems:
            return _error(
                400,
                "invalid_arguments",
                f"arguments of {tool.name!r} do not match its schema: {'; '.join(problems[:5])}",
            )
        try:
            answer = await mcp.call(tool, args)
        except McpError as err:
            return _mcp_failure(server, err)
        finally:
            self.report_mcp()
        return web.json_response({"server": server, "tool": tool.name, **answer})

    def _covered(self, listing: JSON) -> JSON:
        """Tools list every name below the directory; the agent sees those its grant
        covers, so `fs:read:src/*` lists `src/a.py`, never `src/deep/x.py`."""
        grant = self.policy.grant
        entries = [
            e
            for e in listing.get("entries") or []
            if isinstance(e, str)
            and _canonical(e)[1] is None
            and grant.permits("fs", "read", e) is not None
        ]
        return {**listing, "entries": entries}

    async def _call_tools(self, name: str, args: JSON) -> JSON | web.Response:
        """The tools sidecar's answer, or its refusal as the kernel's own 4xx: a 403 there
        (a symlink out of the workspace) is a denial like any other."""
        try:
            resp = await self._tools.post(f"/{name}", json=args)
            data = resp.json()
        except httpx.HTTPError as err:
            return _error(
                503, "tools_unavailable", f"the tools sidecar did not answer: {type(err).__name__}"
            )
        except ValueError:
            return _error(502, "tools_error", "the tools sidecar sent an unreadable answer")
        if resp.status_code == 200 and isinstance(data, dict):
            return data
        message = str(data.get("error") if isinstance(data, dict) else data)[:1000]
        if resp.status_code == 403:
            decision = self.policy.deny(name, message, target=args.get("path"))
            self.decisions.labels(name, "deny").inc()
            return _error(403, "denied", decision.reason)
        reason = {404: "not_found", 413: "too_large"}.get(resp.status_code, "tool_failed")
        return _error(resp.status_code if resp.status_code < 500 else 502, reason, message)

    async def _check_symlink_target(
        self, name: str, tool: ToolDef, args: JSON, target: str
    ) -> web.Response | None:
        """A grant names paths, so a symlink must not lead outside it: the real target is
        checked too. `fs:read:public/**` does not read `public/link` → `private/key`.
        Tools is then sent the real path, which it opens following no symlink: one
        swapped in after this check is refused, not followed."""
        resolved = await self._call_tools("fs.resolve", {"path": args.get("path") or ""})
        if isinstance(resolved, web.Response):
            return resolved
        real = str(resolved.get("path", ""))
        real_target = tool.target({**args, "path": real})
        if real_target == target:
            return None
        decision = self.policy.check(name, tool.domain, tool.action, real_target, via=target)
        self.decisions.labels(name, "allow" if decision.allowed else "deny").inc()
        if decision.allowed:
            args["path"] = real
            return None
        return _error(403, "denied", f"{target!r} leads to {real!r}: {decision.reason}")

    async def _confine(self, name: str, args: JSON) -> web.Response | None:
        """Tell tools what the program may touch (the `fs:` grants), or refuse to run it
        unconfined: without Landlock only `spec.sandbox: BestEffort` runs programs."""
        sandbox = await self._sandbox_level()
        if sandbox.get("landlock", 0) < 1 and self.spec.sandbox != SandboxMode.BEST_EFFORT:
            decision = self.policy.deny(
                name,
                "programs run only under Landlock, which this node's kernel does not offer; "
                "set spec.sandbox: BestEffort to run them unconfined",
                target=args["argv"][0],
            )
            self.decisions.labels(name, "deny").inc()
            return _error(403, "denied", decision.reason)
        grant = self.policy.grant.capabilities
        args["confine"] = {
            "read": [c.scope for c in grant if c.key == "fs:read"],
            "write": [c.scope for c in grant if c.key == "fs:write"],
            "mode": self.spec.sandbox.value,
        }
        return None

    async def _sandbox_level(self) -> JSON:
        """What tools can confine programs with, asked once, audited and reported."""
        if self._sandbox is None:
            answer = await self._call_tools("sandbox.status", {})
            if isinstance(answer, web.Response):
                return {"landlock": 0}
            self._sandbox = answer
            level = sandbox_level(answer, self.spec.sandbox)
            self.policy.audit(
                "sandbox",
                Decision(True, None, f"shell.exec sandbox: {level['level']}"),
                landlock=answer.get("landlock"),
            )
            self.reporter.sandbox(level)
        return self._sandbox

    async def _fetch(self, args: JSON) -> web.Response:
        def allow(host: str) -> bool:
            return self.policy.grant.permits("net", "http", host) is not None

        try:
            result = await fetch(
                args["url"],
                method=args.get("method", "GET"),
                body=args.get("body"),
                resolve=self.resolve,
                allow_host=allow,
            )
        except FetchRefused as err:
            decision = self.policy.deny("http.fetch", str(err), target=args["url"])
            self.decisions.labels("http.fetch", "deny").inc()
            return _error(403, "denied", decision.reason)
        except (TimeoutError, OSError, Exception) as err:
            return _error(502, "fetch_failed", f"{type(err).__name__}: {str(err)[:200]}")
        return web.json_response(result)

    # --- LLM ---------------------------------------------------------------------------

    async def _llm_gate(self, op: str) -> web.Response | None:
        workspace = await self._workspace_gate()
        if workspace is not None:
            return workspace
        decision = self.policy.check(op, "llm", "complete")
        self.decisions.labels(op, "allow" if decision.allowed else "deny").inc()
        if not decision.allowed:
            return _error(403, "denied", decision.reason)
        if self.gateway is None:
            return _error(
                503, "llm_unavailable", f"the LLM is not configured: {self.gateway_error}"
            )
        return None

    def _llm_failure(self, err: LLMError) -> web.Response:
        if isinstance(err, RateLimited):
            return web.json_response(
                {"error": "rate_limited", "message": str(err)},
                status=429,
                headers={"Retry-After": str(max(1, round(err.retry_after)))},
            )
        if isinstance(err, BudgetExceeded):
            return _error(403, "budget_exceeded", str(err))
        if isinstance(err, ReplayError):
            return _error(409, "replay", str(err))
        if isinstance(err, ConfigError):
            return _error(503, "llm_unavailable", str(err))
        if isinstance(err, PermanentProviderError):
            return _error(502, "provider_error", str(err), provider_status=err.status)
        if isinstance(err, (RetryableProviderError, InvalidResponse)):
            return _error(504 if err.reason == "timeout" else 503, "provider_unavailable", str(err))
        return _error(502, "llm_error", str(err))

    def _chat(self, req: CompletionRequest, *, stream: bool = False) -> tuple[str, JSON]:
        """The name and attributes of one LLM call's span (a GenAI `chat` span)."""
        assert self.gateway is not None
        config = self.gateway.config
        model = req.model or config.model
        return f"chat {model}", {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.gateway.provider.name,
            "gen_ai.request.model": model,
            "gen_ai.request.max_tokens": config.output_cap(req.max_tokens),
            "gen_ai.request.temperature": req.temperature,
            "gen_ai.request.stream": stream,
            "server.address": urlsplit(config.endpoint).hostname,
            "toka.task": req.task or None,
            "toka.turn": req.turn,
        }

    def _asked(self, span: Span, req: CompletionRequest) -> None:
        """The prompt goes on the span only with LLM_DEBUG, redacted as the debug log is."""
        if span.recording and self.gateway is not None and self.gateway.config.debug:
            messages = json.dumps([m.model_dump() for m in req.messages])
            span.event(
                "gen_ai.client.inference.operation.details",
                {"gen_ai.input.messages": self.policy.redact(messages)},
            )

    def _charged(self, span: Span) -> Callable[[Usage], None]:
        """The charge hook: the agent's usage, and the same tokens on the call's span."""
        if not span.recording:
            return self._account

        def charge(usage: Usage) -> None:
            self._account(usage)
            span.update(
                {
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                }
            )

        return charge

    def _answered(self, span: Span, completion: Completion) -> None:
        if not span.recording:
            return
        span.update(
            {
                "gen_ai.response.model": completion.model or None,
                "gen_ai.response.finish_reasons": [completion.stop_reason],
            }
        )
        if self.gateway is not None and self.gateway.config.debug:
            span.event(
                "gen_ai.client.inference.operation.details",
                {"gen_ai.output.messages": self.policy.redact(completion.model_dump_json())},
            )

    async def _observed(
        self, stream: AsyncGenerator[TextDelta | Completion | CallStats, None], span: Span
    ) -> AsyncGenerator[TextDelta | Completion | CallStats, None]:
        """The gateway's stream, its answer and failure recorded on the call's span, which
        ends when the stream is closed."""
        try:
            async with aclosing(stream):
                async for item in stream:
                    if isinstance(item, Completion):
                        self._answered(span, item)
                    yield item
        except LLMError as err:
            span.fail(err.reason)
            raise
        finally:
            span.end()

    def _account(self, usage: Usage) -> None:
        """The gateway's charge for one call (every attempt, failed or abandoned too)."""
        self.reporter.usage(usage.input_tokens, usage.output_tokens)

    async def llm_complete(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        try:
            call = LLMCall.model_validate(body)
        except ValidationError as err:
            return _error(422, "invalid", _validation(err))
        gate = await self._llm_gate("llm.complete")
        if gate is not None:
            return gate
        assert self.gateway is not None
        req = CompletionRequest(
            messages=[ChatMessage(**m.model_dump()) for m in call.messages],
            tools=call.tools,
            temperature=call.temperature,
            max_tokens=call.max_tokens,
            agent=self.spec.name or self.agent,
            task=call.task,
            turn=call.turn,
        )
        with self.tracer.span(*self._chat(req)) as span:
            self._asked(span, req)
            try:
                completion, stats = await self.gateway.complete(req, on_charge=self._charged(span))
            except LLMError as err:
                span.fail(err.reason)
                return self._llm_failure(err)
            self._answered(span, completion)
        return web.json_response(
            {"completion": completion.model_dump(), "stats": stats.model_dump()}
        )

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        try:
            req, stream = self._from_openai(body, request)
        except (ValueError, ValidationError, TypeError, KeyError) as err:
            msg = _validation(err) if isinstance(err, ValidationError) else str(err)
            return web.json_response(
                {"error": {"message": msg, "type": "invalid_request_error", "code": "invalid"}},
                status=400,
            )
        gate = await self._llm_gate("openai.chat")
        if gate is not None:
            payload = json.loads(gate.text or "{}")
            return web.json_response(
                {
                    "error": {
                        "message": payload.get("message"),
                        "type": "permission_denied" if gate.status == 403 else "unavailable",
                        "code": payload.get("error"),
                    }
                },
                status=gate.status,
            )
        assert self.gateway is not None
        if not req.turn:
            req.turn = self._next_turn(req.task)
        if not stream:
            with self.tracer.span(*self._chat(req)) as span:
                self._asked(span, req)
                try:
                    completion, _ = await self.gateway.complete(
                        req, max_rate_wait=OPENAI_RATE_WAIT, on_charge=self._charged(span)
                    )
                except LLMError as err:
                    span.fail(err.reason)
                    return self._openai_error(err)
                self._answered(span, completion)
            return web.json_response(_to_openai(completion, req))
        return await self._openai_stream(request, req)

    def _next_turn(self, task: str) -> int:
        """Turns of calls that name none, counted per task once the call is allowed; only
        the most recently used tasks are kept, so task names cannot grow the kernel."""
        turns = self._openai_turns
        turn = turns.pop(task, 0) + 1
        turns[task] = turn
        while len(turns) > MAX_TURN_COUNTERS:
            del turns[next(iter(turns))]
        return turn

    def _openai_error(self, err: LLMError) -> web.Response:
        resp = self._llm_failure(err)
        payload = json.loads(resp.text or "{}")
        return web.json_response(
            {
                "error": {
                    "message": payload.get("message"),
                    "type": payload.get("error"),
                    "code": payload.get("error"),
                }
            },
            status=resp.status,
            headers={k: v for k, v in resp.headers.items() if k == "Retry-After"},
        )

    async def _openai_stream(
        self, request: web.Request, req: CompletionRequest
    ) -> web.StreamResponse:
        assert self.gateway is not None
        span = self.tracer.start(*self._chat(req, stream=True))
        self._asked(span, req)
        stream = self._observed(
            self.gateway.stream(req, max_rate_wait=OPENAI_RATE_WAIT, on_charge=self._charged(span)),
            span,
        )
        # Closed on every way out, the agent hanging up included: closing settles the call.
        async with aclosing(stream):
            try:
                first = await anext(stream)
            except LLMError as err:
                return self._openai_error(err)
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            try:
                await resp.prepare(request)
                await _openai_chunks(resp, req, first, stream)
            except ConnectionResetError:
                log.info("the agent hung up on a streamed LLM call; it is charged all the same")
            return resp

    def _from_openai(self, body: Any, request: web.Request) -> tuple[CompletionRequest, bool]:
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: a non-empty list is required")
        out: list[ChatMessage] = []
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in (
                "system",
                "developer",
                "user",
                "assistant",
                "tool",
            ):
                raise ValueError("messages: each needs a role of system, user, assistant or tool")
            content = m.get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            if not isinstance(content, str):
                raise ValueError("messages: content must be a string or a list of text parts")
            calls = [
                ToolCall(
                    id=c["id"],
                    name=c["function"]["name"],
                    arguments=json.loads(c["function"].get("arguments") or "{}"),
                )
                for c in m.get("tool_calls") or []
            ]
            role = "system" if m["role"] == "developer" else m["role"]
            out.append(
                ChatMessage(
                    role=role, content=content, tool_calls=calls, tool_call_id=m.get("tool_call_id")
                )
            )
        tools = [
            ToolSpec(
                name=t["function"]["name"],
                description=t["function"].get("description", ""),
                parameters=t["function"].get("parameters") or {"type": "object", "properties": {}},
            )
            for t in body.get("tools") or []
            if isinstance(t, dict) and t.get("type") == "function"
        ]
        task = request.headers.get("X-Toka-Task") or self.reporter.run.current_task or "chat"
        if len(task) > MAX_NAME:
            raise ValueError(f"X-Toka-Task: a task name has at most {MAX_NAME} characters")
        # Without X-Toka-Turn the turn is counted per task, but only once the call is allowed.
        raw_turn = request.headers.get("X-Toka-Turn", "")
        turn = 0
        if raw_turn.isdigit():
            if len(raw_turn) > len(str(MAX_TURN)) or int(raw_turn) > MAX_TURN:
                raise ValueError(f"X-Toka-Turn: at most {MAX_TURN}")
            turn = int(raw_turn)
        temperature = body.get("temperature")
        req = CompletionRequest(
            messages=out,
            tools=tools,
            model=None,
            temperature=float(temperature) if temperature is not None else None,
            max_tokens=_openai_max_tokens(body),
            agent=self.spec.name or self.agent,
            task=task,
            turn=turn,
        )
        return req, bool(body.get("stream"))


def _mcp_failure(server: str, err: McpError) -> web.Response:
    status, reason = {
        MCP_UNREACHABLE: (503, "mcp_unavailable"),
        MCP_UNAUTHORIZED: (502, "mcp_unauthorized"),
        MCP_TOOL_MISSING: (404, "tool_missing"),
        MCP_SERVER_ERROR: (502, "mcp_server_error"),
    }.get(err.reason, (502, "mcp_protocol_error"))
    return _error(status, reason, f"MCP server {server!r}: {err.message}", mcp_reason=err.reason)


def _openai_max_tokens(body: JSON) -> int | None:
    """The smaller of `max_completion_tokens` and (deprecated) `max_tokens`; the gateway
    clamps it to the configured cap."""
    asked: list[int] = []
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}: a positive whole number is required")
        asked.append(value)
    return min(asked, default=None)


async def _openai_chunks(
    resp: web.StreamResponse,
    req: CompletionRequest,
    first: TextDelta | Completion | CallStats,
    stream: AsyncIterator[TextDelta | Completion | CallStats],
) -> None:
    """The gateway's stream as OpenAI's SSE chunks, ending with usage and `[DONE]`."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())

    async def send(delta: JSON, finish: str | None = None, usage: JSON | None = None) -> None:
        chunk: JSON = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": req.model or "toka",
            "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            chunk["usage"] = usage
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

    await send({"role": "assistant", "content": ""})
    item = first
    try:
        while not isinstance(item, CallStats):
            if isinstance(item, TextDelta):
                await send({"content": item.text})
            else:
                for i, call in enumerate(item.tool_calls):
                    await send(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": call.id,
                                    "type": "function",
                                    "function": {
                                        "name": call.name,
                                        "arguments": json.dumps(call.arguments),
                                    },
                                }
                            ]
                        }
                    )
                await send({}, finish="tool_calls" if item.tool_calls else "stop")
                await send(
                    {},
                    usage={
                        "prompt_tokens": item.usage.input_tokens,
                        "completion_tokens": item.usage.output_tokens,
                        "total_tokens": item.usage.total,
                    },
                )
            item = await anext(stream)
    except LLMError as err:
        await resp.write(f"data: {json.dumps({'error': {'message': str(err)}})}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()


def _to_openai(completion: Completion, req: CompletionRequest) -> JSON:
    message: JSON = {
        "role": "assistant",
        "content": completion.content or None,
        "refusal": completion.refusal,
    }
    if completion.tool_calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in completion.tool_calls
        ]
    finish = {"tool_use": "tool_calls", "max_tokens": "length", "refusal": "content_filter"}.get(
        completion.stop_reason, "stop"
    )
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model or "toka",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": completion.usage.input_tokens,
            "completion_tokens": completion.usage.output_tokens,
            "total_tokens": completion.usage.total,
        },
    }


def sandbox_level(answer: JSON, mode: SandboxMode) -> JSON:
    """The Agent's `status.run.sandbox` from what tools reported."""
    abi = int(answer.get("landlock") or 0)
    if abi >= 1:
        level = "Landlock"
    else:
        level = "Unconfined" if mode == SandboxMode.BEST_EFFORT else "Refused"
    return {
        "level": level,
        "landlockAbi": abi,
        "guarantees": list(answer.get("guarantees") or []),
    }


def _canonical(path: str, *, directory: bool = False) -> tuple[str, str | None]:
    """The one spelling of `path` that the grant is checked on and tools open, or the
    reason it has none (and so is refused)."""
    try:
        canonical = canonical_path(path, directory=directory)
    except PathError as err:
        return path, str(err)
    if ".git" in canonical.split("/"):
        return canonical, f"{path!r} is in the workspace's git metadata, which only Toka may touch"
    return canonical, None
