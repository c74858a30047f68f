"""Record mode in the kernel: the real provider's answers, turn by turn, into the Agent's
recording ConfigMap, from which `toka record` collects them for `provider: replay`.

A recording holds answers and token usage, never a request or its headers; it
is still redacted with the kernel's redactor before it leaves the pod, since
an answer can echo a key. Each turn is stored before the agent gets its
answer, so whatever the agent did next (finish a task, end the session) its
turn is already in the ConfigMap; this costs one PATCH per LLM call, in
record mode only. A new attempt starts from what the ConfigMap holds,
keeping the turns of earlier pods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import httpx

from toka.kube.client import CONFIGMAPS, ApiError, AsyncKube
from toka.llm.providers.replay import Recording

log = logging.getLogger("toka.kernel.recording")
# An API outage longer than this loses the turn (logged), not the call; waited out only
# while writes succeed, never for a refusal (403, 404).
WRITE_SECONDS = 15.0


class RecordingWriter:
    def __init__(
        self,
        kube: AsyncKube,
        namespace: str,
        configmap: str,
        key: str,
        agent: str,
        path: Path,
        redact: Callable[[str], str],
    ):
        self.kube = kube
        self.namespace = namespace
        self.configmap = configmap
        self.key = key
        self.agent = agent
        self.path = path
        self.redact = redact
        # One write at a time, each of the recording as it is then: never an older one last.
        self._lock = asyncio.Lock()
        # Why the last write failed; None while writes succeed.
        self.failure: str | None = None

    async def resume(self) -> None:
        """Start from the ConfigMap's recording, if an earlier attempt left one."""
        try:
            cm = await self.kube.get(CONFIGMAPS, self.configmap, self.namespace)
        except (ApiError, OSError, httpx.TransportError) as err:
            log.info("no earlier recording read from %s: %s", self.configmap, err)
            return
        text = (cm.get("data") or {}).get(self.key)
        if text:
            self.path.write_text(text)

    async def __call__(self, recording: Recording) -> None:
        async with self._lock:
            await self._write(self.redact(recording.model_dump_json(indent=1)) + "\n")

    async def _write(self, text: str) -> None:
        """One PATCH of the whole recording, before the agent gets its answer. Each write
        holds every turn so far, so a lost write loses nothing once a later one lands.
        Only an outage is waited out (WRITE_SECONDS), and only while writes succeed: after
        one has given up, later ones try once. A refusal (403: the Role does not name the
        ConfigMap; 404: it is gone) is not retried at all: it would not pass in 15 s and
        would delay every answer by that much."""
        body = {"data": {self.key: text}}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (WRITE_SECONDS if self.failure is None else 0)
        delay = 0.5
        while True:
            try:
                await self.kube.patch(CONFIGMAPS, self.configmap, body, self.namespace)
            except ApiError as err:
                if err.status in (413, 422):
                    self._failed(f"the recording does not fit in ConfigMap {self.configmap}", err)
                    return
                if not err.transient:  # 403, 404, ...: a refusal, never retried
                    self._failed(f"cannot write the recording to ConfigMap {self.configmap}", err)
                    return
                reason: object = err
            except (httpx.TransportError, OSError) as err:
                reason = type(err).__name__
            else:
                if self.failure is not None:
                    log.info("the recording is written to %s again", self.configmap)
                self.failure = None
                return
            if loop.time() > deadline:
                self._failed(f"gave up writing the recording to {self.configmap}", reason)
                return
            log.info("writing the recording to %s: %s; retrying", self.configmap, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    def _failed(self, what: str, reason: object) -> None:
        """Report a failed write in the kernel's log: an error the first time (and when the
        reason changes), then quietly. The agent gets its answer either way; its turn is
        in the ConfigMap only once a later write succeeds."""
        message = f"{what}: {reason}; the agent's turns go unrecorded until a write succeeds"
        if self.failure != message:
            log.error("%s", message)
        self.failure = message
