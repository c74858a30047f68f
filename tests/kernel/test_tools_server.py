"""The tools sidecar's small HTTP over a Unix socket: what the kernel and the probe rely on."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from toka.tools.ops import AS_IS, Workspace
from toka.tools.server import MAX_BODY, ToolServer, probe


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "a.txt").write_text("A")
    path = str(tmp_path / "tools.sock")
    server = ToolServer(path, tmp_path / "ws", Workspace(tmp_path / "ws", dict(AS_IS), {}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()


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
