"""`toka record`: run a session once against a real provider and keep its answers as
replay recordings, so the same session can run again anywhere without a key.

The session is created as written, plus `llm.record: true`: each agent's
kernel wraps the real provider and writes every turn (the answer and its
token usage) to the Agent's ConfigMap `<agent>.recording`. Once the session
ends, each agent's recording is written to `<out>/<name>.json`, and all of
them into `<out>/<configmap>.yaml`, a ConfigMap that
`llm: {provider: replay, replay: {configMapRef: {name: <configmap>}}}` reads
(one key per agent, as the replay provider expects). A recording never holds
a request, a header or a key: the kernel redacts it before it leaves the pod.
"""

from __future__ import annotations

import asyncio
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from toka.api.models import AgentSession, Provider
from toka.contract import LABEL_MANAGED_BY, LABEL_SESSION, SESSION_KIND, recording_key
from toka.controller.builders.names import recording_configmap_name
from toka.kube.client import AGENTS, CONFIGMAPS, SESSIONS, ApiError, AsyncKube
from toka.kube.config import KubeConfig
from toka.llm.providers.replay import Recording

JSON = dict[str, Any]
FINAL = ("Succeeded", "Failed")


class RecordError(Exception):
    """What stops a recording; the message names the file, field or object."""


def load_session(path: Path) -> JSON:
    """The one AgentSession in a YAML file, checked against the API's schema."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except (OSError, yaml.YAMLError) as err:
        raise RecordError(f"{path}: {err}") from None
    sessions = [d for d in docs if isinstance(d, dict) and d.get("kind") == SESSION_KIND]
    if len(sessions) != 1:
        raise RecordError(f"{path}: expected one AgentSession, found {len(sessions)}")
    try:
        AgentSession.model_validate(sessions[0])
    except ValidationError as err:
        raise RecordError(f"{path}: not a valid AgentSession: {err}") from None
    return sessions[0]


def compute_record_session(body: JSON, name: str | None = None) -> JSON:
    """The session to run: the user's, renamed if asked, with every agent in record mode.
    A session that would replay instead of calling a provider is refused."""
    out = copy.deepcopy(body)
    meta = out.setdefault("metadata", {})
    if name:
        meta["name"] = name
    if not meta.get("name"):
        raise RecordError("the AgentSession has no metadata.name (or pass --name)")
    for key in ("namespace", "resourceVersion", "uid", "creationTimestamp"):
        meta.pop(key, None)
    out.pop("status", None)
    spec = out.setdefault("spec", {})
    llm = spec.setdefault("llm", {})
    llm["record"] = True
    for where, block in [("spec.llm", llm)] + [
        (f"spec.agents[{a.get('name')}].llm", a.get("llm") or {}) for a in spec.get("agents", [])
    ]:
        if block.get("provider") == Provider.REPLAY.value:
            raise RecordError(
                f"{where}.provider is replay: record needs a real provider "
                "(anthropic, openai or openai-compatible)"
            )
    return out


def compute_recordings_configmap(name: str, recordings: dict[str, str]) -> JSON:
    """The ConfigMap `provider: replay` reads: one `<agent>.json` key per agent."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {LABEL_MANAGED_BY: "toka-record"}},
        "data": {recording_key(agent): text for agent, text in sorted(recordings.items())},
    }


async def record(
    config: KubeConfig,
    namespace: str,
    path: Path,
    out: Path,
    *,
    name: str | None = None,
    configmap: str | None = None,
    timeout: float = 900,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> tuple[bool, str]:
    """Run the session in record mode and write its recordings; whether it succeeded,
    and a line saying what was written."""
    body = compute_record_session(load_session(path), name)
    session = body["metadata"]["name"]
    async with AsyncKube(config) as kube:
        try:
            await kube.create(SESSIONS, body, namespace)
        except ApiError as err:
            if err.conflict:
                raise RecordError(
                    f"AgentSession {namespace}/{session} already exists: delete it, or record "
                    "under another name with --name"
                ) from None
            raise RecordError(f"creating AgentSession {namespace}/{session}: {err}") from None
        say(f"recording AgentSession {namespace}/{session}")
        phase = await _wait_for_end(kube, namespace, session, timeout, say)
        recordings = await _collect(kube, namespace, session, say)
    cm_name = configmap or f"{session}-recordings"
    manifest = await asyncio.to_thread(write_recordings, out, recordings, cm_name)
    said = (
        f"session {phase}: {len(recordings)} recording(s) in {out}/, ConfigMap {cm_name} in "
        f"{manifest} (kubectl apply -f it, then use llm: {{provider: replay, replay: "
        f"{{configMapRef: {{name: {cm_name}}}}}}})"
    )
    return phase == "Succeeded", said


def write_recordings(out: Path, recordings: dict[str, str], configmap: str) -> Path:
    """`<out>/<agent>.json` for each agent and `<out>/<configmap>.yaml` with them all."""
    out.mkdir(parents=True, exist_ok=True)
    for agent, text in recordings.items():
        (out / recording_key(agent)).write_text(text)
    manifest = out / f"{configmap}.yaml"
    text = yaml.safe_dump(compute_recordings_configmap(configmap, recordings), sort_keys=False)
    manifest.write_text(text)
    return manifest


async def _wait_for_end(
    kube: AsyncKube, namespace: str, session: str, timeout: float, say: Callable[[str], None]
) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        status = (await kube.get(SESSIONS, session, namespace)).get("status") or {}
        phase = status.get("phase") or "Pending"
        line = f"{phase} {status.get('progress', '')}".strip()
        if line != last:
            say(f"  {line}")
            last = line
        if phase in FINAL:
            return str(phase)
        if time.monotonic() > deadline:
            raise RecordError(
                f"AgentSession {namespace}/{session} did not end within {timeout:.0f}s "
                f"(phase {phase}); it is left running"
            )
        await asyncio.sleep(1)


async def _collect(
    kube: AsyncKube, namespace: str, session: str, say: Callable[[str], None]
) -> dict[str, str]:
    """Each agent's recording, by the agent's name in the session."""
    agents = await kube.list(AGENTS, namespace, label_selector=f"{LABEL_SESSION}={session}")
    found: dict[str, str] = {}
    for agent in agents["items"]:
        obj, short = (
            agent["metadata"]["name"],
            agent["spec"].get("name") or agent["metadata"]["name"],
        )
        try:
            cm = await kube.get(CONFIGMAPS, recording_configmap_name(obj), namespace)
        except ApiError as err:
            say(f"  {short}: no recording ({err})")
            continue
        text = (cm.get("data") or {}).get(recording_key(short))
        if not text:
            say(f"  {short}: no recording (it made no LLM call)")
            continue
        try:
            turns = len(Recording.model_validate_json(text).turns)
        except ValidationError as err:
            say(f"  {short}: the recording is not valid, skipped: {err}")
            continue
        say(f"  {short}: {turns} turn(s)")
        found[short] = text
    return found
