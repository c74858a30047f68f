"""A kernel and a tools server wired as in the pod, on loopback and a Unix socket.

The kernel's HTTP server is the real aiohttp app; the tools server is the
real stdlib server on a real Unix socket over a real workspace directory;
the LLM is the `replay` provider over a recording file. Only the status
writes go to an in-memory recorder, since these tests are about decisions,
not about the API server (the operator tests cover that path).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp.test_utils import TestServer

from toka.api.capabilities import Grant
from toka.api.models import AgentSpec
from toka.kernel.policy import Policy
from toka.kernel.reporter import Reporter
from toka.kernel.results import Results
from toka.kernel.server import Kernel
from toka.llm.config import LLMConfig, Provider
from toka.llm.gateway import LLMGateway
from toka.llm.sanitize import Redactor
from toka.tools.ops import AS_IS, Workspace
from toka.tools.server import ToolServer

JSON = dict[str, Any]


class StatusWrites:
    """Where the reporter's merge patches go in these tests."""

    def __init__(self) -> None:
        self.bodies: list[JSON] = []

    async def patch(self, res: Any, name: str, body: JSON, ns: str, **_: Any) -> JSON:
        self.bodies.append(body)
        return body


@dataclass
class Stack:
    http: httpx.AsyncClient
    kernel: Kernel
    reporter: Reporter
    workspace: Path
    audit: io.StringIO

    def audit_records(self) -> list[JSON]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines() if line]

    @property
    def denials(self) -> int:
        return self.reporter.run.denials.count if self.reporter.run.denials else 0


def replay_file(tmp: Path, turns: list[JSON], agent: str = "a") -> Path:
    path = tmp / "recording.json"
    path.write_text(json.dumps({"version": 1, "agent": agent, "turns": turns}))
    return path


def hello_recording(tmp: Path) -> Path:
    """One recorded turn (task `t`, turn 1) that answers "hello"."""
    turn = {
        "task": "t",
        "turn": 1,
        "response": {"content": "hello"},
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    return replay_file(tmp, [turn])


@asynccontextmanager
async def kernel_stack(
    tmp: Path,
    capabilities: list[str],
    *,
    recording: Path | None = None,
    results: Callable[[Reporter], Results] | None = None,
) -> AsyncIterator[Stack]:
    workspace = tmp / "workspace"
    workspace.mkdir(exist_ok=True)
    socket = tmp / "tools.sock"
    tools = ToolServer(str(socket), workspace, Workspace(workspace, dict(AS_IS), {}))
    thread = threading.Thread(target=tools.serve_forever, daemon=True)
    thread.start()
    audit = io.StringIO()
    reporter = Reporter(StatusWrites(), "ns", "a")  # type: ignore[arg-type]
    reporter.adopt(None, ["t"])
    policy = Policy(
        Grant.from_strings(capabilities),
        agent="a",
        redact=Redactor(),
        on_denial=reporter.denial,
        out=audit,
    )
    gateway = (
        LLMGateway(LLMConfig(provider=Provider.REPLAY, model="replay", replay_path=recording))
        if recording is not None
        else None
    )
    kernel = Kernel(
        agent="a",
        spec=AgentSpec(capabilities=capabilities, tasks=[{"name": "t", "description": "x"}]),
        policy=policy,
        reporter=reporter,
        gateway=gateway,
        gateway_error=None if recording else "no recording in this test",
        tools_socket=str(socket),
        results=results(reporter) if results is not None else None,
    )
    kernel.ready = True
    server = TestServer(kernel.app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", timeout=30
        ) as client:
            yield Stack(client, kernel, reporter, workspace, audit)
    finally:
        await server.close()
        await kernel.aclose()
        tools.shutdown()
        tools.server_close()
        thread.join(5)
