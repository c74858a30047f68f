"""`LLMGateway`: one call = sanitation, budget reservation, rate limit, retried provider
call, validation, settlement, usage and metrics, and a redacted audit record.

Each attempt reserves its worst case in the budget before it is sent (the
estimated input plus the output it is allowed, which is the agent's
`max_tokens` clamped to the configured cap and to what is left) and settles
once it ends, however it ends: with the provider's reported usage (an
invalid answer that is retried too), an estimate when an answer came without
one, nothing when the provider refused it with an error status, and the
whole reservation when the outcome is unknown (a cut stream, a timeout, a
caller who hung up or was cancelled). The call's total is handed to
`on_charge` once, even when the call fails or is abandoned, so the agent's
status shows every token the budget counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from toka.llm.config import LLMConfig
from toka.llm.errors import InvalidResponse, LLMError, RetryableProviderError
from toka.llm.metrics import GatewayMetrics
from toka.llm.providers import make_provider
from toka.llm.providers.base import Provider
from toka.llm.ratelimit import (
    MonotonicClock,
    Reservation,
    TokenBucket,
    TokenBudget,
    estimate_input_tokens,
    estimate_output_tokens,
)
from toka.llm.sanitize import Redactor, for_log, sanitize_request
from toka.llm.types import (
    CallStats,
    ChatMessage,
    Completion,
    CompletionRequest,
    TextDelta,
    Usage,
)
from toka.llm.validate import validate_completion

log = logging.getLogger("toka.llm")
AuditSink = Callable[[dict[str, Any]], None]
Sleep = Callable[[float], Awaitable[None]]
OnCharge = Callable[[Usage], None]
BROKEN_STREAM = "the stream broke after text was sent"
FALLBACK_NOTE = (
    "Answer briefly. To use a tool, call it with arguments that are a JSON object matching "
    "the tool's parameters exactly."
)


@dataclass
class _Bill:
    """What one call has cost so far, attempt by attempt."""

    usage: Usage = field(default_factory=Usage)
    sent: int = 0
    reported: bool = False


def simplify(request: CompletionRequest) -> CompletionRequest:
    """The seed's fallback: a simpler prompt at a lower temperature.

    Keeps the system prompt's first paragraph and the exchange from the last
    user message on, adds a short instruction, and sets temperature 0.
    """
    msgs = request.messages
    last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=0)
    system = [
        m.model_copy(update={"content": m.content.split("\n\n", 1)[0]})
        for m in msgs
        if m.role == "system"
    ][:1]
    tail = msgs[last_user:]
    note = ChatMessage(role="user", content=FALLBACK_NOTE)
    merged = [*system, *tail]
    if merged and merged[-1].role == "user":
        merged[-1] = merged[-1].model_copy(
            update={"content": merged[-1].content + "\n\n" + FALLBACK_NOTE}
        )
    else:
        merged.append(note)
    return request.model_copy(update={"messages": merged, "temperature": 0.0})


class LLMGateway:
    def __init__(
        self,
        config: LLMConfig,
        provider: Provider | None = None,
        *,
        redactor: Redactor | None = None,
        limiter: TokenBucket | None = None,
        budget: TokenBudget | None = None,
        metrics: GatewayMetrics | None = None,
        audit: AuditSink | None = None,
        sleep: Sleep | None = None,
        max_rate_wait: float = 120.0,
        fallback_after: int = 2,
    ):
        self.config = config
        self.redact = redactor or Redactor(config.secrets())
        for secret in config.secrets():
            self.redact.add(secret)
        self.provider = provider or make_provider(config, self.redact)
        self.limiter = limiter or TokenBucket(config.rate_limit_per_minute)
        self.budget = budget or TokenBudget()
        self.metrics = metrics
        self.audit = audit
        self._sleep = sleep or MonotonicClock().sleep
        self.max_rate_wait = max_rate_wait
        self.fallback_after = fallback_after

    def set_limits(self, requests_per_minute: int | None, max_tokens: int | None) -> None:
        """The operator's current share for this agent (status.limits)."""
        if requests_per_minute:
            self.limiter.set_rate(requests_per_minute)
        self.budget.set_limit(max_tokens)

    async def aclose(self) -> None:
        await self.provider.aclose()

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableProviderError) and exc.retry_after is not None:
            return min(exc.retry_after, self.config.max_retry_after_seconds)
        return float(wait_exponential_jitter(multiplier=0.5, max=20, jitter=0.5)(state))

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._wait,
            retry=retry_if_exception_type((RetryableProviderError, InvalidResponse)),
            reraise=True,
            sleep=self._sleep,
        )

    async def _admit(
        self, use: CompletionRequest, limit: float, bill: _Bill
    ) -> tuple[CompletionRequest, Reservation, float]:
        """Reserve the attempt's worst case, then wait for a rate-limit slot; the request
        as it will be sent (its `max_tokens` granted), the reservation and the wait."""
        wanted = self.config.output_cap(use.max_tokens)
        held = self.budget.reserve(estimate_input_tokens(use), wanted)
        try:
            waited = await self.limiter.acquire(limit)
        except BaseException:
            self.budget.release(held)
            raise
        bill.sent += 1
        return use.model_copy(update={"max_tokens": held.output_tokens}), held, waited

    def _priced(self, completion: Completion, held: Reservation) -> Completion:
        """An answer that came without usage gets an estimate: its reserved input and its
        own text at four characters a token."""
        if completion.usage_reported:
            return completion
        usage = Usage(
            input_tokens=held.input_tokens, output_tokens=estimate_output_tokens(completion)
        )
        return completion.model_copy(update={"usage": usage})

    def _settle(
        self, held: Reservation, bill: _Bill, answer: Completion | None, err: BaseException | None
    ) -> None:
        if answer is not None:
            cost = answer.usage
        elif isinstance(err, LLMError) and err.usage is not None:
            cost = err.usage
        elif isinstance(err, LLMError) and not err.billable:
            cost = Usage()
        else:
            cost = held.usage
        self.budget.settle(held, cost)
        bill.usage = bill.usage + cost

    def _report(self, bill: _Bill, on_charge: OnCharge | None) -> None:
        """Once per call that reached the provider, whatever its outcome."""
        if bill.reported or not bill.sent:
            return
        bill.reported = True
        if self.metrics is not None:
            name = self.provider.name
            self.metrics.tokens.labels(name, "input").inc(bill.usage.input_tokens)
            self.metrics.tokens.labels(name, "output").inc(bill.usage.output_tokens)
        if on_charge is not None:
            on_charge(bill.usage)

    async def complete(
        self,
        request: CompletionRequest,
        *,
        max_rate_wait: float | None = None,
        on_charge: OnCharge | None = None,
    ) -> tuple[Completion, CallStats]:
        """One LLM call; raises BudgetExceeded, RateLimited or a provider error.
        `on_charge` gets the tokens of all its attempts, once, whatever the outcome."""
        started = time.perf_counter()
        clean, flags = sanitize_request(request)
        bill = _Bill()
        waited, retries, invalid, fallback, last = 0.0, 0, 0, False, ""
        limit = self.max_rate_wait if max_rate_wait is None else max_rate_wait
        try:
            async for attempt in self._retrying():
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        retries += 1
                        self._count_retry(last)
                    use = simplify(clean) if invalid >= self.fallback_after else clean
                    fallback = fallback or use is not clean
                    use, held, wait = await self._admit(use, limit, bill)
                    waited += wait
                    self._debug("request", use)
                    answer: Completion | None = None
                    try:
                        answer = self._priced(await self.provider.complete(use), held)
                        completion = validate_completion(answer, use.tools)
                    except BaseException as err:
                        self._settle(held, bill, answer, err)
                        if isinstance(err, (RetryableProviderError, InvalidResponse)):
                            invalid += isinstance(err, InvalidResponse)
                            last = err.reason
                        raise
                    self._settle(held, bill, answer, None)
        except LLMError as err:
            self._record_error(request, err, flags, retries, started, bill)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            self._audit(request, "abandoned", **_tokens(bill.usage))
            raise
        finally:
            self._report(bill, on_charge)
        stats = self._record_success(
            request, completion, flags, retries, waited, fallback, started, bill
        )
        return completion, stats

    async def stream(
        self,
        request: CompletionRequest,
        *,
        max_rate_wait: float | None = None,
        on_charge: OnCharge | None = None,
    ) -> AsyncGenerator[TextDelta | Completion | CallStats, None]:
        """Text deltas, then the Completion, then its CallStats. Retried only before the
        first delta, so a client never sees text twice. Close it (`aclose`) when done: a
        stream closed early still settles, and `on_charge` still gets the call's tokens."""
        started = time.perf_counter()
        clean, flags = sanitize_request(request)
        bill = _Bill()
        limit = self.max_rate_wait if max_rate_wait is None else max_rate_wait
        waited, retries, sent, last = 0.0, 0, False, ""
        completion: Completion | None = None
        try:
            try:
                async for attempt in self._retrying():
                    with attempt:
                        if attempt.retry_state.attempt_number > 1:
                            retries += 1
                            self._count_retry(last)
                        use, held, wait = await self._admit(clean, limit, bill)
                        waited += wait
                        self._debug("request", use)
                        answer: Completion | None = None
                        items = self.provider.stream(use)
                        try:
                            async for item in items:
                                if isinstance(item, TextDelta):
                                    sent = True
                                    yield item
                                else:
                                    answer = self._priced(item, held)
                                    completion = validate_completion(answer, use.tools)
                        except BaseException as err:
                            # Settled before anything else is awaited: a second
                            # cancellation cannot leave the reservation unsettled.
                            self._settle(held, bill, answer, err)
                            if isinstance(err, (RetryableProviderError, InvalidResponse)):
                                if sent:
                                    raise LLMError(BROKEN_STREAM) from None
                                last = err.reason
                            raise
                        else:
                            self._settle(held, bill, answer, None)
                        finally:
                            await items.aclose()
            except LLMError as err:
                self._record_error(request, err, flags, retries, started, bill)
                raise
            except (asyncio.CancelledError, GeneratorExit):
                self._audit(request, "abandoned", **_tokens(bill.usage))
                raise
            assert completion is not None
            stats = self._record_success(
                request, completion, flags, retries, waited, False, started, bill
            )
            self._report(bill, on_charge)
            yield completion
            yield stats
        finally:
            self._report(bill, on_charge)

    # --- bookkeeping -------------------------------------------------------------

    def _count_retry(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.retries.labels(self.provider.name, reason).inc()

    def _debug(self, what: str, payload: Any) -> None:
        if self.config.debug:
            body = (
                payload.model_dump_json()
                if hasattr(payload, "model_dump_json")
                else json.dumps(payload)
            )
            log.debug("llm %s: %s", what, for_log(body, self.redact))

    def _record_success(
        self,
        request: CompletionRequest,
        completion: Completion,
        flags: list[str],
        retries: int,
        waited: float,
        fallback: bool,
        started: float,
        bill: _Bill,
    ) -> CallStats:
        stats = CallStats(
            provider=self.provider.name,
            model=completion.model or self.config.model,
            usage=bill.usage,
            latency_seconds=time.perf_counter() - started,
            retries=retries,
            rate_limit_wait_seconds=waited,
            fallback=fallback,
            flags=flags,
        )
        self._debug("response", completion)
        if self.metrics is not None:
            name = self.provider.name
            self.metrics.requests.labels(name, "ok").inc()
            self.metrics.latency.labels(name).observe(stats.latency_seconds)
        self._audit(request, "ok", stats=stats)
        return stats

    def _record_error(
        self,
        request: CompletionRequest,
        err: LLMError,
        flags: list[str],
        retries: int,
        started: float,
        bill: _Bill,
    ) -> None:
        if self.metrics is not None:
            self.metrics.requests.labels(self.provider.name, "error").inc()
            self.metrics.errors.labels(self.provider.name, err.reason).inc()
        self._audit(
            request,
            "error",
            error=self.redact(str(err)),
            reason=err.reason,
            retries=retries,
            flags=flags,
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            **_tokens(bill.usage),
        )

    def _audit(
        self, request: CompletionRequest, outcome: str, stats: CallStats | None = None, **extra: Any
    ) -> None:
        if self.audit is None:
            return
        record: dict[str, Any] = {
            "event": "llm.call",
            "outcome": outcome,
            "provider": self.provider.name,
            "model": request.model or self.config.model,
            "agent": request.agent,
            "task": request.task,
            "turn": request.turn,
        }
        if stats is not None:
            record.update(
                input_tokens=stats.usage.input_tokens,
                output_tokens=stats.usage.output_tokens,
                latency_ms=round(stats.latency_seconds * 1000, 1),
                retries=stats.retries,
                rate_limit_wait_ms=round(stats.rate_limit_wait_seconds * 1000, 1),
                fallback=stats.fallback,
                flags=stats.flags,
            )
        record.update(extra)
        self.audit(json.loads(self.redact(json.dumps(record))))


def _tokens(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
