"""Typed errors of the gateway. Messages name the provider, status and the
provider's own message — never a key (they pass the redactor first).

An error also says what the failed attempt may have cost, since every
attempt is charged to the budget: `usage` is what the provider reported
(an invalid answer still carries its usage), and `billable` is false only
when the provider cannot have run the model — it answered with an error
status, or the request never left the pod. A billable error without usage
is charged the attempt's whole reservation.
"""

from __future__ import annotations

from toka.llm.types import Usage


class LLMError(Exception):
    """Base of every gateway error."""

    reason = "error"
    billable = True
    usage: Usage | None = None


class ConfigError(LLMError):
    reason = "config"
    billable = False


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
        billable: bool | None = None,
        usage: Usage | None = None,
    ):
        super().__init__(
            f"{provider}: {reason}" + (f" ({status})" if status else "") + f": {message}"
        )
        self.provider = provider
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.billable = status is None if billable is None else billable
        self.usage = usage


class PermanentProviderError(LLMError):
    """400/401/403/404 and other answers that another try will not change."""

    billable = False

    def __init__(self, provider: str, status: int, message: str):
        super().__init__(f"{provider} answered {status}: {message}")
        self.provider = provider
        self.status = status
        self.reason = f"http_{status}"


class InvalidResponse(LLMError):
    """A 2xx whose body is unusable: malformed JSON, empty, bad tool arguments."""

    def __init__(self, provider: str, what: str, usage: Usage | None = None):
        super().__init__(f"{provider}: invalid response: {what}")
        self.provider = provider
        self.reason = "invalid_response"
        self.usage = usage


class RateLimited(LLMError):
    """The local rate limit would make this call wait longer than allowed."""

    reason = "rate_limited"
    billable = False

    def __init__(self, retry_after: float):
        super().__init__(f"rate limit: next call allowed in {retry_after:.1f}s")
        self.retry_after = retry_after


class BudgetExceeded(LLMError):
    """The token budget is spent, or what is left cannot cover this call: no new LLM calls."""

    reason = "budget_exceeded"
    billable = False

    def __init__(self, limit: int, used: int, reserved: int = 0, needed: int = 0):
        held = f", {reserved} reserved by calls in flight" if reserved else ""
        more = f"; this call needs at least {needed}" if needed else ""
        super().__init__(f"token budget exceeded: used {used} of {limit} tokens{held}{more}")
        self.limit = limit
        self.used = used


class ReplayError(LLMError):
    """The recording has no turn for this request, or has run out."""

    reason = "replay"
    billable = False
