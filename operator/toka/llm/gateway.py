"""`LLMGateway`: one call = budget check, sanitation, rate limit, retried provider call,
validation, usage and metrics, and a redacted audit record."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from toka.llm.config import LLMConfig
from toka.llm.errors import InvalidResponse, LLMError, RetryableProviderError
from toka.llm.metrics import GatewayMetrics
from toka.llm.providers import make_provider
from toka.llm.providers.base import Provider
from toka.llm.ratelimit import MonotonicClock, TokenBucket, TokenBudget
from toka.llm.sanitize import Redactor, sanitize_request
from toka.llm.types import CallStats, ChatMessage, Completion, CompletionRequest, TextDelta
from toka.llm.validate import validate_completion

log = logging.getLogger("toka.llm")
AuditSink = Callable[[dict[str, Any]], None]
Sleep = Callable[[float], Awaitable[None]]
FALLBACK_NOTE = (
    "Answer briefly. To use a tool, call it with arguments that are a JSON object matching "
    "the tool's parameters exactly."
)


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

    def _prepare(self, request: CompletionRequest) -> tuple[CompletionRequest, list[str]]:
        self.budget.ensure_available()
        return sanitize_request(request)

    async def complete(
        self, request: CompletionRequest, *, max_rate_wait: float | None = None
    ) -> tuple[Completion, CallStats]:
        """One LLM call; raises BudgetExceeded, RateLimited or a provider error."""
        started = time.perf_counter()
        clean, flags = self._prepare(request)
        waited, retries, invalid, fallback, last = 0.0, 0, 0, False, ""
        limit = self.max_rate_wait if max_rate_wait is None else max_rate_wait
        try:
            async for attempt in self._retrying():
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        retries += 1
                        self._count_retry(last)
                    self.budget.ensure_available()
                    waited += await self.limiter.acquire(limit)
                    use = simplify(clean) if invalid >= self.fallback_after else clean
                    fallback = fallback or use is not clean
                    self._debug("request", use)
                    try:
                        completion = validate_completion(
                            await self.provider.complete(use), use.tools
                        )
                    except (RetryableProviderError, InvalidResponse) as err:
                        invalid += isinstance(err, InvalidResponse)
                        last = err.reason
                        raise
        except LLMError as err:
            self._record_error(request, err, flags, retries, started)
            raise
        stats = self._record_success(request, completion, flags, retries, waited, fallback, started)
        return completion, stats

    async def stream(
        self, request: CompletionRequest, *, max_rate_wait: float | None = None
    ) -> AsyncIterator[TextDelta | Completion | CallStats]:
        """Text deltas, then the Completion, then its CallStats. Retried only before the
        first delta, so a client never sees text twice."""
        started = time.perf_counter()
        clean, flags = self._prepare(request)
        limit = self.max_rate_wait if max_rate_wait is None else max_rate_wait
        waited, retries, sent, last = 0.0, 0, False, ""
        completion: Completion | None = None
        try:
            async for attempt in self._retrying():
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        retries += 1
                        self._count_retry(last)
                    self.budget.ensure_available()
                    waited += await self.limiter.acquire(limit)
                    try:
                        async for item in self.provider.stream(clean):
                            if isinstance(item, TextDelta):
                                sent = True
                                yield item
                            else:
                                completion = validate_completion(item, clean.tools)
                    except (RetryableProviderError, InvalidResponse) as err:
                        if sent:
                            raise LLMError("the stream broke after text was sent") from None
                        last = err.reason
                        raise
        except LLMError as err:
            self._record_error(request, err, flags, retries, started)
            raise
        assert completion is not None
        yield completion
        yield self._record_success(request, completion, flags, retries, waited, False, started)

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
            log.debug("llm %s: %s", what, self.redact(body))

    def _record_success(
        self,
        request: CompletionRequest,
        completion: Completion,
        flags: list[str],
        retries: int,
        waited: float,
        fallback: bool,
        started: float,
    ) -> CallStats:
        self.budget.record(completion.usage)
        stats = CallStats(
            provider=self.provider.name,
            model=completion.model or self.config.model,
            usage=completion.usage,
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
            self.metrics.tokens.labels(name, "input").inc(completion.usage.input_tokens)
            self.metrics.tokens.labels(name, "output").inc(completion.usage.output_tokens)
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
