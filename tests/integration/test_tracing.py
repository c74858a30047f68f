"""Traces of a real agent run, exported over OTLP/HTTP to a real Jaeger and queried back.

The operator runs with `OTEL_EXPORTER_OTLP_ENDPOINT` naming a Jaeger on
loopback; it hands the endpoint to the kernels it starts on the dev node. An
agent writes one file it may write and one it may not, on a replay
recording. The trace whose id derives from the Agent's uid (the first 16
bytes of its SHA-256, `trace_id_hex`) must then hold what a user
looks for: the run, each LLM call with its GenAI attributes and the tokens
the Agent's status counts, each tool call, the denied decision, and the
operator's reconciles of that Agent; and no prompt text unless LLM_DEBUG.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeAgentProcess, OperatorProcess, failed
from tests.helpers import phase_is, wait_for
from tests.jaeger import Jaeger, running_jaeger, spans
from tests.sessions import agent, call, finish, put_recordings, recording, session
from toka.kube.client import AGENTS, PODS, SESSIONS, AsyncKube
from toka.tracing import trace_id_hex

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
SECRET_TASK = "Draft the plan; the launch code is PAPAYA-0451-ZULU"
SECRET_CONTENT = "CONTENT-OF-THE-PLAN-7d1f"
TOKENS = (120, 15)


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    with running_jaeger(tmp_path_factory.mktemp("jaeger")) as j:
        yield j


def traced_operator(
    kubeconfig: Path,
    namespace: str,
    jaeger: Jaeger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **env: str,
) -> OperatorProcess:
    """The operator with tracing on (the process takes the test's environment)."""
    for name, value in {**jaeger.env(), **env}.items():
        monkeypatch.setenv(name, value)
    op = OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log")
    op.start()
    return op


@pytest.fixture
def operator_tracing(
    kubeconfig: Path,
    namespace: str,
    node_agent: NodeAgentProcess,
    jaeger: Jaeger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    op = traced_operator(kubeconfig, namespace, jaeger, tmp_path, monkeypatch)
    yield op
    stop_and_report(op, jaeger, request)


@pytest.fixture
def operator_tracing_with_llm_debug(
    kubeconfig: Path,
    namespace: str,
    node_agent: NodeAgentProcess,
    jaeger: Jaeger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[OperatorProcess]:
    op = traced_operator(kubeconfig, namespace, jaeger, tmp_path, monkeypatch, LLM_DEBUG="1")
    yield op
    stop_and_report(op, jaeger, request)


def stop_and_report(op: OperatorProcess, jaeger: Jaeger, request: pytest.FixtureRequest) -> None:
    op.stop()
    if failed(request):
        print(f"--- operator log\n{op.log.read_text(errors='replace')[-6000:]}")
        print(f"--- jaeger log\n{jaeger.log.read_text(errors='replace')[-3000:]}")


async def run_writer_session(kube: AsyncKube, namespace: str) -> JSON:
    """A one-agent session that writes notes/plan.md (granted) and secrets/key.txt (not);
    the Agent once its pod has ended, so its kernel has flushed its last spans."""
    recordings = {
        "writer": recording(
            "writer",
            {
                "plan": [
                    call("fs_write", path="notes/plan.md", content=SECRET_CONTENT),
                    call("fs_write", path="secrets/key.txt", content=SECRET_CONTENT),
                    finish("wrote the plan"),
                ]
            },
            tokens=TOKENS,
        )
    }
    await put_recordings(kube, namespace, "rec", recordings)
    writer = agent("writer", tasks=["plan"], caps=["llm:complete", "fs:write:notes/**"])
    writer["tasks"][0]["description"] = SECRET_TASK
    await kube.create(SESSIONS, session("traced", [writer]), namespace)
    done = await wait_for(
        kube, AGENTS, "traced-writer", namespace, phase_is("Succeeded"), timeout=120
    )
    await wait_for(kube, PODS, done["status"]["podName"], namespace, phase_is("Succeeded"))
    return done


async def trace_of(jaeger: Jaeger, uid: str, *, until: Any, timeout: float = 30) -> JSON:
    """The run's trace once `until(spans)` holds (spans arrive in batches)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    trace = None
    while loop.time() < deadline:
        trace = await asyncio.to_thread(jaeger.trace, trace_id_hex(uid))
        if trace is not None and until(spans(trace)):
            return trace
        await asyncio.sleep(0.5)
    raise AssertionError(f"the trace of {uid} is incomplete: {trace and spans(trace)}")


def whole_run(found: list[JSON]) -> bool:
    names = {s["name"] for s in found}
    return "invoke_agent writer" in names and "reconcile Agent" in names


def named(found: list[JSON], name: str) -> list[JSON]:
    return [s for s in found if s["name"] == name]


def children(found: list[JSON], parent: JSON) -> list[JSON]:
    return [s for s in found if s["parent"] == parent["id"]]


async def test_an_agent_run_is_one_trace_of_its_llm_calls_tools_decisions_and_reconciles(
    kube: AsyncKube, namespace: str, operator_tracing: OperatorProcess, jaeger: Jaeger
) -> None:
    done = await run_writer_session(kube, namespace)
    uid = done["metadata"]["uid"]
    trace = await trace_of(jaeger, uid, until=whole_run)
    found = spans(trace)

    (run,) = named(found, "invoke_agent writer")
    assert run["service"] == "toka-kernel"
    assert run["tags"]["gen_ai.operation.name"] == "invoke_agent"
    assert (run["tags"]["gen_ai.agent.name"], run["tags"]["gen_ai.agent.id"]) == ("writer", uid)

    # One chat span per LLM call, under the run, with the tokens the Agent's status counts.
    chats = named(found, "chat replay")
    usage = done["status"]["run"]["usage"]
    assert len(chats) == usage["requests"] == 3
    assert all(c["parent"] == run["id"] for c in chats)
    for chat in chats:
        tags = chat["tags"]
        assert tags["gen_ai.operation.name"] == "chat"
        assert tags["gen_ai.provider.name"] == "replay"
        assert tags["gen_ai.request.model"] == "replay"
        assert json.loads(tags["gen_ai.response.finish_reasons"]) == ["tool_use"]
        assert (tags["gen_ai.usage.input_tokens"], tags["gen_ai.usage.output_tokens"]) == TOKENS
        assert tags["toka.task"] == "plan"
    assert sum(c["tags"]["gen_ai.usage.input_tokens"] for c in chats) == usage["inputTokens"]
    assert sum(c["tags"]["gen_ai.usage.output_tokens"] for c in chats) == usage["outputTokens"]
    assert sorted(c["tags"]["toka.turn"] for c in chats) == [1, 2, 3]

    # Each tool call is a span whose policy decision is its child; the denial is an error.
    writes = named(found, "execute_tool fs.write")
    assert len(writes) == 2
    decisions = {}
    for write in writes:
        assert write["tags"]["gen_ai.tool.name"] == "fs.write"
        (decision,) = children(found, write)
        assert decision["name"] == "policy fs.write"
        decisions[decision["tags"]["toka.policy.decision"]] = (write, decision)
    allowed_write, allowed = decisions["allow"]
    assert allowed["tags"]["toka.policy.capability"] == "fs:write:notes/**"
    assert "error" not in allowed_write["tags"]
    denied_write, denied = decisions["deny"]
    assert denied["tags"]["toka.policy.target"] == "secrets/key.txt"
    assert "fs:write:secrets/key.txt" in denied["tags"]["toka.policy.reason"]
    assert denied_write["tags"]["error"] is True
    assert denied_write["tags"]["error.type"] == "denied"
    assert done["status"]["run"]["denials"]["count"] == 1

    # The operator's reconciles of this Agent are in the same trace.
    reconciles = named(found, "reconcile Agent")
    assert {r["service"] for r in reconciles} == {"toka-operator"}
    assert {r["tags"]["toka.name"] for r in reconciles} == {"traced-writer"}
    assert {r["tags"]["toka.uid"] for r in reconciles} == {uid}
    assert any(r["tags"].get("toka.phase") == "Running" for r in reconciles)

    # Without LLM_DEBUG, neither the prompt nor what the agent wrote is in the trace.
    text = json.dumps(trace)
    assert "PAPAYA-0451-ZULU" not in text
    assert SECRET_CONTENT not in text


async def test_with_llm_debug_the_prompt_is_on_the_chat_span(
    kube: AsyncKube,
    namespace: str,
    operator_tracing_with_llm_debug: OperatorProcess,
    jaeger: Jaeger,
) -> None:
    done = await run_writer_session(kube, namespace)
    trace = await trace_of(jaeger, done["metadata"]["uid"], until=whole_run)
    first = next(s for s in named(spans(trace), "chat replay") if s["tags"]["toka.turn"] == 1)
    details = [
        log
        for log in first["logs"]
        if log.get("event") == "gen_ai.client.inference.operation.details"
    ]
    inputs = [log["gen_ai.input.messages"] for log in details if "gen_ai.input.messages" in log]
    outputs = [log["gen_ai.output.messages"] for log in details if "gen_ai.output.messages" in log]
    assert len(inputs) == 1
    assert "PAPAYA-0451-ZULU" in inputs[0]
    assert len(outputs) == 1
    assert "notes/plan.md" in outputs[0]
