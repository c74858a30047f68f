"""The tools sidecar's small HTTP over a Unix socket: what the kernel and the probe rely on.

A failed call is always answered (a filesystem error as a 4xx with its reason), and a
path is opened in the one spelling the kernel checked its grant on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from toka.paths import PathError, canonical_path
from toka.tools.ops import AS_IS, ToolError, Workspace, confine
from toka.tools.server import MAX_BODY, ToolServer, probe, trusted_peer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ToolServer]:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text("A")
    path = str(tmp_path / "tools.sock")
    server = ToolServer(path, tmp_path / "ws", Workspace(tmp_path / "ws", dict(AS_IS), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sock(server: ToolServer) -> str:
    return str(server.server_address)


def exchange(path: str, raw: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def post(path: str, body: bytes, *, close: bool = False) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: tools\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode() + body


def test_two_calls_on_one_connection_are_both_answered(sock: str) -> None:
    raw = post("/fs.read", b'{"path": "a.txt"}') + post("/fs.list", b"{}", close=True)
    answer = exchange(sock, raw)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b'"content": "A"' in answer
    assert b'"entries": ["a.txt"]' in answer


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (post("/fs.read", b"[1, 2]", close=True), b"400"),
        (post("/fs.read", b"{not json", close=True), b"400"),
        (post("/no.such", b"{}", close=True), b"404"),
        (post("/fs.read", b'{"path": "../x"}', close=True), b"400"),
        (
            b"POST /fs.write HTTP/1.1\r\nContent-Length: "
            + str(MAX_BODY + 1).encode()
            + b"\r\n\r\n",
            b"413",
        ),
        (b"POST /fs.read HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"400"),
    ],
    ids=[
        "request line",
        "not an object",
        "not JSON",
        "unknown tool",
        "traversal",
        "too large",
        "chunked",
    ],
)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(
    sock: str, raw: bytes, status: bytes
) -> None:
    answer = exchange(sock, raw)
    assert answer.split(b" ")[1] == status
    assert probe(sock) == 0


def test_the_probe_fails_when_nothing_listens(tmp_path: Path) -> None:
    assert probe(str(tmp_path / "absent.sock")) == 1


def call(sock: str, tool: str, args: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    answer = exchange(sock, post(f"/{tool}", json.dumps(args).encode(), close=True))
    assert answer, "the server dropped the connection instead of answering"
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


LONG = "x" * 300
FS_ERRORS = [
    # (tool, path, status, what the reason says)
    ("fs.write", "a.txt/b", 409, "a file, not a directory"),
    ("fs.write", "a.txt/b/c", 409, "a file, not a directory"),
    ("fs.write", "dir", 409, "is a directory"),
    ("fs.write", f"dir/{LONG}", 400, "too long"),
    ("fs.write", f"{LONG}/x", 400, "too long"),
    ("fs.write", "fifo", 409, "not a regular file"),
    ("fs.read", "a.txt/b", 409, "a file, not a directory"),
    ("fs.read", "dir", 409, "is a directory"),
    ("fs.read", LONG, 400, "too long"),
    ("fs.read", "fifo", 409, "not a regular file"),
    ("fs.read", "absent", 404, "no such file"),
    ("fs.list", LONG, 400, "too long"),
    ("fs.list", "a.txt", 404, "not a directory"),
]


@pytest.mark.parametrize(
    ("tool", "path", "status", "reason"),
    FS_ERRORS,
    ids=[f"{t} {p.replace(LONG, 'LONG')}" for t, p, _, _ in FS_ERRORS],
)
def test_a_filesystem_error_is_a_4xx_with_its_reason_never_a_dropped_connection(
    sock: str, tmp_path: Path, tool: str, path: str, status: int, reason: str
) -> None:
    ws = tmp_path / "ws"
    (ws / "dir").mkdir()
    os.mkfifo(ws / "fifo")
    args = {"path": path, "content": "x"} if tool == "fs.write" else {"path": path}
    got, answer = call(sock, tool, args)
    assert got == status, answer
    assert reason in answer["error"]
    assert (ws / "a.txt").read_text() == "A"
    assert probe(sock) == 0


def test_an_unexpected_failure_in_an_op_is_a_500_naming_it_and_the_server_keeps_serving(
    server: ToolServer, sock: str
) -> None:
    def boom(_: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("the disk caught fire")

    server.handlers["boom"] = boom
    status, answer = call(sock, "boom", {})
    assert status == 500
    assert "RuntimeError" in answer["error"]
    assert probe(sock) == 0


# Paths as an agent may spell them: leading `/`, `.`, empty and `..` segments, NUL, trailing `/`.
raw_paths = st.builds(
    lambda lead, segs, trail: lead + "/".join(segs) + trail,
    st.sampled_from(["", "/", "./"]),
    st.lists(st.sampled_from(["a", "b", ".a", ".", "", "..", "a\x00"]), max_size=5),
    st.sampled_from(["", "/", "/."]),
)


def test_the_tools_sidecar_opens_exactly_the_path_the_kernel_checks(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    ws = tmp_path_factory.mktemp("ws")

    @given(raw=raw_paths, directory=st.booleans())
    def check(raw: str, directory: bool) -> None:
        try:
            checked = canonical_path(raw, directory=directory)
        except PathError:
            with pytest.raises(ToolError):
                confine(ws, raw, directory=directory)
            return
        assert confine(ws, raw, directory=directory) == ws.resolve().joinpath(*checked.split("/"))

    check()


ME = 500
# pid: (state, parent) as /proc/<pid>/stat reports them.
PROCESSES = {
    1: ("S", 0),
    400: ("S", 1),  # the kernel's process, beside this server
    ME: ("S", 400),
    600: ("S", ME),  # a program this server started
    601: ("S", 600),  # and its child
    602: ("Z", 600),  # a child that connected, exited and was not reaped
    603: ("X", 0),  # a child being reaped: parent already reads 0
    700: ("S", 603),  # the child of a parent that is exiting
    800: ("S", 0),  # a probe or `kubectl exec`: its parent is outside the PID namespace
    801: ("S", 800),
}


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        (0, True),  # in another PID namespace: the kernel's container
        (ME, True),  # this process: the kernel in tests
        (400, True),  # beside this server, its ancestry reaches init
        (1, True),
        (600, False),
        (601, False),
        (602, False),
        (603, False),
        (700, False),
        (800, True),
        (801, True),
        (999, False),  # gone before it is looked at
    ],
)
def test_the_tools_server_trusts_no_program_it_started_nor_one_it_cannot_place(
    tmp_path: Path, peer: int, trusted: bool
) -> None:
    for pid, (state, parent) in PROCESSES.items():
        (tmp_path / str(pid)).mkdir()
        stat = f"{pid} (python3 (x)) {state} {parent} {pid} {pid} 0 -1 4194560 0 0"
        (tmp_path / str(pid) / "stat").write_text(stat)
    assert trusted_peer(peer, ME, proc=tmp_path) is trusted


def test_a_peer_reaped_while_its_stat_is_read_is_untrusted_though_one_read_looked_like_the_top(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kernel reads a task's state before its parent: one read of a child reaped in
    between says "running, parent 0". Reading it again shows it gone."""
    from toka.tools import server as server_module

    reads: list[int] = []

    def read_stat(pid: int, proc: Path = Path("/proc")) -> tuple[str, int] | None:
        reads.append(pid)
        return ("R", 0) if reads.count(pid) == 1 else None

    monkeypatch.setattr(server_module, "read_stat", read_stat)
    assert trusted_peer(900, ME) is False
    assert reads == [900, 900]
