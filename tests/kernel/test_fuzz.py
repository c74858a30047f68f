"""The kernel API under malformed, mistyped, huge and unknown input (hypothesis).

Whatever arrives, the kernel answers 2xx or 4xx, keeps serving, and grants
nothing beyond `fs:read:notes/**` and `llm:complete`: no file outside notes/
is ever read back, nothing is written, no program runs. And however a path is
spelled (`.`, empty segments, a trailing `/`), it reaches only files the grant
names in their canonical spelling.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernel.stack import hello_recording, kernel_stack
from toka.api.capabilities import Grant
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


# Spellings of workspace paths: `.`, empty and `..` segments, absolute, trailing `/` or `/.`.
SEGMENTS = [".", "", "..", "notes", "n.md", "deep", "d.md", "secret.txt", "README.md", "a"]
fs_paths = st.builds(
    lambda lead, segments, trail: lead + "/".join(segments) + trail,
    st.sampled_from(["", "./", "/"]),
    st.lists(st.sampled_from(SEGMENTS), max_size=4),
    st.sampled_from(["", "/", "/."]),
)
# Grants with `*` segments, which an empty or `.` segment would satisfy if matched as spelled.
FS_GRANT = ["fs:read:notes/*", "fs:read:*/secret.txt", "fs:write:*/README.md"]
DEEP = "DEEP-BELOW-NOTES"


def test_no_spelling_of_a_path_reaches_a_file_the_grant_does_not_name(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    grant = Grant.from_strings(FS_GRANT)
    loop = asyncio.new_event_loop()
    stack_cm = kernel_stack(ws, FS_GRANT)
    stack = loop.run_until_complete(stack_cm.__aenter__())
    (stack.workspace / "notes" / "deep").mkdir(parents=True)
    (stack.workspace / "notes" / "n.md").write_text("a note")
    (stack.workspace / "notes" / "deep" / "d.md").write_text(DEEP)
    (stack.workspace / "secret.txt").write_text(SECRET)
    (stack.workspace / "README.md").write_text("readme")

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(tool=st.sampled_from(["fs.read", "fs.write", "fs.list"]), path=fs_paths)
    def check(tool: str, path: str) -> None:
        body = {"path": path, "content": "written"} if tool == "fs.write" else {"path": path}
        resp = loop.run_until_complete(stack.http.post(f"/v1/tools/{tool}", json=body))
        assert resp.status_code < 500, (tool, path, resp.text[:300])
        assert SECRET not in resp.text, (tool, path)
        assert DEEP not in resp.text, (tool, path)
        if tool == "fs.list" and resp.status_code == 200:
            for entry in resp.json()["entries"]:
                assert grant.permits("fs", "read", entry), (path, entry)

    try:
        check()
        # Every file written is one the grant names, under the name it was written as.
        for file in stack.workspace.rglob("*"):
            rel = str(file.relative_to(stack.workspace))
            if file.is_file() and file.read_text() == "written":
                assert grant.permits("fs", "write", rel), rel
        assert (stack.workspace / "secret.txt").read_text() == SECRET
        assert (stack.workspace / "README.md").read_text() == "readme"
    finally:
        loop.run_until_complete(stack_cm.__aexit__(None, None, None))
        loop.close()
