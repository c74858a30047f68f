"""Gateway overhead per LLM call versus a direct HTTP call to the same local server.

Both sides POST the same Chat Completions request to one OpenAI-format
server on loopback and parse the JSON answer; the gateway adds sanitation,
the rate limiter, tenacity, validation, metrics and the audit record.
Target (docs/architecture.md, Measured targets): ≤ 1 ms p50 overhead.

    python -m bench.llm_gateway_overhead [--calls N] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from prometheus_client import CollectorRegistry
from tests.llm_servers import ProviderServer

from toka.api.models import Provider
from toka.llm import ChatMessage, CompletionRequest, LLMConfig, LLMGateway
from toka.llm.metrics import GatewayMetrics
from toka.llm.providers.openai import to_openai

KEY = "sk-bench-0123456789abcdef"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int) -> None:
    server = await ProviderServer("openai", KEY).start()
    config = LLMConfig(
        provider=Provider.OPENAI,
        model="m",
        base_url=server.url,
        api_key=KEY,
        rate_limit_per_minute=10_000_000,
    )
    audit: list[dict[str, object]] = []
    gateway = LLMGateway(config, metrics=GatewayMetrics(CollectorRegistry()), audit=audit.append)
    request = CompletionRequest(
        messages=[
            ChatMessage(role="system", content="You are an agent."),
            ChatMessage(role="user", content="Fix the build. " * 20),
        ],
        agent="a",
        task="t",
        turn=1,
    )
    body = to_openai(request, config)
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    direct_client = httpx.AsyncClient()

    async def direct() -> None:
        resp = await direct_client.post(
            f"{server.url}/chat/completions", json=body, headers=headers
        )
        resp.raise_for_status()
        resp.json()

    async def via_gateway() -> None:
        await gateway.complete(request)

    for fn in (direct, via_gateway):  # warm up connections and code paths
        for _ in range(20):
            await fn()
    samples: dict[str, list[float]] = {"direct": [], "gateway": []}
    for _ in range(calls):  # interleaved, so drift affects both alike
        for name, fn in (("direct", direct), ("gateway", via_gateway)):
            t0 = time.perf_counter()
            await fn()
            samples[name].append((time.perf_counter() - t0) * 1000)
    await direct_client.aclose()
    await gateway.aclose()
    await server.stop()

    d50, g50 = statistics.median(samples["direct"]), statistics.median(samples["gateway"])
    print(f"calls per side: {calls}")
    print(f"direct HTTP  p50 {d50:.3f} ms  p99 {pct(samples['direct'], 0.99):.3f} ms")
    print(f"via gateway  p50 {g50:.3f} ms  p99 {pct(samples['gateway'], 0.99):.3f} ms")
    print(
        f"overhead p50 {g50 - d50:+.3f} ms (target ≤ 1 ms)   ratio gateway/direct {g50 / d50:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--smoke", action="store_true", help="a quick run for CI")
    args = parser.parse_args()
    asyncio.run(main(50 if args.smoke else args.calls))
