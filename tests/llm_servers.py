"""Local HTTP servers that speak the providers' real wire formats, errors included.

Each test scripts the replies it needs (status, headers, body, delay, a cut
connection); unscripted requests get a normal, valid answer. Every request
is recorded (headers and JSON body) so tests can assert what was sent.
Bodies follow the providers' documented shapes: Anthropic's Messages API
(`type: message`, content blocks, `type: error`) and OpenAI's Chat
Completions (`choices`, `tool_calls` with string arguments, SSE chunks,
`{"error": {...}}`).

A reply can also be held until the test releases it (`hold`, after
`hold_after` SSE chunks), so a test can hang up on the kernel at a known
point, and its body can be built from the request (`body_for`), so a server
can bill exactly the `max_tokens` it was granted.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

JSON = dict[str, Any]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict → JSON; bytes/str → raw
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    truncate: bool = False  # promise more bytes than sent, then cut the connection
    stream: list[Any] | None = None  # OpenAI SSE: chunks (dicts), "[DONE]" added unless cut
    cut_stream: bool = False
    started: asyncio.Event | None = None  # set once the request has arrived
    hold: asyncio.Event | None = None  # answer (or go on streaming) only once this is set
    hold_after: int = 0  # SSE chunks sent before holding
    body_for: Callable[[JSON], Any] | None = None  # the body, from the request's body


def anthropic_message(
    text: str = "Hello.",
    tool_calls: list[JSON] | None = None,
    usage: tuple[int, int] = (12, 5),
    stop: str | None = None,
) -> JSON:
    content: list[JSON] = [{"type": "text", "text": text}] if text else []
    for call in tool_calls or []:
        content.append(
            {"type": "tool_use", "id": call["id"], "name": call["name"], "input": call["input"]}
        )
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": content,
        "stop_reason": stop or ("tool_use" if tool_calls else "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def anthropic_error(kind: str, message: str) -> JSON:
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_completion(
    text: str | None = "Hello.",
    tool_calls: list[JSON] | None = None,
    usage: tuple[int, int] = (12, 5),
    refusal: str | None = None,
) -> JSON:
    message: JSON = {"role": "assistant", "content": text, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["input"])},
            }
            for c in tool_calls
        ]
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        },
    }


def openai_error(
    message: str, kind: str = "invalid_request_error", code: str | None = None
) -> JSON:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def openai_chunks(
    text_parts: list[str], usage: tuple[int, int] = (12, 5), tool_call: JSON | None = None
) -> list[JSON]:
    base = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-2024-08-06",
    }
    chunks = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    ]
    for part in text_parts:
        chunks.append(
            {**base, "choices": [{"index": 0, "delta": {"content": part}, "finish_reason": None}]}
        )
    if tool_call:
        args = json.dumps(tool_call["input"])
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": tool_call["id"],
                                    "type": "function",
                                    "function": {"name": tool_call["name"], "arguments": ""},
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ],
            }
        )
        for i in range(0, len(args), 7):
            chunks.append(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {
                                "tool_calls": [
                                    {"index": 0, "function": {"arguments": args[i : i + 7]}}
                                ]
                            },
                            "finish_reason": None,
                        }
                    ],
                }
            )
    chunks.append(
        {
            **base,
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_call else "stop"}
            ],
        }
    )
    chunks.append(
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": usage[0],
                "completion_tokens": usage[1],
                "total_tokens": sum(usage),
            },
        }
    )
    return chunks


class ProviderServer:
    """An Anthropic- or OpenAI-speaking server on 127.0.0.1 with scripted replies."""

    def __init__(self, kind: str, api_key: str | None = "sk-test-key-0123456789abcdef"):
        self.kind = kind
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.requests: list[JSON] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> ProviderServer:
        app = web.Application()
        if self.kind == "anthropic":
            app.router.add_post("/v1/messages", self._handle)
        else:
            app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}" + ("" if self.kind == "anthropic" else "/v1")
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        if self.kind == "anthropic":
            if (
                request.headers.get("x-api-key") != self.api_key
                or "anthropic-version" not in request.headers
            ):
                return web.json_response(
                    anthropic_error("authentication_error", "invalid x-api-key"), status=401
                )
            return None
        auth = request.headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            # OpenAI's real 401 echoes (part of) the key; ours echoes all of it.
            return web.json_response(
                openai_error(
                    f"Incorrect API key provided: {auth.removeprefix('Bearer ')}. "
                    "You can find your API key at https://platform.openai.com/account/api-keys.",
                    code="invalid_api_key",
                ),
                status=401,
            )
        return None

    def _default(self, body: JSON) -> Reply:
        if self.kind == "anthropic":
            return Reply(body=anthropic_message())
        if body.get("stream"):
            return Reply(stream=openai_chunks(["Hel", "lo."]))
        return Reply(body=openai_completion())

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_raw": raw.decode(errors="replace")}
        self.requests.append({"headers": dict(request.headers), "body": body})
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        reply = self.replies.popleft() if self.replies else self._default(body)
        if reply.started is not None:
            reply.started.set()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.stream is not None:
            return await self._sse(request, reply)
        if reply.hold is not None:
            await reply.hold.wait()
        if reply.body_for is not None:
            reply.body = reply.body_for(body)
        if reply.body is None:
            reply.body = self._default(body).body
        payload = (
            reply.body
            if isinstance(reply.body, bytes)
            else (
                reply.body.encode()
                if isinstance(reply.body, str)
                else json.dumps(reply.body).encode()
            )
        )
        if reply.truncate:
            resp = web.StreamResponse(
                status=reply.status, headers={"Content-Type": "application/json", **reply.headers}
            )
            resp.content_length = len(payload) + 100
            await resp.prepare(request)
            await resp.write(payload[: len(payload) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(
            status=reply.status,
            body=payload,
            headers={"Content-Type": "application/json", **reply.headers},
        )

    async def _sse(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=reply.status, headers={"Content-Type": "text/event-stream"}
        )
        await resp.prepare(request)
        assert reply.stream is not None
        try:
            for i, chunk in enumerate(reply.stream):
                if reply.hold is not None and i == reply.hold_after:
                    await reply.hold.wait()
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        except ConnectionResetError:
            return resp  # the client (the gateway) hung up: nothing more to send
        if reply.cut_stream:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
