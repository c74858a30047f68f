"""One internal shape for chat, tools and usage, whatever the provider.

Anthropic's content blocks (text, tool_use, tool_result) and OpenAI's
messages with `tool_calls` / role `tool` both map onto these; providers
convert at their edge and nowhere else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal["end_turn", "tool_use", "max_tokens", "refusal", "other"]


class ToolCall(BaseModel):
    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None


class ToolSpec(BaseModel):
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class CompletionRequest(BaseModel):
    messages: list[ChatMessage]
    tools: list[ToolSpec] = Field(default_factory=list)
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    # Who is asking: the replay provider's key, the audit record's context.
    agent: str = ""
    task: str = ""
    turn: int = 0


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class Completion(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    stop_reason: StopReason = "end_turn"
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    provider: str = ""
    refusal: str | None = None
    # False when the provider sent no usage: the gateway then charges an estimate.
    usage_reported: bool = Field(default=True, exclude=True)


class CallStats(BaseModel):
    """What one gateway call cost: tokens (of every attempt), time and retries."""

    provider: str
    model: str
    usage: Usage
    latency_seconds: float
    retries: int = 0
    rate_limit_wait_seconds: float = 0.0
    fallback: bool = False
    flags: list[str] = Field(default_factory=list)


class TextDelta(BaseModel):
    """A piece of streamed text; the stream ends with the assembled Completion."""

    text: str
