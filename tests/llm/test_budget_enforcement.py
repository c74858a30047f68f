"""The per-call cap and the token budget hold whatever the agent asks and however a call ends.

Against local servers speaking each provider's real wire format: the agent's
`max_tokens` never lifts the configured cap, every attempt's tokens are
charged (an invalid answer that is retried too), a call reserves its
worst case before it is sent so concurrent calls cannot overspend, and a
call abandoned mid-way (a stream closed early, a cancelled task) is still
charged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.llm.test_providers import KEY, READ_FILE, Sleeps, ask
from tests.llm_servers import (
    JSON,
    ProviderServer,
    Reply,
    anthropic_message,
    openai_chunks,
    openai_completion,
)
from toka.api.models import Provider
from toka.llm import BudgetExceeded, InvalidResponse, LLMConfig, LLMGateway, Usage
from toka.llm.ratelimit import TokenBudget, estimate_input_tokens
from toka.llm.types import TextDelta

CAP = 256
KINDS = [("anthropic", Provider.ANTHROPIC), ("openai", Provider.OPENAI)]
IDS = [k for k, _ in KINDS]


@pytest.fixture(params=KINDS, ids=IDS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ProviderServer, Provider]]:
    kind, provider = request.param
    srv = await ProviderServer(kind, KEY).start()
    yield srv, provider
    await srv.stop()


def gateway(
    server: ProviderServer, provider: Provider, budget: TokenBudget | None = None
) -> LLMGateway:
    config = LLMConfig(
        provider=provider,
        model="m",
        base_url=server.url,
        api_key=KEY,
        timeout_seconds=5,
        rate_limit_per_minute=100_000,
        max_attempts=4,
        max_tokens=CAP,
    )
    return LLMGateway(config, sleep=Sleeps(), budget=budget)


def answer(
    kind: str,
    text: str = "Hello.",
    calls: list[JSON] | None = None,
    usage: tuple[int, int] | None = (12, 5),
) -> JSON:
    body = anthropic_message(text, calls) if kind == "anthropic" else openai_completion(text, calls)
    if usage is None:
        del body["usage"]
    elif kind == "anthropic":
        body["usage"] = {"input_tokens": usage[0], "output_tokens": usage[1]}
    else:
        body["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return body


def granted(server: ProviderServer) -> list[int]:
    return [r["body"]["max_tokens"] for r in server.requests]


# --- the per-call cap ------------------------------------------------------------

CAPS = [
    # (what the agent asks, what the provider sees)
    (None, CAP),
    (1_000_000, CAP),
    (CAP + 1, CAP),
    (50, 50),
]


@pytest.mark.parametrize(("asked", "sent"), CAPS, ids=[str(a) for a, _ in CAPS])
async def test_the_provider_never_sees_more_than_the_configured_cap(
    server: tuple[ProviderServer, Provider], asked: int | None, sent: int
) -> None:
    srv, provider = server
    await gateway(srv, provider).complete(ask().model_copy(update={"max_tokens": asked}))
    assert granted(srv) == [sent]


async def test_near_the_end_of_the_budget_the_cap_shrinks_to_what_is_left(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    await gateway(srv, provider, TokenBudget(limit=200)).complete(ask())
    assert granted(srv) == [200 - estimate_input_tokens(ask())]


# --- every attempt counts --------------------------------------------------------

INVALID = [
    # (case, the invalid answer, given the wire format)
    (
        "arguments that break the schema",
        lambda k: answer(k, "", [{"id": "c1", "name": "fs_read", "input": {"file": "x"}}], (40, 7)),
    ),
    (
        "arguments that are not a JSON object",
        lambda k: answer(k, "", [{"id": "c1", "name": "fs_read", "input": "{nope"}], (40, 7)),
    ),
    ("an empty answer", lambda k: answer(k, "", None, (40, 7))),
]


@pytest.mark.parametrize(("case", "invalid"), INVALID, ids=[c for c, _ in INVALID])
async def test_an_invalid_answer_that_is_retried_is_counted(
    server: tuple[ProviderServer, Provider], case: str, invalid: Any
) -> None:
    srv, provider = server
    srv.script(Reply(body=invalid(srv.kind)), Reply(body=answer(srv.kind)))
    budget = TokenBudget(limit=100_000)
    completion, stats = await gateway(srv, provider, budget).complete(ask(tools=[READ_FILE]))
    assert completion.content == "Hello."
    assert stats.usage == Usage(input_tokens=40 + 12, output_tokens=7 + 5)
    assert budget.used == 64


async def test_answers_invalid_every_time_are_all_counted(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    srv.script(*[Reply(body=answer(srv.kind, "", None, (40, 7))) for _ in range(4)])
    budget = TokenBudget(limit=100_000)
    with pytest.raises(InvalidResponse):
        await gateway(srv, provider, budget).complete(ask())
    assert budget.used == 4 * 47


async def test_an_answer_without_usage_is_charged_an_upper_bound(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    srv.script(Reply(body=answer(srv.kind, "Hello.", None, None)))
    budget = TokenBudget(limit=100_000)
    _, stats = await gateway(srv, provider, budget).complete(ask())
    # No tokenizer makes more tokens than UTF-8 bytes: the prompt's bound, "Hello." as six.
    assert stats.usage == Usage(input_tokens=estimate_input_tokens(ask()), output_tokens=6)
    assert budget.used == stats.usage.total


async def test_a_prompt_of_one_token_a_character_cannot_overspend_the_budget(
    server: tuple[ProviderServer, Provider],
) -> None:
    """A 4-characters-a-token guess let 39,000 CJK characters (about as many tokens) in
    under a 10,000-token budget; bytes bound what any tokenizer makes."""
    srv, provider = server
    srv.script(Reply(body=answer(srv.kind, "ok", None, (39_001, 1))))
    budget = TokenBudget(limit=10_000)
    with pytest.raises(BudgetExceeded):
        await gateway(srv, provider, budget).complete(ask("漢" * 39_000))
    assert srv.requests == []
    assert budget.used == 0


async def test_an_unreadable_answer_is_charged_its_whole_reservation(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    srv.script(Reply(body=b'{"content": [{"ty'))
    budget = TokenBudget(limit=100_000)
    _, stats = await gateway(srv, provider, budget).complete(ask())
    reservation = estimate_input_tokens(ask()) + CAP
    assert budget.used == reservation + 17
    assert stats.usage.total == budget.used


async def test_an_attempt_the_provider_refused_with_an_error_status_costs_nothing(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    srv.script(Reply(500, {"error": {"message": "boom"}}), Reply(429, {"error": {"message": "x"}}))
    budget = TokenBudget(limit=100_000)
    _, stats = await gateway(srv, provider, budget).complete(ask())
    assert (stats.retries, stats.usage.total, budget.used) == (2, 17, 17)


# --- reserve before, settle after --------------------------------------------------


async def test_concurrent_calls_cannot_overspend_the_budget(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    kind = srv.kind
    # The worst case: every call writes all it was allowed, on 10 tokens of input.
    for _ in range(5):
        srv.script(
            Reply(body_for=lambda body: answer(kind, "Done.", None, (10, int(body["max_tokens"]))))
        )
    budget = TokenBudget(limit=1000)
    gw = gateway(srv, provider, budget)
    asks = [ask(f"Part {i} of the work.").model_copy(update={"max_tokens": 300}) for i in range(5)]
    results = await asyncio.gather(*(gw.complete(a) for a in asks), return_exceptions=True)
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert refused, results
    assert all(not isinstance(r, BaseException) or isinstance(r, BudgetExceeded) for r in results)
    assert budget.used <= 1000
    # What was sent, added up, could not have spent more than the budget either.
    assert sum(granted(srv)) + 10 * len(srv.requests) <= 1000


async def test_closing_a_stream_early_still_charges_the_call(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    release = asyncio.Event()
    if srv.kind == "openai":
        srv.script(Reply(stream=openai_chunks(["Hel", "lo."]), hold=release, hold_after=2))
    else:
        srv.script(Reply(body=answer(srv.kind, "Hello.")))
    budget = TokenBudget(limit=100_000)
    stream = gateway(srv, provider, budget).stream(ask())
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    await stream.aclose()
    release.set()
    # Its usage had not reached the gateway: the whole reservation is charged.
    assert budget.used == estimate_input_tokens(ask()) + CAP
    assert budget.reserved == 0


async def test_a_call_cancelled_while_the_provider_thinks_is_charged(
    server: tuple[ProviderServer, Provider],
) -> None:
    srv, provider = server
    arrived, release = asyncio.Event(), asyncio.Event()
    srv.script(Reply(body=answer(srv.kind), started=arrived, hold=release))
    budget = TokenBudget(limit=100_000)
    call = asyncio.create_task(gateway(srv, provider, budget).complete(ask()))
    await arrived.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    assert budget.used == estimate_input_tokens(ask()) + CAP
    assert budget.reserved == 0


# --- the budget's arithmetic -------------------------------------------------------

RESERVATIONS = [
    # (limit, used, already reserved, input estimate, output wanted, output granted or None)
    (None, 0, 0, 10, 4096, 4096),
    (1000, 0, 0, 10, 4096, 990),
    (1000, 500, 0, 10, 100, 100),
    (1000, 500, 400, 10, 100, 90),
    (1000, 989, 0, 10, 100, 1),
    (1000, 990, 0, 10, 100, None),
    (1000, 500, 490, 10, 100, None),
    (1000, 1200, 0, 0, 1, None),
]


@pytest.mark.parametrize(
    ("limit", "used", "held", "inp", "want", "got"),
    RESERVATIONS,
    ids=[f"{r[0]}-{r[1]}-{r[2]}-{r[4]}" for r in RESERVATIONS],
)
def test_a_reservation_gets_what_is_left_or_is_refused(
    limit: int | None, used: int, held: int, inp: int, want: int, got: int | None
) -> None:
    budget = TokenBudget(limit, used=used)
    if held:
        budget.reserve(held - 1, 1)
    if got is None:
        with pytest.raises(BudgetExceeded):
            budget.reserve(inp, want)
        return
    assert budget.reserve(inp, want).output_tokens == got


def test_settling_releases_the_reservation_and_charges_what_was_used_once() -> None:
    budget = TokenBudget(1000)
    held = budget.reserve(100, 400)
    assert (budget.used, budget.reserved, budget.remaining) == (0, 500, 500)
    budget.settle(held, Usage(input_tokens=90, output_tokens=30))
    budget.settle(held, Usage(input_tokens=90, output_tokens=30))
    assert (budget.used, budget.reserved, budget.remaining) == (120, 0, 880)
