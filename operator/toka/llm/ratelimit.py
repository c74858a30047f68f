"""Token-bucket rate limiting that waits (bounded) and a token budget that stops calls.

The bucket is kept as a GCRA "theoretical arrival time": each caller
reserves the next slot before it sleeps, so concurrent callers are served in
order and the bucket can never grant more than `burst + rate·t/60` calls in
any interval of t seconds. `set_rate` takes effect for the next reservation:
the operator rebalances each agent's share while it runs.

The budget works the same way round: a call reserves its worst case (its
estimated input plus the output it is allowed) before it is sent, and
settles with what the provider reported once it ends, however it ends.
What concurrent calls have reserved is not available to the next one, so
two calls cannot both pass a check that only one of them fits. When less
than the call's allowance is left, its output is clamped to what is left
rather than refused, so the last of a budget can still be used; only a
call whose estimated input alone does not fit is refused.

Estimates are upper bounds, one token per UTF-8 byte (plus a few tokens a
message and a tool-use preamble): the input before a call, and the output of
an answer the provider sent without its usage. The provider's own count,
when it gives one, is always what is charged.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Protocol

from toka.llm.errors import BudgetExceeded, RateLimited
from toka.llm.types import Completion, CompletionRequest, Usage

TOKENS_PER_MESSAGE = 4
TOOLS_PREAMBLE = 512  # what a provider adds to a prompt that offers tools


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TokenBucket:
    def __init__(self, per_minute: float, *, burst: int = 1, clock: Clock | None = None):
        if per_minute <= 0:
            raise ValueError("rate must be positive")
        self._interval = 60.0 / per_minute
        self._burst = max(1, burst)
        self._clock = clock or MonotonicClock()
        self._tat = self._clock.now()

    @property
    def per_minute(self) -> float:
        return 60.0 / self._interval

    def set_rate(self, per_minute: float) -> None:
        if per_minute <= 0:
            raise ValueError("rate must be positive")
        self._interval = 60.0 / per_minute

    def reserve(self, max_wait: float | None = None) -> float:
        """Take the next slot; the seconds to wait before using it. Raises if over `max_wait`."""
        now = self._clock.now()
        tat = max(self._tat, now)
        allowed_at = tat - (self._burst - 1) * self._interval
        wait = max(0.0, allowed_at - now)
        if max_wait is not None and wait > max_wait:
            raise RateLimited(wait)
        self._tat = tat + self._interval
        return wait

    async def acquire(self, max_wait: float | None = None) -> float:
        """Wait for a slot (at most `max_wait` seconds, else RateLimited); the time waited."""
        wait = self.reserve(max_wait)
        if wait > 0:
            await self._clock.sleep(wait)
        return wait


def _utf8(text: str) -> int:
    return len(text.encode())


def estimate_input_tokens(request: CompletionRequest) -> int:
    """At most what the provider will count for the prompt: messages, tool calls, tool
    schemas. Byte-level tokenizers never make more tokens than UTF-8 bytes, so bytes
    bound them (a 4-characters-a-token guess let text of one token a character, such
    as CJK, spend 4x the budget); plus a few tokens a message and the providers'
    tool-use preamble."""
    size = sum(
        _utf8(m.content)
        + _utf8(m.tool_call_id or "")
        + sum(_utf8(c.id) + _utf8(c.name) + _utf8(json.dumps(c.arguments)) for c in m.tool_calls)
        for m in request.messages
    )
    size += sum(
        _utf8(t.name) + _utf8(t.description) + _utf8(json.dumps(t.parameters))
        for t in request.tools
    )
    preamble = TOOLS_PREAMBLE if request.tools else 0
    return size + TOKENS_PER_MESSAGE * len(request.messages) + preamble


def estimate_output_tokens(completion: Completion) -> int:
    """At most what an answer that came without its usage cost: its UTF-8 bytes."""
    return _utf8(completion.content) + sum(
        _utf8(c.name) + _utf8(json.dumps(c.arguments)) for c in completion.tool_calls
    )


@dataclass
class Reservation:
    """Tokens set aside for one attempt: its estimated input and the output it may write."""

    input_tokens: int
    output_tokens: int
    settled: bool = False

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def usage(self) -> Usage:
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens)


class TokenBudget:
    """Tokens this caller may use in total; `limit=None` is unlimited.

    `used` is what settled calls cost; `reserved` is held by calls in flight.
    """

    def __init__(self, limit: int | None = None, used: int = 0):
        self.limit = limit
        self.used = used
        self.reserved = 0

    @property
    def remaining(self) -> int | None:
        """What a new call may still reserve."""
        return None if self.limit is None else max(0, self.limit - self.used - self.reserved)

    def set_limit(self, limit: int | None) -> None:
        self.limit = limit

    def ensure_available(self) -> None:
        if self.limit is not None and self.used >= self.limit:
            raise BudgetExceeded(self.limit, self.used)

    def reserve(self, input_tokens: int, max_output: int) -> Reservation:
        """Set aside the input and up to `max_output` tokens of output (fewer if less is
        left); BudgetExceeded if not even one output token fits after the input."""
        left = self.remaining
        output = max_output if left is None else min(max_output, left - input_tokens)
        if output < 1:
            assert self.limit is not None
            raise BudgetExceeded(self.limit, self.used, self.reserved, input_tokens + 1)
        held = Reservation(input_tokens, output)
        self.reserved += held.total
        return held

    def release(self, held: Reservation) -> None:
        """Give back a reservation whose call was never sent."""
        self.settle(held, Usage())

    def settle(self, held: Reservation, usage: Usage) -> None:
        """Replace the reservation by what the call cost; once, however often it is called."""
        if held.settled:
            return
        held.settled = True
        self.reserved -= held.total
        self.used += usage.total

    def record(self, usage: Usage) -> None:
        self.used += usage.total
