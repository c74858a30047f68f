"""Gateway configuration: from the Agent's `llm`, else the original system's variables.

The seed's environment variables still work (`ANTHROPIC_API_KEY`,
`OPENAI_API_KEY`, `LLM_PROVIDER`, `LLM_MODEL`, `LLM_BASE_URL`,
`LLM_RATE_LIMIT` default 60/min, `LLM_TIMEOUT` default 30 s, `LLM_DEBUG`), and
OpenAI's `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID` (identifiers, not secrets).
A provider is picked from the keys present only when none is named; keys are
`SecretStr`, so a repr or a log line never shows them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, SecretStr

from toka.api.models import OPENAI_ID_PATTERN, LLMSpec, Provider
from toka.contract import REPLAY_FILE_ENV
from toka.llm.errors import ConfigError

DEFAULT_MODELS = {
    Provider.ANTHROPIC: "claude-sonnet-4-5",
    Provider.OPENAI: "gpt-4o",
    Provider.OPENAI_COMPATIBLE: "llama3.1",
    Provider.REPLAY: "replay",
}
DEFAULT_BASE_URLS = {
    Provider.ANTHROPIC: "https://api.anthropic.com",
    Provider.OPENAI: "https://api.openai.com/v1",
}
_TRUE = {"1", "true", "yes", "on"}


class LLMConfig(BaseModel):
    provider: Provider
    model: str
    base_url: str | None = None
    api_key: SecretStr | None = None
    replay_path: Path | None = None
    rate_limit_per_minute: int = 60
    timeout_seconds: float = 30.0
    max_tokens: int = 4096  # per call: an agent may ask for fewer, never more
    temperature: float = 0.3
    debug: bool = False
    organization: str | None = None  # OpenAI-Organization header
    project: str | None = None  # OpenAI-Project header
    max_attempts: int = 5
    max_retry_after_seconds: float = 60.0

    def output_cap(self, requested: int | None) -> int:
        """The agent's `max_tokens` if smaller, never more than the configured cap."""
        return min(requested or self.max_tokens, self.max_tokens)

    @property
    def endpoint(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS.get(self.provider, "")).rstrip("/")

    def secrets(self) -> list[str]:
        """Values the redactor must never let through."""
        return [self.api_key.get_secret_value()] if self.api_key else []

    @classmethod
    def resolve(
        cls,
        spec: LLMSpec | None = None,
        env: Mapping[str, str] | None = None,
        *,
        api_key: str | None = None,
        replay_path: Path | None = None,
    ) -> LLMConfig:
        """The Agent's `llm` first, then the environment; clear errors for what is missing."""
        env = env if env is not None else {}
        spec = spec or LLMSpec()
        named = spec.provider or _provider(env.get("LLM_PROVIDER"))
        if named is None:
            if env.get("ANTHROPIC_API_KEY"):
                named = Provider.ANTHROPIC
            elif env.get("OPENAI_API_KEY"):
                named = Provider.OPENAI
            else:
                raise ConfigError(
                    "no LLM provider: set llm.provider on the Agent or session, or LLM_PROVIDER, "
                    "or provide ANTHROPIC_API_KEY or OPENAI_API_KEY"
                )
        key = api_key
        if key is None:
            key = {
                Provider.ANTHROPIC: env.get("ANTHROPIC_API_KEY"),
                Provider.OPENAI: env.get("OPENAI_API_KEY"),
                Provider.OPENAI_COMPATIBLE: env.get("OPENAI_API_KEY"),
            }.get(named)
        if named in (Provider.ANTHROPIC, Provider.OPENAI) and not key:
            raise ConfigError(
                f"provider {named.value} needs an API key: set llm.apiKeySecretRef or "
                f"{'ANTHROPIC' if named == Provider.ANTHROPIC else 'OPENAI'}_API_KEY"
            )
        base_url = spec.base_url or env.get("LLM_BASE_URL")
        if named == Provider.OPENAI_COMPATIBLE and not base_url:
            raise ConfigError("provider openai-compatible needs llm.baseURL or LLM_BASE_URL")
        if named == Provider.REPLAY and replay_path is None:
            raw = env.get(REPLAY_FILE_ENV)
            replay_path = Path(raw) if raw else None
            if replay_path is None:
                raise ConfigError("provider replay needs a recording (llm.replay.configMapRef)")
        return cls(
            provider=named,
            model=spec.model or env.get("LLM_MODEL") or DEFAULT_MODELS[named],
            base_url=base_url,
            api_key=SecretStr(key) if key else None,
            replay_path=replay_path,
            rate_limit_per_minute=_int(env, "LLM_RATE_LIMIT", 60),
            timeout_seconds=float(spec.timeout_seconds or _int(env, "LLM_TIMEOUT", 30)),
            max_tokens=spec.max_tokens or 4096,
            temperature=float(spec.temperature) if spec.temperature is not None else 0.3,
            debug=env.get("LLM_DEBUG", "").lower() in _TRUE,
            **_openai_ids(named, spec, env),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LLMConfig:
        return cls.resolve(None, env)


def _provider(value: str | None) -> Provider | None:
    if not value:
        return None
    try:
        return Provider(value)
    except ValueError:
        raise ConfigError(
            f"LLM_PROVIDER={value!r} is not one of {', '.join(p.value for p in Provider)}"
        ) from None


def _openai_ids(named: Provider, spec: LLMSpec, env: Mapping[str, str]) -> dict[str, str | None]:
    """OpenAI's organization and project: the Agent's, else the environment's; only for
    the providers that speak OpenAI's API."""
    if named not in (Provider.OPENAI, Provider.OPENAI_COMPATIBLE):
        return {"organization": None, "project": None}
    found: dict[str, str | None] = {}
    for field, variable in (("organization", "OPENAI_ORG_ID"), ("project", "OPENAI_PROJECT_ID")):
        value = getattr(spec, field) or env.get(variable) or None
        if value is not None and (len(value) > 128 or not re.fullmatch(OPENAI_ID_PATTERN, value)):
            raise ConfigError(
                f"{variable}={value[:40]!r} is not an OpenAI ID (letters, digits, '_.:-', "
                "at most 128)"
            )
        found[field] = value
    return found


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, not {value}")
    return value
