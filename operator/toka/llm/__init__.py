"""The LLM gateway the kernel uses: providers, shared rate limits, budgets, retries, sanitation.

`LLMGateway.complete()` is the one entry point: budget check, request
sanitation, rate limit (waits, bounded), provider call with tenacity retries,
response validation, usage and metrics. Providers speak their real wire
formats and normalise tool calling to `types.Completion`.
"""

from toka.llm.config import LLMConfig
from toka.llm.errors import (
    BudgetExceeded,
    InvalidResponse,
    LLMError,
    PermanentProviderError,
    RateLimited,
    ReplayError,
    RetryableProviderError,
)
from toka.llm.gateway import LLMGateway
from toka.llm.types import ChatMessage, Completion, CompletionRequest, ToolCall, ToolSpec, Usage

__all__ = [
    "BudgetExceeded",
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "InvalidResponse",
    "LLMConfig",
    "LLMError",
    "LLMGateway",
    "PermanentProviderError",
    "RateLimited",
    "ReplayError",
    "RetryableProviderError",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
