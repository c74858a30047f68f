"""Anthropic Messages API: `x-api-key` and `anthropic-version` headers, content blocks,
tool_use / tool_result. The original sent a Bearer header; this is the documented one."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

import httpx

from toka.llm.config import LLMConfig
from toka.llm.errors import InvalidResponse
from toka.llm.providers.base import (
    JSON,
    debug_hooks,
    parse_arguments,
    post_json,
    reported_usage,
)
from toka.llm.types import Completion, CompletionRequest, TextDelta, ToolCall, Usage

ANTHROPIC_VERSION = "2023-06-01"
_STOP = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "refusal": "refusal",
}


def to_anthropic(request: CompletionRequest, config: LLMConfig) -> JSON:
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    messages: list[JSON] = []
    for m in request.messages:
        if m.role == "system":
            continue
        if m.role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            _append(messages, "user", block)
        elif m.role == "assistant":
            blocks: list[JSON] = [{"type": "text", "text": m.content}] if m.content else []
            blocks += [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
            for b in blocks:
                _append(messages, "assistant", b)
        else:
            _append(messages, "user", {"type": "text", "text": m.content})
    body: JSON = {
        "model": request.model or config.model,
        "max_tokens": config.output_cap(request.max_tokens),
        "messages": messages,
    }
    if system:
        body["system"] = system
    temperature = request.temperature if request.temperature is not None else config.temperature
    body["temperature"] = min(temperature, 1.0)
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
    return body


def _append(messages: list[JSON], role: str, block: JSON) -> None:
    """Anthropic wants alternating roles: consecutive blocks of one role share a message."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].append(block)
    else:
        messages.append({"role": role, "content": [block]})


def from_anthropic(data: JSON) -> Completion:
    usage = reported_usage(data.get("usage"), "input_tokens", "output_tokens")
    try:
        return _completion(data, usage)
    except InvalidResponse as err:
        err.usage = usage  # an unusable answer is billed all the same
        raise


def _completion(data: JSON, usage: Usage | None) -> Completion:
    if data.get("type") != "message" or not isinstance(data.get("content"), list):
        raise InvalidResponse("anthropic", "body is not a Messages API message")
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if not isinstance(block, dict):
            raise InvalidResponse("anthropic", "a content block is not an object")
        if block.get("type") == "text":
            text.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            calls.append(
                ToolCall(
                    id=str(block.get("id", "")),
                    name=str(block.get("name", "")),
                    arguments=parse_arguments("anthropic", block.get("input")),
                )
            )
    stop = _STOP.get(str(data.get("stop_reason")), "other")
    return Completion(
        content="".join(text),
        tool_calls=calls,
        stop_reason=stop,
        usage=usage or Usage(),
        usage_reported=usage is not None,
        model=str(data.get("model", "")),
        provider="anthropic",
        refusal="".join(text) if stop == "refusal" else None,
    )


class AnthropicProvider:
    name = "anthropic"

    def __init__(
        self,
        config: LLMConfig,
        redact: Callable[[str], str],
        client: httpx.AsyncClient | None = None,
    ):
        self.config = config
        self.redact = redact
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout_seconds, connect=10),
            event_hooks=debug_hooks("anthropic", redact) if config.debug else None,
        )

    def _headers(self) -> dict[str, str]:
        key = self.config.api_key.get_secret_value() if self.config.api_key else ""
        return {
            "x-api-key": key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }

    async def complete(self, request: CompletionRequest) -> Completion:
        data = await post_json(
            self.client,
            self.name,
            f"{self.config.endpoint}/v1/messages",
            self._headers(),
            to_anthropic(request, self.config),
            self.redact,
        )
        return from_anthropic(data)

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[TextDelta | Completion, None]:
        # The kernel re-streams to its clients; one complete call keeps usage exact.
        completion = await self.complete(request)
        if completion.content:
            yield TextDelta(text=completion.content)
        yield completion

    async def aclose(self) -> None:
        await self.client.aclose()
