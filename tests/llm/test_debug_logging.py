"""LLM_DEBUG: the bodies of every LLM exchange in the log, redacted and capped; off, none.

Against the local OpenAI-speaking server, with the kernel's own redactor
holding a secret of its own (as the kernel's does with its ServiceAccount
token), so both the provider key and the kernel's secrets are checked.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

from tests.kernel.stack import StatusWrites
from tests.llm_servers import ProviderServer, Reply, openai_completion
from toka.api.models import Agent, LLMSpec, Provider
from toka.kernel.main import build_gateway
from toka.kernel.reporter import Reporter
from toka.llm import ChatMessage, CompletionRequest, LLMConfig, LLMGateway
from toka.llm.sanitize import MAX_LOG_CHARS, REDACTED, Redactor, for_log

KEY = "sk-test-key-0123456789abcdef"
KERNEL_TOKEN = "kernel-sa-token-9f8e7d6c5b4a"
ANSWER = "Done: the build passes."


@pytest.fixture
async def openai() -> AsyncIterator[ProviderServer]:
    server = await ProviderServer("openai", KEY).start()
    yield server
    await server.stop()


@pytest.fixture
def llm_logger() -> Iterator[logging.Logger]:
    """The gateway's logger, put back as it was (the kernel raises its level itself)."""
    logger = logging.getLogger("toka.llm")
    level = logger.level
    yield logger
    logger.setLevel(level)


def ask(*extra: str) -> CompletionRequest:
    return CompletionRequest(
        messages=[
            ChatMessage(role="system", content="You are an agent."),
            ChatMessage(role="user", content=" ".join(["Fix the build.", *extra])),
        ],
        agent="a",
        task="t",
        turn=1,
    )


def gateway(server: ProviderServer, env: dict[str, str]) -> LLMGateway:
    config = LLMConfig.resolve(
        LLMSpec(provider=Provider.OPENAI, base_url=server.url), {"OPENAI_API_KEY": KEY, **env}
    )
    return LLMGateway(config, redactor=Redactor([KERNEL_TOKEN]))


def echoing_the_key() -> Reply:
    """A provider answer that repeats the key and the kernel's token back."""
    return Reply(body=openai_completion(f"{ANSWER} (you sent {KEY} and {KERNEL_TOKEN})"))


async def test_with_llm_debug_the_bodies_are_logged_and_no_secret_is(
    openai: ProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="toka.llm")
    openai.script(echoing_the_key())
    await gateway(openai, {"LLM_DEBUG": "true"}).complete(ask(f"my token is {KERNEL_TOKEN}"))
    text = caplog.text
    assert "Fix the build." in text  # the request body, as sent
    assert ANSWER in text  # the response body, as received
    assert '"authorization": "[REDACTED]"' in text
    assert KEY not in text
    assert KERNEL_TOKEN not in text


async def test_with_llm_debug_each_body_is_capped(
    openai: ProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="toka.llm")
    await gateway(openai, {"LLM_DEBUG": "1"}).complete(ask("x" * 100_000))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("toka.llm")]
    assert any("more characters]" in line for line in lines)
    # At most two capped parts (headers and body) and a short prefix per line.
    assert max(len(line) for line in lines) < 2 * MAX_LOG_CHARS + 500


async def test_without_llm_debug_no_body_is_logged(
    openai: ProviderServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="toka.llm")
    openai.script(echoing_the_key())
    await gateway(openai, {}).complete(ask())
    assert "Fix the build." not in caplog.text
    assert ANSWER not in caplog.text


async def test_a_kernel_with_llm_debug_logs_bodies_though_its_own_level_is_info(
    openai: ProviderServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    llm_logger: logging.Logger,
) -> None:
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)  # as `toka kernel` runs
    for name in ("OPENAI_API_KEY", "TOKA_LLM_KEY_FILE", "LLM_PROVIDER", "TOKA_REPLAY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLM_DEBUG", "true")
    agent = Agent.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {
                "llm": {"provider": "openai", "baseURL": openai.url},
                "tasks": [{"name": "t", "description": "x"}],
            },
        }
    )
    redactor = Redactor([KERNEL_TOKEN])
    reporter = Reporter(StatusWrites(), "ns", "a")  # type: ignore[arg-type]
    gw, error = build_gateway(agent, CollectorRegistry(), redactor, reporter)
    assert gw is not None, error
    openai.script(echoing_the_key())
    await gw.complete(ask())
    await gw.aclose()
    text = caplog.text
    assert "Fix the build." in text
    assert ANSWER in text
    assert KEY not in text
    assert KERNEL_TOKEN not in text


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short body", 100, "short body"),
        ("a" * 10, 4, "aaaa… [6 more characters]"),
        # A secret across the cut is redacted whole first: not even its prefix shows.
        ("aaa" + KEY, 10, f"aaa{REDACTED}"[:10] + f"… [{3 + len(REDACTED) - 10} more characters]"),
        (f"Bearer {KEY}", 100, f"Bearer {REDACTED}"),
        ("Authorization: Bearer an0ther-t0ken-we-never-saw", 100, f"Authorization: {REDACTED}"),
    ],
)
def test_a_logged_body_is_redacted_then_capped(text: str, limit: int, expected: str) -> None:
    assert for_log(text, Redactor([KEY]), limit) == expected
