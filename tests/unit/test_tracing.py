"""Tracing's switches and plumbing: off costs nothing, on never leaks a credential."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
import sys
import uuid

import pytest

from toka.api.models import Agent
from toka.controller.builders.pod import PodConfig, build_agent_pod
from toka.devcluster.binaries import pinned_replaces
from toka.tracing import (
    NO_SPAN,
    NO_TRACER,
    configured,
    from_env,
    kernel_env,
    trace_id_for,
    trace_id_hex,
)

UID = "9b4c3404-33b2-4a07-9a18-19be28927f5c"


def test_without_an_endpoint_the_kernel_and_operator_import_nothing_from_opentelemetry() -> None:
    code = """
import json, os, sys
for name in list(os.environ):
    if name.startswith("OTEL_"):
        del os.environ[name]
import toka.kernel.main, toka.controller.main
from toka import tracing
tracer = tracing.from_env("toka-kernel", os.environ)
with tracer.span("chat m", {"gen_ai.request.model": "m"}) as span:
    span.set("gen_ai.usage.input_tokens", 1)
tracer.start("invoke_agent a", trace_id=1).end()
tracer.shutdown()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(proc.stdout) == []


def test_tracing_is_on_only_with_an_endpoint_and_not_disabled() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert not configured({})
    assert configured(endpoint)
    assert configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not configured({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not configured({**endpoint, "OTEL_TRACES_EXPORTER": "none"})
    assert from_env("toka-kernel", {}) is NO_TRACER
    with NO_TRACER.span("anything") as span:
        assert span is NO_SPAN


def test_a_runs_trace_id_is_the_sha256_of_its_agents_uid() -> None:
    assert trace_id_hex(UID) == hashlib.sha256(UID.encode()).hexdigest()[:32]
    # Not a UUID: still a stable 128-bit id, never the invalid all-zero one.
    assert trace_id_hex("ns/name") == trace_id_hex("ns/name") != "0" * 32


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7])
def test_ratio_sampling_of_uuid4_runs_keeps_about_the_ratio(ratio: float) -> None:
    # TraceIdRatioBased compares the low 64 bits, where a UUIDv4 has fixed version and
    # variant bits: the raw uid kept 0% of runs at 0.5 and 80% at 0.7.
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    sampler = TraceIdRatioBased(ratio)
    rng = random.Random(1234)
    uids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(2000)]
    kept = sum(
        sampler.should_sample(None, trace_id_for(uid), "invoke_agent a").decision
        == Decision.RECORD_AND_SAMPLE
        for uid in uids
    )
    assert ratio - 0.1 < kept / len(uids) < ratio + 0.1


def test_kernels_get_the_endpoint_and_exporter_settings_but_never_headers() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer sk-backend-secret",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-api-key=sk-backend-secret",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/etc/otel/ca.pem",
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_SERVICE_NAME": "toka-operator",
    }
    assert dict(kernel_env(env)) == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_BSP_SCHEDULE_DELAY": "1000",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }
    assert kernel_env({"OTEL_BSP_SCHEDULE_DELAY": "1000"}) == ()


@pytest.mark.parametrize(
    ("variable", "endpoint"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:hunter22@collector.example.com"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://sk-token@collector.example.com"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://@collector.example.com"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.example.com?api_key=sk-1"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://c.example.com/v1/traces?token=sk-1"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://sk-token@c.example.com/v1/traces"),
    ],
)
def test_an_endpoint_that_may_hold_a_credential_is_not_put_in_pod_specs(
    variable: str, endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", variable: endpoint}
    with caplog.at_level(logging.WARNING, logger="toka.tracing"):
        assert kernel_env(env) == ()
    assert "userinfo or a query string" in caplog.text
    assert "sk-" not in caplog.text
    assert "hunter22" not in caplog.text


def test_an_endpoint_with_a_path_and_port_is_passed_on() -> None:
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector.example.com:4318/v1/traces"}
    assert dict(kernel_env(env)) == env


def test_the_kernel_alone_gets_the_tracing_settings() -> None:
    agent = Agent.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "a", "namespace": "ns", "uid": UID},
            "spec": {
                "capabilities": ["llm:complete"],
                "tasks": [{"name": "t", "description": "x"}],
            },
        }
    )
    config = PodConfig(tracing_env=(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),))
    pod = build_agent_pod(agent, 1, config)
    containers = pod["spec"]["initContainers"] + pod["spec"]["containers"]
    with_endpoint = {
        c["name"]
        for c in containers
        if any(e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT" for e in c.get("env", []))
    }
    assert with_endpoint == {"kernel"}


def test_the_jaeger_wrapper_module_repeats_the_published_replacements_only() -> None:
    gomod = """module github.com/jaegertracing/jaeger

go 1.24.6

require github.com/Shopify/sarama v1.37.2

replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0

replace (
\tgithub.com/a/b v1.0.0 => github.com/a/b v1.0.1 // pinned
\tgithub.com/c/d => ./internal/d
)
"""
    assert pinned_replaces(gomod) == [
        "github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0",
        "github.com/a/b v1.0.0 => github.com/a/b v1.0.1",
    ]
