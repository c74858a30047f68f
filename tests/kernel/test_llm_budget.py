"""Through the kernel's own endpoints: the cap holds, every attempt reaches status, a hang-up
is charged, and a denied request leaves nothing behind.

The kernel is the real aiohttp app; behind its gateway is a local server
speaking Anthropic's or OpenAI's wire format. An agent reaches the LLM only
through `/v1/llm/complete` and `/openai/v1/chat/completions`, so these are
the doors the budget has to hold at.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.kernel.stack import Stack, kernel_stack, replay_file
from tests.llm.test_budget_enforcement import CAP, IDS, KINDS, gateway
from tests.llm.test_providers import KEY
from tests.llm_servers import (
    JSON,
    ProviderServer,
    Reply,
    anthropic_message,
    openai_chunks,
    openai_completion,
)
from toka.api.models import Provider
from toka.kernel.server import MAX_TURN_COUNTERS, Kernel
from toka.llm import LLMConfig, LLMGateway
from toka.llm.ratelimit import TokenBudget

ASK = [{"role": "user", "content": "Fix the build."}]


@asynccontextmanager
async def kernel_with(
    tmp: Path, kind: str, provider: Provider, budget: TokenBudget | None = None
) -> AsyncIterator[tuple[Stack, ProviderServer]]:
    server = await ProviderServer(kind, KEY).start()
    try:
        async with kernel_stack(tmp, ["llm:complete"]) as stack:
            stack.kernel.gateway = gateway(server, provider, budget)
            yield stack, server
    finally:
        await server.stop()


async def eventually(holds: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) for something the kernel does after the client has gone."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not holds():
        if loop.time() > deadline:
            pytest.fail(f"not within {timeout} s")
        await asyncio.sleep(0.01)


# --- the per-call cap ------------------------------------------------------------

DOORS = [
    # (endpoint, the field the agent sets)
    ("/v1/llm/complete", "max_tokens"),
    ("/openai/v1/chat/completions", "max_tokens"),
    ("/openai/v1/chat/completions", "max_completion_tokens"),
]


@pytest.mark.parametrize(("kind", "provider"), KINDS, ids=IDS)
@pytest.mark.parametrize(("path", "field"), DOORS, ids=[f"{p}:{f}" for p, f in DOORS])
@pytest.mark.parametrize(("asked", "sent"), [(1_000_000, CAP), (50, 50)], ids=["huge", "small"])
async def test_an_agent_cannot_ask_the_provider_for_more_than_the_cap(
    tmp_path: Path,
    kind: str,
    provider: Provider,
    path: str,
    field: str,
    asked: int,
    sent: int,
) -> None:
    async with kernel_with(tmp_path, kind, provider) as (stack, server):
        body: JSON = {"messages": ASK, field: asked}
        if path == "/v1/llm/complete":
            body["task"] = "t"
        resp = await stack.http.post(path, json=body)
        assert resp.status_code == 200, resp.text
        assert server.requests[0]["body"]["max_tokens"] == sent


# --- every attempt reaches status ------------------------------------------------


@pytest.mark.parametrize(("kind", "provider"), KINDS, ids=IDS)
@pytest.mark.parametrize("path", ["/v1/llm/complete", "/openai/v1/chat/completions"])
async def test_an_invalid_answer_that_was_retried_is_in_the_agents_usage(
    tmp_path: Path, kind: str, provider: Provider, path: str
) -> None:
    async with kernel_with(tmp_path, kind, provider) as (stack, server):
        empty = (
            anthropic_message("", usage=(40, 7))
            if kind == "anthropic"
            else openai_completion("", usage=(40, 7))
        )
        server.script(Reply(body=empty))
        resp = await stack.http.post(path, json={"messages": ASK})
        assert resp.status_code == 200, resp.text
        usage = stack.reporter.run.usage
        assert usage is not None
        assert (usage.requests, usage.input_tokens, usage.output_tokens) == (1, 52, 12)


# --- a hang-up ---------------------------------------------------------------------


@asynccontextmanager
async def served(kernel: Kernel, *, handler_cancellation: bool) -> AsyncIterator[tuple[str, int]]:
    """The kernel's app on a port of its own: as in the pod (`main.serve`, whose handlers
    run on when the client has gone), or with handlers cancelled when it goes."""
    runner = web.AppRunner(kernel.app(), access_log=None, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield "127.0.0.1", site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("cancelled", [False, True], ids=["as-in-the-pod", "handler-cancelled"])
@pytest.mark.parametrize(("kind", "provider"), KINDS, ids=IDS)
async def test_a_stream_the_agent_hangs_up_on_is_charged_and_reported(
    tmp_path: Path, kind: str, provider: Provider, cancelled: bool
) -> None:
    budget = TokenBudget(limit=100_000)
    async with (
        kernel_with(tmp_path, kind, provider, budget) as (stack, server),
        served(stack.kernel, handler_cancellation=cancelled) as (host, port),
    ):
        arrived, release = asyncio.Event(), asyncio.Event()
        if kind == "openai":
            parts = ["Hel", "lo", ", ", "agent", "."]
            server.script(
                Reply(stream=openai_chunks(parts), started=arrived, hold=release, hold_after=2)
            )
        else:
            server.script(Reply(started=arrived, hold=release))
        body = json.dumps({"messages": ASK, "stream": True}).encode()
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: kernel\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await arrived.wait()
        if kind == "openai":
            # Mid-stream: the agent has read the first words.
            received = b""
            while b'"Hel"' not in received:
                received += await reader.read(4096)
        writer.close()
        await writer.wait_closed()
        release.set()

        def reported() -> bool:
            return stack.reporter.run.usage is not None and stack.reporter.run.usage.requests > 0

        await eventually(reported)
        usage = stack.reporter.run.usage
        assert usage is not None
        # Its usage never reached the kernel: it is charged the whole reservation.
        assert (usage.requests, usage.output_tokens) == (1, CAP)
        assert usage.input_tokens > 0
        assert budget.used == usage.input_tokens + usage.output_tokens
        assert budget.reserved == 0


# --- no state for denied requests ------------------------------------------------


async def test_a_thousand_denied_requests_leave_no_per_task_state(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, ["fs:read:**"]) as stack:
        for i in range(500):
            resp = await stack.http.post(
                "/openai/v1/chat/completions",
                json={"messages": ASK},
                headers={"X-Toka-Task": f"task-{i}"},
            )
            assert resp.status_code == 403
            resp = await stack.http.post(
                "/v1/llm/complete", json={"messages": ASK, "task": f"task-{i}"}
            )
            assert resp.status_code == 403
        assert stack.denials == 1000
        assert stack.kernel._openai_turns == {}


async def test_turn_counters_of_allowed_requests_are_bounded(tmp_path: Path) -> None:
    recording = replay_file(tmp_path, [])
    async with kernel_stack(tmp_path, ["llm:complete"]) as stack:
        stack.kernel.gateway = LLMGateway(
            LLMConfig(
                provider=Provider.REPLAY,
                model="replay",
                replay_path=recording,
                rate_limit_per_minute=1_000_000,
            )
        )
        for i in range(MAX_TURN_COUNTERS + 20):
            resp = await stack.http.post(
                "/openai/v1/chat/completions",
                json={"messages": ASK},
                headers={"X-Toka-Task": f"task-{i}"},
            )
            assert resp.status_code == 409  # the recording has no such task
        assert len(stack.kernel._openai_turns) == MAX_TURN_COUNTERS


BAD_HEADERS: list[tuple[str, dict[str, Any]]] = [
    ("a task name longer than a task's", {"X-Toka-Task": "t" * 64}),
    ("a turn beyond any recording", {"X-Toka-Turn": "9" * 400}),
]


@pytest.mark.parametrize(("case", "headers"), BAD_HEADERS, ids=[c for c, _ in BAD_HEADERS])
async def test_oversized_task_headers_are_refused_before_anything_is_kept(
    tmp_path: Path, case: str, headers: dict[str, str]
) -> None:
    recording = replay_file(tmp_path, [])
    async with kernel_stack(tmp_path, ["llm:complete"], recording=recording) as stack:
        resp = await stack.http.post(
            "/openai/v1/chat/completions", json={"messages": ASK}, headers=headers
        )
        assert resp.status_code == 400
        assert stack.kernel._openai_turns == {}
