"""OpenAI Chat Completions, and any OpenAI-compatible server (Ollama, vLLM, llama.cpp):
messages with `tool_calls`, role `tool`, function tools, and SSE streaming with usage."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

import httpx

from toka.llm.config import LLMConfig
from toka.llm.errors import InvalidResponse, RetryableProviderError
from toka.llm.providers.base import (
    JSON,
    debug_hooks,
    parse_arguments,
    post_json,
    raise_for_status,
    reported_usage,
    transport_error,
)
from toka.llm.types import Completion, CompletionRequest, TextDelta, ToolCall, Usage

_STOP = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def to_openai(request: CompletionRequest, config: LLMConfig, *, stream: bool = False) -> JSON:
    messages: list[JSON] = []
    for m in request.messages:
        if m.role == "tool":
            messages.append(
                {"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content}
            )
        elif m.role == "assistant" and m.tool_calls:
            messages.append(
                {
                    "role": "assistant",
                    "content": m.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            messages.append({"role": m.role, "content": m.content})
    body: JSON = {
        "model": request.model or config.model,
        "messages": messages,
        "max_tokens": config.output_cap(request.max_tokens),
        "temperature": request.temperature
        if request.temperature is not None
        else config.temperature,
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def from_openai(data: JSON, provider: str) -> Completion:
    usage = reported_usage(data.get("usage"), "prompt_tokens", "completion_tokens")
    try:
        return _completion(data, provider, usage)
    except InvalidResponse as err:
        err.usage = usage  # an unusable answer is billed all the same
        raise


def _completion(data: JSON, provider: str, usage: Usage | None) -> Completion:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InvalidResponse(provider, "no choices in the response")
    message = choices[0].get("message") or {}
    if not isinstance(message, dict):
        raise InvalidResponse(provider, "the choice's message is not an object")
    calls = [
        ToolCall(
            id=str(c.get("id", "")),
            name=str((c.get("function") or {}).get("name", "")),
            arguments=parse_arguments(provider, (c.get("function") or {}).get("arguments")),
        )
        for c in message.get("tool_calls") or []
    ]
    refusal = message.get("refusal")
    stop = _STOP.get(str(choices[0].get("finish_reason")), "other")
    return Completion(
        content=str(message.get("content") or ""),
        tool_calls=calls,
        stop_reason="refusal" if refusal else stop,
        usage=usage or Usage(),
        usage_reported=usage is not None,
        model=str(data.get("model", "")),
        provider=provider,
        refusal=str(refusal) if refusal else None,
    )


class OpenAIProvider:
    def __init__(
        self,
        config: LLMConfig,
        redact: Callable[[str], str],
        *,
        name: str = "openai",
        client: httpx.AsyncClient | None = None,
    ):
        self.name = name
        self.config = config
        self.redact = redact
        self.client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout_seconds, connect=10),
            event_hooks=debug_hooks(name, redact) if config.debug else None,
        )

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        if self.config.organization:
            headers["openai-organization"] = self.config.organization
        if self.config.project:
            headers["openai-project"] = self.config.project
        return headers

    async def complete(self, request: CompletionRequest) -> Completion:
        data = await post_json(
            self.client,
            self.name,
            f"{self.config.endpoint}/chat/completions",
            self._headers(),
            to_openai(request, self.config),
            self.redact,
        )
        return from_openai(data, self.name)

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[TextDelta | Completion, None]:
        """Server-sent events; a stream cut before `[DONE]` is a retryable truncation."""
        body = to_openai(request, self.config, stream=True)
        url = f"{self.config.endpoint}/chat/completions"
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        usage: Usage | None = None
        finish: str | None = None
        model = ""
        done = False
        try:
            async with self.client.stream("POST", url, headers=self._headers(), json=body) as resp:
                if resp.status_code >= 400:
                    raise_for_status(self.name, resp, await resp.aread(), self.redact)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        raise InvalidResponse(self.name, "malformed stream chunk", usage) from None
                    if not isinstance(chunk, dict):
                        raise InvalidResponse(self.name, "a stream chunk is not an object", usage)
                    model = chunk.get("model", model)
                    usage = (
                        reported_usage(chunk.get("usage"), "prompt_tokens", "completion_tokens")
                        or usage
                    )
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            text.append(delta["content"])
                            yield TextDelta(text=delta["content"])
                        for tc in delta.get("tool_calls") or []:
                            slot = calls.setdefault(
                                int(tc.get("index", 0)), {"id": "", "name": "", "args": ""}
                            )
                            slot["id"] = tc.get("id") or slot["id"]
                            fn = tc.get("function") or {}
                            slot["name"] = fn.get("name") or slot["name"]
                            slot["args"] += fn.get("arguments") or ""
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as err:
            cut = transport_error(self.name, err, self.redact)
            cut.usage = usage
            raise cut from None
        if not done:
            raise RetryableProviderError(
                self.name, "truncated", "stream ended before [DONE]", billable=True, usage=usage
            )
        try:
            tool_calls = [
                ToolCall(
                    id=c["id"], name=c["name"], arguments=parse_arguments(self.name, c["args"])
                )
                for _, c in sorted(calls.items())
            ]
        except InvalidResponse as err:
            err.usage = usage
            raise
        yield Completion(
            content="".join(text),
            tool_calls=tool_calls,
            stop_reason=_STOP.get(str(finish), "other"),
            usage=usage or Usage(),
            usage_reported=usage is not None,
            model=model,
            provider=self.name,
        )

    async def aclose(self) -> None:
        await self.client.aclose()
