"""`toka record` on the real API server: a session runs once against a provider (a local
server speaking OpenAI's wire format, with a real key in a Secret), its recordings
come out as files and a ConfigMap, and the same session replayed from them ends
the same way, without a single call to the provider and without the key.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import OperatorProcess
from tests.helpers import service_account_token, wait_for
from tests.llm_servers import ProviderServer, Reply, openai_completion
from tests.sessions import agent, session
from toka.kube.client import AGENTS, CONFIGMAPS, PODS, SECRETS, SESSIONS, AsyncKube

pytestmark = pytest.mark.controlplane
JSON = dict[str, Any]
KEY = "sk-test-key-0123456789abcdef"


def tool_call(name: str, **arguments: Any) -> JSON:
    return {"id": f"call-{name}", "name": name, "input": arguments}


def ended(obj: JSON) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")


async def outcome(kube: AsyncKube, namespace: str, name: str) -> JSON:
    """What a user sees of a finished session: its phase and usage, each task's summary."""
    done = await wait_for(kube, SESSIONS, name, namespace, ended, timeout=120, what="the end")
    tasks = {}
    for short in ("scout", "scribe"):
        ag = await kube.get(AGENTS, f"{name}-{short}", namespace)
        tasks[short] = [(t["name"], t["state"], t["summary"]) for t in ag["status"]["run"]["tasks"]]
    usage = done["status"]["usage"]
    return {
        "phase": done["status"]["phase"],
        "tokens": (usage["inputTokens"], usage["outputTokens"]),
        "tasks": tasks,
    }


async def test_a_recorded_run_replays_to_the_same_result_without_the_provider(
    kube: AsyncKube,
    namespace: str,
    kubeconfig: Path,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    provider = await ProviderServer("openai", KEY).start()
    provider.script(
        Reply(
            body=openai_completion(
                None, [tool_call("fs_write", path="notes.md", content="found it")], usage=(50, 6)
            )
        ),
        Reply(
            body=openai_completion(
                None,
                [tool_call("finish_task", status="succeeded", summary="wrote notes.md")],
                usage=(80, 9),
            )
        ),
        # An answer that echoes the key: it must not reach the recording.
        Reply(
            body=openai_completion(
                None,
                [tool_call("finish_task", status="succeeded", summary=f"read it; key {KEY}")],
                usage=(60, 7),
            )
        ),
    )
    await kube.create(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-key"},
            "stringData": {"api-key": KEY},
        },
        namespace,
    )
    agents = [
        agent("scout", caps=["llm:complete", "fs:write:**"]),
        agent("scribe", depends=["scout"]),
    ]
    live = session("scouting", agents)
    live["spec"]["llm"] = {
        "provider": "openai",
        "baseURL": provider.url,
        "apiKeySecretRef": {"name": "llm-key", "key": "api-key"},
    }
    manifest = tmp_path / "session.yaml"
    manifest.write_text(yaml.safe_dump(live))
    out = tmp_path / "recordings"
    try:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "toka.cli", "record", "-f", str(manifest)],
            *["--out", str(out), "-n", namespace, "--kubeconfig", str(kubeconfig)],
            *["--timeout", "120"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, said = await proc.communicate()
    finally:
        await provider.stop()
    assert proc.returncode == 0, said.decode()
    assert len(provider.requests) == 3
    recorded = await outcome(kube, namespace, "scouting")
    assert recorded["phase"] == "Succeeded"
    assert recorded["tokens"] == (50 + 80 + 60, 6 + 9 + 7)

    files = sorted(p.name for p in out.iterdir())
    assert files == ["scout.json", "scouting-recordings.yaml", "scribe.json"]
    for path in out.iterdir():
        text = path.read_text()
        assert KEY not in text
        assert "authorization" not in text.lower()

    await kube.create(
        CONFIGMAPS, yaml.safe_load((out / "scouting-recordings.yaml").read_text()), namespace
    )
    await kube.create(
        SESSIONS, session("replayed", agents, recordings="scouting-recordings"), namespace
    )
    replayed = await outcome(kube, namespace, "replayed")
    assert replayed == recorded
    assert len(provider.requests) == 3  # the replay called no provider


async def test_a_new_attempts_kernel_keeps_the_turns_an_earlier_pod_recorded(
    kube: AsyncKube, namespace: str, tmp_path: Path
) -> None:
    from toka.kernel.recording import RecordingWriter
    from toka.llm.providers.replay import RecordedResponse, Recording, Turn
    from toka.llm.sanitize import Redactor

    earlier = Recording(
        agent="scout", turns=[Turn(task="t1", turn=1, response=RecordedResponse(content="one"))]
    )
    await kube.create(
        CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "s-scout.recording"},
            "data": {"scout.json": earlier.model_dump_json()},
        },
        namespace,
    )
    path = tmp_path / "recording.json"
    writer = RecordingWriter(
        kube, namespace, "s-scout.recording", "scout.json", "scout", path, Redactor([KEY])
    )
    await writer.resume()
    now = Recording.load(path)
    now.turns.append(Turn(task="t2", turn=1, response=RecordedResponse(content=f"echo {KEY}")))
    await writer(now)
    stored = await kube.get(CONFIGMAPS, "s-scout.recording", namespace)
    recording = Recording.model_validate_json(stored["data"]["scout.json"])
    assert [(t.task, t.response.content) for t in recording.turns] == [
        ("t1", "one"),
        ("t2", "echo [REDACTED]"),
    ]


async def test_record_mode_turned_on_after_the_first_pod_is_recorded_and_a_refusal_is_quick(
    kube: AsyncKube, namespace: str, tmp_path: Path
) -> None:
    from toka.controller.reconciler import Kind, OperatorConfig, Reconciler
    from toka.kernel.recording import RecordingWriter
    from toka.llm.providers.replay import RecordedResponse, Recording, Turn
    from toka.llm.sanitize import Redactor

    body = {
        "apiVersion": "toka.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "s-scout"},
        "spec": {
            "name": "scout",
            "capabilities": ["llm:complete"],
            "tasks": [{"name": "t1", "description": "x"}],
            "llm": {"provider": "openai", "model": "gpt-4o"},
        },
    }
    # The operator makes the Agent's identity (ServiceAccount, Role, RoleBinding) with its
    # first pod, before record mode is on ...
    reconciler = Reconciler(kube, OperatorConfig())
    key = (Kind.AGENT, namespace, "s-scout")
    reconciler.observe(Kind.AGENT, None, await kube.create(AGENTS, body, namespace))
    await reconciler.reconcile(key)
    pod = await kube.get(PODS, "s-scout-1", namespace)
    await kube.delete(PODS, "s-scout-1", namespace)
    reconciler.observe_pod("DELETED", pod)
    # ... and the next pod is made with it on.
    on = await kube.patch(AGENTS, "s-scout", {"spec": {"llm": {"record": True}}}, namespace)
    reconciler.observe(Kind.AGENT, "MODIFIED", on)
    await reconciler.reconcile(key)
    await kube.get(CONFIGMAPS, "s-scout.recording", namespace)

    token = await service_account_token(kube, namespace, "s-scout", seconds=600)
    recording = Recording(
        agent="scout", turns=[Turn(task="t1", turn=1, response=RecordedResponse(content="one"))]
    )
    loop = asyncio.get_running_loop()
    async with AsyncKube(kube.config.with_token(token)) as kernel:
        writer = RecordingWriter(
            kernel,
            namespace,
            "s-scout.recording",
            "scout.json",
            "scout",
            tmp_path / "r",
            Redactor(),
        )
        await writer(recording)
        assert writer.failure is None
        stored = await kube.get(CONFIGMAPS, "s-scout.recording", namespace)
        assert Recording.model_validate_json(stored["data"]["scout.json"]) == recording

        # A ConfigMap its Role does not name: refused (403) at once, every time, not
        # retried for 15 s before each answer.
        await kube.create(CONFIGMAPS, {"metadata": {"name": "someone-else"}, "data": {}}, namespace)
        other = RecordingWriter(
            kernel, namespace, "someone-else", "scout.json", "scout", tmp_path / "o", Redactor()
        )
        for _ in range(2):
            started = loop.time()
            await other(recording)
            assert loop.time() - started < 3
            assert other.failure is not None
            assert "someone-else" in other.failure
            assert "403" in other.failure
