"""Typed errors of the gateway. Messages name the provider, status and the
provider's own message — never a key (they pass the redactor first)."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every gateway error."""

    reason = "error"


class ConfigError(LLMError):
    reason = "config"


class RetryableProviderError(LLMError):
    """429, 5xx, 529, timeouts, connection and truncation errors: worth another try."""

    def __init__(
        self,
        provider: str,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(
            f"{provider}: {reason}" + (f" ({status})" if status else "") + f": {message}"
        )
        self.provider = provider
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class PermanentProviderError(LLMError):
    """400/401/403/404 and other answers that another try will not change."""

    def __init__(self, provider: str, status: int, message: str):
        super().__init__(f"{provider} answered {status}: {message}")
        self.provider = provider
        self.status = status
        self.reason = f"http_{status}"


class InvalidResponse(LLMError):
    """A 2xx whose body is unusable: malformed JSON, empty, bad tool arguments."""

    def __init__(self, provider: str, what: str):
        super().__init__(f"{provider}: invalid response: {what}")
        self.provider = provider
        self.reason = "invalid_response"


class RateLimited(LLMError):
    """The local rate limit would make this call wait longer than allowed."""

    reason = "rate_limited"

    def __init__(self, retry_after: float):
        super().__init__(f"rate limit: next call allowed in {retry_after:.1f}s")
        self.retry_after = retry_after


class BudgetExceeded(LLMError):
    """The token budget is spent: no new LLM calls."""

    reason = "budget_exceeded"

    def __init__(self, limit: int, used: int):
        super().__init__(f"token budget exceeded: used {used} of {limit} tokens")
        self.limit = limit
        self.used = used


class ReplayError(LLMError):
    """The recording has no turn for this request, or has run out."""

    reason = "replay"
