"""Default deny, case by case, through the kernel's HTTP API and the real tools server.

Each row is one request an agent could send, the grant it holds, and what
must happen. A refusal is a 4xx with a reason, is counted into the agent's
denials and leaves an audit line; an allowed request really happens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.stack import Stack, hello_recording, kernel_stack

JSON = dict[str, Any]
READ_ALL = ["fs:read:**"]
WRITE_NOTES = ["fs:write:notes/**"]
NET_ALL = ["net:http:*"]


@dataclass
class Case:
    name: str
    caps: list[str]
    path: str
    body: Any
    status: int
    reason: str | None = None  # the `error` field of a refusal
    check: Any = field(default=None, repr=False)  # (stack, answer) → None, asserts the effect


def read(path: str, caps: list[str], status: int, reason: str | None = None, **kw: Any) -> Case:
    return Case(
        f"fs.read {path!r} with {caps}",
        caps,
        "/v1/tools/fs.read",
        {"path": path},
        status,
        reason,
        **kw,
    )


def write(path: str, caps: list[str], status: int, reason: str | None = None, **kw: Any) -> Case:
    return Case(
        f"fs.write {path!r} with {caps}",
        caps,
        "/v1/tools/fs.write",
        {"path": path, "content": "written"},
        status,
        reason,
        **kw,
    )


def listing(path: str, caps: list[str], status: int, reason: str | None = None, **kw: Any) -> Case:
    return Case(
        f"fs.list {path!r} with {caps}",
        caps,
        "/v1/tools/fs.list",
        {"path": path},
        status,
        reason,
        **kw,
    )


def run(argv: Any, caps: list[str], status: int, reason: str | None = None, **kw: Any) -> Case:
    return Case(
        f"shell.exec {argv!r} with {caps}",
        caps,
        "/v1/tools/shell.exec",
        {"argv": argv},
        status,
        reason,
        **kw,
    )


def fetch(url: str, caps: list[str], status: int, reason: str | None = "denied") -> Case:
    return Case(
        f"http.fetch {url} with {caps}", caps, "/v1/tools/http.fetch", {"url": url}, status, reason
    )


def stdout_is(text: str) -> Any:
    def check(stack: Stack, answer: JSON) -> None:
        assert answer["stdout"] == text

    return check


def file_is(rel: str, content: str | None) -> Any:
    def check(stack: Stack, answer: JSON) -> None:
        path = stack.workspace / rel
        if content is None:
            assert not path.exists()
        else:
            assert path.read_text() == content

    return check


def output_has(text: str, *, not_: str | None = None) -> Any:
    """What the program printed (stdout and stderr) holds `text`, and never `not_`."""

    def check(stack: Stack, answer: JSON) -> None:
        out = answer["stdout"] + answer["stderr"]
        assert text in out, answer
        if not_ is not None:
            assert not_ not in out, answer

    return check


def nothing_written_outside(stack: Stack, answer: JSON) -> None:
    assert not (stack.workspace / "private" / "x").exists()


def content_is(text: str) -> Any:
    def check(stack: Stack, answer: JSON) -> None:
        assert answer["content"] == text

    return check


def lists(shown: list[str], hidden: tuple[str, ...] = ()) -> Any:
    def check(stack: Stack, answer: JSON) -> None:
        entries = answer["entries"]
        assert set(shown) <= set(entries), entries
        assert not set(hidden) & set(entries), entries
        assert not any(".git" in e.split("/") for e in entries), entries

    return check


ASK = {"messages": [{"role": "user", "content": "hi"}], "task": "t", "turn": 1}
CHAT = {"model": "any", "messages": [{"role": "user", "content": "hi"}]}
SPAWN = {"type": "SpawnSubAgent", "name": "kid", "tasks": [{"name": "t", "description": "x"}]}

CASES = [
    # --- paths: traversal and absolute paths, refused before the tools sidecar sees them
    read("../etc/passwd", READ_ALL, 403, "denied"),
    read("/etc/passwd", READ_ALL, 403, "denied"),
    read("src/../../etc/passwd", READ_ALL, 403, "denied"),
    read("./../README.md", READ_ALL, 403, "denied"),
    read("src/\x00a.py", READ_ALL, 403, "denied"),
    write("../outside.txt", ["fs:write:**"], 403, "denied"),
    write("/tmp/outside.txt", ["fs:write:**"], 403, "denied"),
    # --- the workspace's git metadata is Toka's: a written hook or config would run as git
    write(".git/hooks/pre-commit", ["fs:write:**"], 403, "denied"),
    write("src/.git/config", ["fs:write:**"], 403, "denied"),
    read(".git/config", READ_ALL, 403, "denied"),
    # --- globs: what the grant names and nothing more
    read("README.md", READ_ALL, 200),
    read("src/a.py", ["fs:read:src/**"], 200),
    read("README.md", ["fs:read:src/**"], 403, "denied"),
    read("src/a.py", ["fs:read:src/*.md"], 403, "denied"),
    write("notes/a.md", READ_ALL, 403, "denied", check=file_is("notes/a.md", None)),
    write("notes/a.md", WRITE_NOTES, 200, check=file_is("notes/a.md", "written")),
    write("notes/deep/a.md", ["fs:write:notes/*"], 403, "denied"),
    write("README.md", WRITE_NOTES, 403, "denied", check=file_is("README.md", "readme")),
    listing("", ["fs:read:src/**"], 403, "denied"),
    listing("src", ["fs:read:src/**"], 200),
    listing("src", READ_ALL, 200),
    listing("", READ_ALL, 200),
    listing("src", ["fs:read:src/*.md"], 403, "denied"),
    # --- symlinks: the real target counts, inside the workspace and out
    read("passwd", READ_ALL, 403),
    read("escape/passwd", READ_ALL, 403),
    write("escape/x", ["fs:write:**"], 403),
    listing("escape", READ_ALL, 403),
    read("inner/a.py", READ_ALL, 200),
    read("public/link/key.txt", ["fs:read:public/**"], 403, "denied"),
    write("public/link/x", ["fs:write:public/**"], 403, "denied", check=nothing_written_outside),
    read("public/ok.txt", ["fs:read:public/**"], 200),
    # --- canonical paths: the grant is checked on exactly the path the tools sidecar opens;
    # `.` and empty segments are dropped, and a file op on a directory's spelling is refused
    read("./README.md", ["fs:read:*/*"], 403, "denied"),
    read("./README.md", READ_ALL, 200, check=content_is("readme")),
    write("./README.md", ["fs:write:*/*"], 403, "denied", check=file_is("README.md", "readme")),
    read("src//a.py", ["fs:read:src/*/a.py"], 403, "denied"),
    read("src//a.py", ["fs:read:src/*.py"], 200, check=content_is("print(1)\n")),
    write(
        "notes//a.md", ["fs:write:notes/*/a.md"], 403, "denied", check=file_is("notes/a.md", None)
    ),
    read("README.md/", ["fs:read:README.md/*"], 403, "denied"),
    write(
        "README.md/", ["fs:write:README.md/**"], 403, "denied", check=file_is("README.md", "readme")
    ),
    read("private/", ["fs:read:private/**"], 403, "denied"),
    read("private/", READ_ALL, 403, "denied"),
    read(".", READ_ALL, 403, "denied"),
    read("src/.", READ_ALL, 403, "denied"),
    listing(".", READ_ALL, 200, check=lists(["README.md", "src/a.py"])),
    listing(".", ["fs:read:src/**"], 403, "denied"),
    listing("src/.", ["fs:read:src/*"], 200, check=lists(["src/a.py"])),
    listing("./src//", ["fs:read:src/**"], 200, check=lists(["src/a.py"])),
    # --- listings: only names the grant covers, at any depth
    listing("src", ["fs:read:src/*"], 200, check=lists(["src/a.py"], ("src/deep/secret.py",))),
    listing("src", ["fs:read:src/**"], 200, check=lists(["src/a.py", "src/deep/secret.py"])),
    listing(
        "",
        ["fs:read:*", "fs:read:src/**"],
        200,
        check=lists(["README.md", "src/deep/secret.py"], ("private/key.txt", "public/ok.txt")),
    ),
    listing("", READ_ALL, 200, check=lists(["README.md", "private/key.txt", "src/deep/secret.py"])),
    # --- filesystem errors: a 4xx with the reason, never a dropped connection (a 503)
    write("README.md/x", ["fs:write:**"], 409, "tool_failed", check=file_is("README.md", "readme")),
    write("README.md/x/y", ["fs:write:**"], 409, "tool_failed"),
    write("src", ["fs:write:**"], 409, "tool_failed"),
    read("src", READ_ALL, 409, "tool_failed"),
    write("x" * 300, ["fs:write:**"], 400, "tool_failed"),
    # --- argv: a program name, never a shell string or a path
    run(
        ["echo", "hi; cat /etc/passwd"],
        ["shell:exec:echo"],
        200,
        check=stdout_is("hi; cat /etc/passwd\n"),
    ),
    run(["echo", "$HOME", "`id`"], ["shell:exec:echo"], 200, check=stdout_is("$HOME `id`\n")),
    run(["echo;id"], ["shell:exec:echo"], 403, "denied"),
    run(["echo $(id)"], ["shell:exec:echo"], 403, "denied"),
    run(["/bin/echo", "x"], ["shell:exec:echo"], 403, "denied"),
    run(["../bin/echo"], ["shell:exec:echo"], 403, "denied"),
    run(["sh", "-c", "echo hi"], ["shell:exec:echo"], 403, "denied"),
    run("echo hi", ["shell:exec:echo"], 422, "invalid"),
    run([], ["shell:exec:echo"], 422, "invalid"),
    run(["ls"], READ_ALL, 403, "denied"),
    run(["env"], ["shell:exec:env"], 200),
    # --- programs: argv[0] is all the kernel sees; Landlock confines what the program does
    run(
        ["git", "-c", "alias.x=!cat public/ok.txt private/key.txt", "x"],
        ["git-access", "fs:read:public/**"],
        200,
        check=output_has("ok", not_="secret"),
    ),
    run(
        ["python3", "-c", "print(open('private/key.txt').read())"],
        ["python-execution", "fs:read:**", "fs:write:public/**"],
        200,
        check=output_has("secret"),
    ),
    run(
        ["python3", "-c", "print(open('private/key.txt').read())"],
        ["python-execution", "fs:read:public/**"],
        200,
        check=output_has("PermissionError", not_="secret"),
    ),
    run(
        ["python3", "-c", "open('README.md', 'w').write('changed')"],
        ["python-execution", "fs:read:**", "fs:write:public/**"],
        200,
        check=lambda stack, answer: (
            output_has("PermissionError")(stack, answer),
            file_is("README.md", "readme")(stack, answer),
        ),
    ),
    run(
        ["python3", "-c", "open('public/new.txt', 'w').write('made')"],
        ["python-execution", "fs:write:public/**"],
        200,
        check=file_is("public/new.txt", "made"),
    ),
    run(
        ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 9), 5)"],
        ["python-execution", "net:http:*"],
        200,
        check=output_has("PermissionError"),
    ),
    run(
        ["cat", "/proc/self/environ", "/proc/1/environ"],
        ["shell:exec:cat", "fs:read:**"],
        200,
        check=output_has("Permission denied", not_="PATH="),
    ),
    run(["sh", "-c", "echo $HOME"], ["shell:exec:sh"], 200, check=output_has("toka-exec-")),
    run(["README.md"], ["shell:exec:README.md", "fs:read:**"], 404, "not_found"),
    # --- network: refused after DNS for private, loopback, link-local and metadata
    fetch("http://127.0.0.1:9/", NET_ALL, 403),
    fetch("http://localhost:9/", NET_ALL, 403),
    fetch("http://169.254.169.254/latest/meta-data/", NET_ALL, 403),
    fetch("http://10.1.2.3/", NET_ALL, 403),
    fetch("http://192.168.0.1/", NET_ALL, 403),
    fetch("http://[::1]/", NET_ALL, 403),
    fetch("http://[::ffff:127.0.0.1]/", NET_ALL, 403),
    fetch("http://0.0.0.0/", NET_ALL, 403),
    fetch("http://2130706433/", NET_ALL, 403),
    fetch("http://example.org/", ["net:http:api.example.com"], 403),
    fetch("http://evil-example.com/", ["net:http:*.example.com"], 403),
    fetch("file:///etc/passwd", NET_ALL, 403),
    # --- aliases, expanded by one table
    read("README.md", ["filesystem-read"], 200),
    write("x.md", ["filesystem-read"], 403, "denied"),
    write("reports/r.md", ["reporting"], 200),
    write("r.md", ["reporting"], 403, "denied"),
    run(["ls"], ["git-access"], 403, "denied"),
    run(["cp", "README.md", "c.md"], ["cargo-execution"], 403, "denied"),
    # --- the LLM: only with llm:complete
    Case("llm.complete without llm:complete", READ_ALL, "/v1/llm/complete", ASK, 403, "denied"),
    Case("llm.complete with llm:complete", ["llm:complete"], "/v1/llm/complete", ASK, 200),
    Case("openai chat without llm:complete", READ_ALL, "/openai/v1/chat/completions", CHAT, 403),
    Case("llm.complete via the alias", ["llm-access"], "/v1/llm/complete", ASK, 200),
    # --- spawning: the kernel records a request only with agent:spawn, and only if it parses
    Case("spawn without agent:spawn", ["llm:complete"], "/v1/messages", SPAWN, 403, "denied"),
    Case("spawn with agent:spawn", ["agent:spawn"], "/v1/messages", SPAWN, 202),
    Case(
        "spawn asking for a malformed capability",
        ["agent:spawn"],
        "/v1/messages",
        {**SPAWN, "capabilities": ["shell:exec:/bin/sh"]},
        422,
        "invalid",
    ),
    # --- progress is always allowed
    Case(
        "progress with no capabilities",
        [],
        "/v1/messages",
        {"type": "ReportProgress", "percent": 50},
        200,
    ),
]


def layout(ws: Path) -> None:
    (ws / "src").mkdir()
    (ws / "private").mkdir()
    (ws / "public").mkdir()
    (ws / "README.md").write_text("readme")
    (ws / "src" / "a.py").write_text("print(1)\n")
    (ws / "src" / "deep").mkdir()
    (ws / "src" / "deep" / "secret.py").write_text("deep")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("[core]")
    (ws / "private" / "key.txt").write_text("secret")
    (ws / "public" / "ok.txt").write_text("ok")
    os.symlink("../private", ws / "public" / "link")
    os.symlink("/etc", ws / "escape")
    os.symlink("/etc/passwd", ws / "passwd")
    os.symlink("src", ws / "inner")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_request_gets_exactly_what_its_grant_allows(case: Case, tmp_path: Path) -> None:
    recording = hello_recording(tmp_path)
    (tmp_path / "ws").mkdir()
    async with kernel_stack(tmp_path / "ws", case.caps, recording=recording) as stack:
        layout(stack.workspace)
        resp = await stack.http.post(case.path, json=case.body)
        answer = resp.json()
        assert resp.status_code == case.status, answer
        if case.reason is not None:
            got = answer.get("error")
            got = got.get("code") if isinstance(got, dict) else got
            assert got == case.reason, answer
        if case.status >= 400:
            message = answer.get("message") or (answer.get("error") or {}).get("message")
            assert message, "a refusal says why"
        if case.status == 403:
            assert stack.denials == 1
            assert stack.audit_records()[-1]["decision"] == "deny"
        else:
            assert stack.denials == 0
        if case.check is not None:
            case.check(stack, answer)


def test_the_table_has_the_cases_the_issue_asks_for() -> None:
    assert len(CASES) >= 100


async def test_an_audit_line_shows_the_path_as_sent_and_the_path_checked(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    async with kernel_stack(tmp_path / "ws", READ_ALL) as stack:
        layout(stack.workspace)
        resp = await stack.http.post("/v1/tools/fs.read", json={"path": "./src//a.py"})
        assert resp.status_code == 200, resp.json()
        assert resp.json()["path"] == "src/a.py"
        record = stack.audit_records()[-1]
        assert (record["target"], record["raw"]) == ("src/a.py", "./src//a.py")
