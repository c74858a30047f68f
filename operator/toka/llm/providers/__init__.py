"""Providers behind one interface; `make_provider` picks one from the configuration."""

from __future__ import annotations

from collections.abc import Callable

from toka.api.models import Provider as ProviderName
from toka.llm.config import LLMConfig
from toka.llm.errors import ConfigError
from toka.llm.providers.anthropic import AnthropicProvider
from toka.llm.providers.base import Provider
from toka.llm.providers.openai import OpenAIProvider
from toka.llm.providers.replay import ReplayProvider


def make_provider(config: LLMConfig, redact: Callable[[str], str]) -> Provider:
    if config.provider == ProviderName.ANTHROPIC:
        return AnthropicProvider(config, redact)
    if config.provider == ProviderName.OPENAI:
        return OpenAIProvider(config, redact, name="openai")
    if config.provider == ProviderName.OPENAI_COMPATIBLE:
        return OpenAIProvider(config, redact, name="openai-compatible")
    if config.provider == ProviderName.REPLAY:
        if config.replay_path is None:
            raise ConfigError("provider replay needs a recording")
        return ReplayProvider.from_file(config.replay_path)
    raise ConfigError(f"unknown provider {config.provider!r}")


__all__ = ["Provider", "make_provider"]
