"""Record mode, pure parts: what `toka record` creates, and what a recording Agent's pod
and Role get (a ConfigMap to write to, and only that one more)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.sessions import agent, session
from toka.api.models import Agent
from toka.console.record import RecordError, compute_record_session, compute_recordings_configmap
from toka.controller.builders.pod import PodConfig, build_agent_pod, build_role
from toka.kernel import recording as recording_module
from toka.kernel.recording import RecordingWriter
from toka.kube.client import ApiError
from toka.llm.providers.replay import Recording

JSON = dict[str, Any]


def an_agent(llm: JSON | None) -> Agent:
    spec: JSON = {"name": "scout", "tasks": [{"name": "t", "description": "x"}]}
    if llm is not None:
        spec["llm"] = llm
    return Agent.model_validate(
        {
            "apiVersion": "toka.dev/v1alpha1",
            "kind": "Agent",
            "metadata": {"name": "s-scout", "namespace": "ns", "uid": "u"},
            "spec": spec,
        }
    )


RECORDING = [
    # (the Agent's llm, does its kernel record?)
    ({"provider": "openai", "record": True}, True),
    ({"provider": "openai"}, False),
    ({"provider": "openai", "record": False}, False),
    (None, False),
]


@pytest.mark.parametrize(("llm", "records"), RECORDING)
def test_a_recording_agents_kernel_gets_its_configmap_and_may_write_only_that_one_more(
    llm: JSON | None, records: bool
) -> None:
    recording = an_agent(llm)
    pod = build_agent_pod(recording, 1, PodConfig())
    kernel = next(c for c in pod["spec"]["initContainers"] if c["name"] == "kernel")
    env = {e["name"]: e.get("value") for e in kernel["env"]}
    configmaps = next(r for r in build_role(recording)["rules"] if r["resources"] == ["configmaps"])
    # Both names whether or not it records: the Role is made once, and `llm.record` may
    # be turned on after the first pod.
    assert configmaps["resourceNames"] == ["s-scout.result", "s-scout.recording"]
    if records:
        assert env["TOKA_RECORDING_CONFIGMAP"] == "s-scout.recording"
        assert env["TOKA_RECORDING_KEY"] == "scout.json"
    else:
        assert "TOKA_RECORDING_CONFIGMAP" not in env


def test_the_recorded_session_is_the_users_in_record_mode() -> None:
    body = session("s", [agent("a")])
    body["spec"]["llm"] = {"provider": "openai", "model": "gpt-4o"}
    body["metadata"]["resourceVersion"] = "42"
    out = compute_record_session(body, name="s-take-2")
    assert out["metadata"] == {"name": "s-take-2"}
    assert out["spec"]["llm"] == {"provider": "openai", "model": "gpt-4o", "record": True}
    assert out["spec"]["agents"] == body["spec"]["agents"]
    assert "record" not in body["spec"]["llm"]  # the caller's copy is left alone


@pytest.mark.parametrize(
    ("session_llm", "agent_llm", "message"),
    [
        ({"provider": "replay"}, None, r"spec.llm.provider is replay"),
        (
            {"provider": "openai"},
            {"provider": "replay"},
            r"spec.agents\[a\].llm.provider is replay",
        ),
    ],
)
def test_recording_a_session_that_would_only_replay_is_refused_naming_the_field(
    session_llm: JSON, agent_llm: JSON | None, message: str
) -> None:
    body = session("s", [agent("a")])
    body["spec"]["llm"] = session_llm
    if agent_llm is not None:
        body["spec"]["agents"][0]["llm"] = agent_llm
    with pytest.raises(RecordError, match=message):
        compute_record_session(body)


def test_the_recordings_configmap_has_one_key_per_agent_as_replay_reads_it() -> None:
    cm = compute_recordings_configmap("s-recordings", {"b": "{}", "a": "{}"})
    assert cm["metadata"]["name"] == "s-recordings"
    assert list(cm["data"]) == ["a.json", "b.json"]


class FlakyConfigMaps:
    """The API server as the kernel's recording writer sees it: PATCH answers `status`."""

    def __init__(self, status: int | None):
        self.status = status
        self.patches = 0

    async def patch(self, res: Any, name: str, body: JSON, namespace: str) -> JSON:
        self.patches += 1
        if self.status is not None:
            raise ApiError(self.status, "Refused", f"configmaps {name!r}")
        return body


@pytest.mark.parametrize(
    ("status", "first_waits"),
    [
        (403, False),  # the Role does not name the ConfigMap: never retried
        (404, False),  # gone: never retried
        (503, True),  # an outage: waited out once, then each write tries once
    ],
)
async def test_a_failed_recording_write_delays_at_most_one_answer(
    status: int, first_waits: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording_module, "WRITE_SECONDS", 0.6)
    api = FlakyConfigMaps(status)
    writer = RecordingWriter(
        api,  # type: ignore[arg-type]
        "ns",
        "s-scout.recording",
        "scout.json",
        "scout",
        tmp_path / "r.json",
        lambda text: text,
    )
    recording = Recording(agent="scout")
    loop = asyncio.get_running_loop()
    for attempt in range(3):
        started, patches = loop.time(), api.patches
        await writer(recording)
        waited = loop.time() - started
        assert str(status) in (writer.failure or "")
        if attempt == 0 and first_waits:
            assert 0.5 < waited < 3
        else:
            assert waited < 0.2
            assert api.patches == patches + 1
    api.status = None  # the API server answers again: the next write lands
    await writer(recording)
    assert writer.failure is None
