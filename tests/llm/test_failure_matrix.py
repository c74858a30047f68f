"""Every provider, every failure the issue names: handled as specified, the key never shown."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.llm.test_providers import KEY, Sleeps, ask, gateway
from tests.llm_servers import (
    ProviderServer,
    Reply,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)
from toka.api.models import Provider
from toka.llm import PermanentProviderError

PROVIDERS = [
    ("anthropic", Provider.ANTHROPIC),
    ("openai", Provider.OPENAI),
    ("openai", Provider.OPENAI_COMPATIBLE),
]


def error_body(kind: str, status: int) -> dict[str, Any]:
    if kind == "anthropic":
        names = {
            429: "rate_limit_error",
            500: "api_error",
            503: "api_error",
            529: "overloaded_error",
        }
        return anthropic_error(names.get(status, "invalid_request_error"), f"status {status} {KEY}")
    return openai_error(f"status {status} {KEY}", "server_error")


def ok_body(kind: str) -> dict[str, Any]:
    return (
        anthropic_message("long " * 40) if kind == "anthropic" else openai_completion("long " * 40)
    )


FAILURES = [
    # (case, reply builder, retries expected, waits expected or None)
    (
        "429 with Retry-After",
        lambda k: Reply(429, error_body(k, 429), headers={"retry-after": "3"}),
        [3.0],
    ),
    ("500", lambda k: Reply(500, error_body(k, 500)), None),
    ("503", lambda k: Reply(503, error_body(k, 503)), None),
    ("529 overloaded", lambda k: Reply(529, error_body(k, 529)), None),
    ("timeout", lambda k: Reply(delay=1.5), None),
    ("malformed JSON", lambda k: Reply(body=b'{"choices": [{"mess'), None),
    ("truncated body", lambda k: Reply(body=ok_body(k), truncate=True), None),
]


@pytest.mark.parametrize(("kind", "provider"), PROVIDERS, ids=[p.value for _, p in PROVIDERS])
@pytest.mark.parametrize(("case", "reply", "waits"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_a_transient_failure_is_retried_and_the_call_succeeds(
    kind: str,
    provider: Provider,
    case: str,
    reply: Any,
    waits: list[float] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await ProviderServer(kind, KEY).start()
    try:
        server.script(reply(kind))
        sleeps = Sleeps()
        audit: list[dict[str, Any]] = []
        completion, stats = await gateway(
            server, provider, timeout=0.5, sleeps=sleeps, audit=audit
        ).complete(ask())
        assert completion.content == "Hello."
        assert stats.retries == 1
        assert len(server.requests) == 2
        if waits is not None:
            assert sleeps.waits == waits
        assert KEY not in caplog.text + repr(audit)
    finally:
        await server.stop()


@pytest.mark.parametrize(("kind", "provider"), PROVIDERS, ids=[p.value for _, p in PROVIDERS])
async def test_a_401_is_final_names_the_provider_and_hides_the_key(
    kind: str, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server = await ProviderServer(kind, KEY).start()
    wrong = "sk-wrong-0123456789abcdefghij"
    try:
        audit: list[dict[str, Any]] = []
        with pytest.raises(PermanentProviderError) as err:
            await gateway(server, provider, key=wrong, audit=audit).complete(ask())
        assert err.value.status == 401
        assert str(err.value).startswith(f"{provider.value} answered 401: ")
        assert len(server.requests) == 1
        for text in (str(err.value), caplog.text, repr(audit)):
            assert wrong not in text
    finally:
        await server.stop()
