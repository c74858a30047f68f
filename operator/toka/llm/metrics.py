"""Prometheus metrics per call: requests, tokens, latency, errors and retries by reason."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        reg = registry if registry is not None else REGISTRY
        self.requests = Counter(
            "toka_llm_requests", "LLM calls by outcome.", ["provider", "outcome"], registry=reg
        )
        self.tokens = Counter(
            "toka_llm_tokens", "LLM tokens used.", ["provider", "kind"], registry=reg
        )
        self.latency = Histogram(
            "toka_llm_request_duration_seconds",
            "Latency of successful LLM calls, retries included.",
            ["provider"],
            registry=reg,
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.errors = Counter(
            "toka_llm_errors", "LLM call errors by reason.", ["provider", "reason"], registry=reg
        )
        self.retries = Counter(
            "toka_llm_retries", "LLM call retries by reason.", ["provider", "reason"], registry=reg
        )
