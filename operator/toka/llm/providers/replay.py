"""`replay`: recorded turns keyed by (agent, task, turn number), with their token usage.

Keyed by position, not by a hash of the prompt, so prompt wording can change
without breaking a recording. One recording per agent (a ConfigMap key holds
at most 1 MiB). `RecordingProvider` wraps a real provider and writes one.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from toka.llm.errors import ReplayError
from toka.llm.providers.base import Provider
from toka.llm.types import Completion, CompletionRequest, TextDelta, ToolCall, Usage

RECORDING_VERSION = 1


class RecordedResponse(BaseModel):
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    stop_reason: str = "end_turn"


class Turn(BaseModel):
    task: str
    turn: int = Field(ge=1)
    response: RecordedResponse
    usage: Usage = Field(default_factory=Usage)


class Recording(BaseModel):
    version: int = RECORDING_VERSION
    agent: str
    turns: list[Turn] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Recording:
        try:
            return cls.model_validate_json(path.read_text())
        except FileNotFoundError:
            raise ReplayError(f"no recording at {path}") from None
        except (ValidationError, ValueError) as err:
            raise ReplayError(f"recording {path} is not valid: {err}") from None

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.model_dump_json(indent=1) + "\n")
        os.replace(tmp, path)


class ReplayProvider:
    name = "replay"

    def __init__(self, recording: Recording):
        self.recording = recording
        self._index = {(t.task, t.turn): t for t in recording.turns}

    @classmethod
    def from_file(cls, path: Path) -> ReplayProvider:
        return cls(Recording.load(path))

    def turn(self, request: CompletionRequest) -> Turn:
        rec = self.recording
        if request.agent and request.agent != rec.agent:
            raise ReplayError(f"the recording is for agent {rec.agent!r}, not {request.agent!r}")
        found = self._index.get((request.task, request.turn))
        if found is not None:
            return found
        turns = sorted(t.turn for t in rec.turns if t.task == request.task)
        if not turns:
            tasks = sorted({t.task for t in rec.turns})
            raise ReplayError(
                f"recording for agent {rec.agent!r} has no turns for task {request.task!r} "
                f"(it has tasks: {', '.join(tasks) or 'none'})"
            )
        if request.turn > turns[-1]:
            raise ReplayError(
                f"recording for agent {rec.agent!r} ran out: task {request.task!r} has "
                f"{len(turns)} turns, turn {request.turn} was asked for"
            )
        raise ReplayError(
            f"recording for agent {rec.agent!r} has no turn {request.turn} of task "
            f"{request.task!r} (it has turns {turns})"
        )

    async def complete(self, request: CompletionRequest) -> Completion:
        t = self.turn(request)
        stop: Any = (
            t.response.stop_reason
            if t.response.stop_reason in ("end_turn", "tool_use", "max_tokens", "refusal")
            else "other"
        )
        return Completion(
            content=t.response.content,
            tool_calls=[c.model_copy() for c in t.response.tool_calls],
            stop_reason=stop,
            usage=t.usage.model_copy(),
            model="replay",
            provider=self.name,
        )

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[TextDelta | Completion, None]:
        completion = await self.complete(request)
        if completion.content:
            yield TextDelta(text=completion.content)
        yield completion

    async def aclose(self) -> None:
        return None


class RecordingProvider:
    """Record mode: calls the real provider and appends each turn to a recording file;
    `on_record` gets the recording after each turn and is awaited before the answer is
    returned (the kernel stores it in a ConfigMap first, so an agent that has its
    answer has its turn recorded)."""

    def __init__(
        self,
        inner: Provider,
        path: Path,
        agent: str,
        on_record: Callable[[Recording], Awaitable[None]] | None = None,
    ):
        self.inner = inner
        self.name = inner.name
        self.path = path
        self.on_record = on_record
        self.recording = Recording.load(path) if path.exists() else Recording(agent=agent)

    def _append(self, request: CompletionRequest, completion: Completion) -> None:
        self.recording.turns = [
            t for t in self.recording.turns if (t.task, t.turn) != (request.task, request.turn)
        ]
        self.recording.turns.append(
            Turn(
                task=request.task,
                turn=request.turn,
                response=RecordedResponse(
                    content=completion.content,
                    tool_calls=completion.tool_calls,
                    stop_reason=completion.stop_reason,
                ),
                usage=completion.usage,
            )
        )
        self.recording.save(self.path)

    async def complete(self, request: CompletionRequest) -> Completion:
        completion = await self.inner.complete(request)
        self._append(request, completion)
        if self.on_record is not None:
            await self.on_record(self.recording)
        return completion

    async def stream(
        self, request: CompletionRequest
    ) -> AsyncGenerator[TextDelta | Completion, None]:
        async with aclosing(self.inner.stream(request)) as items:
            async for item in items:
                if isinstance(item, Completion):
                    self._append(request, item)
                    if self.on_record is not None:
                        await self.on_record(self.recording)
                yield item

    async def aclose(self) -> None:
        await self.inner.aclose()


def dump_recording(recording: Recording) -> str:
    return json.dumps(recording.model_dump(mode="json"), indent=1)
