"""The kernel API under malformed, mistyped, huge and unknown input (hypothesis).

Whatever arrives, the kernel answers 2xx or 4xx, keeps serving, and grants
nothing beyond `fs:read:notes/**` and `llm:complete`: no file outside notes/
is ever read back, nothing is written, no program runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel.stack import hello_recording, kernel_stack
from toka.kernel.server import MAX_BODY, MESSAGE_TYPES

PATHS = [
    "/v1/messages",
    "/v1/tools/fs.read",
    "/v1/tools/fs.write",
    "/v1/tools/fs.list",
    "/v1/tools/shell.exec",
    "/v1/tools/http.fetch",
    "/v1/tools/no.such.tool",
    "/v1/llm/complete",
    "/openai/v1/chat/completions",
]
KNOWN_FIELDS = [
    "type",
    "task",
    "summary",
    "error",
    "message",
    "percent",
    "name",
    "capabilities",
    "tasks",
    "path",
    "content",
    "argv",
    "url",
    "messages",
    "tools",
    "turn",
    "temperature",
    "stream",
    "model",
    "max_tokens",
    "timeout_seconds",
]
MESSAGE_KINDS = [*sorted(MESSAGE_TYPES), "Unknown", ""]
SECRET = "TOP-SECRET-OUTSIDE-NOTES"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=64),
    st.sampled_from(
        [
            "../secret.txt",
            "/etc/passwd",
            "secret.txt",
            "notes/../secret.txt",
            "notes/n.md",
            "t",
            "cat",
            "http://127.0.0.1/",
            "\x00",
            "user",
            "tool",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=30,
)
shaped = st.builds(
    lambda fields, kind: {**fields, **({"type": kind} if kind is not None else {})},
    st.dictionaries(st.sampled_from(KNOWN_FIELDS), json_values, max_size=6),
    st.one_of(st.none(), st.sampled_from(MESSAGE_KINDS)),
)
bodies = st.one_of(
    st.binary(max_size=256),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([MAX_BODY - 10, MAX_BODY + 1, 3 * MAX_BODY]).map(
        lambda n: json.dumps({"type": "EmitObservation", "message": "x" * n}).encode()
    ),
)


def test_no_input_makes_the_kernel_fail_or_grant_more(tmp_path: Path) -> None:
    recording = hello_recording(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    loop = asyncio.new_event_loop()
    stack_cm = kernel_stack(ws, ["fs:read:notes/**", "llm:complete"], recording=recording)
    stack = loop.run_until_complete(stack_cm.__aenter__())
    (stack.workspace / "notes").mkdir()
    (stack.workspace / "notes" / "n.md").write_text("a note")
    (stack.workspace / "secret.txt").write_text(SECRET)
    before = sorted(p.relative_to(stack.workspace) for p in stack.workspace.rglob("*"))
    answers: dict[int, int] = {}

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(path=st.sampled_from(PATHS), body=bodies, json_type=st.booleans())
    def check(path: str, body: bytes, json_type: bool) -> None:
        headers = {"Content-Type": "application/json" if json_type else "text/plain"}
        resp = loop.run_until_complete(stack.http.post(path, content=body, headers=headers))
        answers[resp.status_code] = answers.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (path, body[:200], resp.text[:300])
        assert SECRET not in resp.text

    try:
        check()
        # Still serving, and nothing was created, changed or run.
        health: Any = loop.run_until_complete(stack.http.get("/healthz"))
        assert health.status_code == 200
        after = sorted(p.relative_to(stack.workspace) for p in stack.workspace.rglob("*"))
        assert after == before
        assert (stack.workspace / "secret.txt").read_text() == SECRET
        assert any(400 <= code < 500 for code in answers)
    finally:
        loop.run_until_complete(stack_cm.__aexit__(None, None, None))
        loop.close()
