"""`toka tools` and `toka agent` end on SIGTERM by their own handler.

In its container each is PID 1, which ignores a signal it has no handler for:
without one, every pod would wait out its grace period and end in SIGKILL. Here
they are ordinary processes, which the default action would kill (exit -15):
only an exit status the handler chose shows that the handler ran.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from toka.agent.executor import TERMINATED
from toka.tools.server import probe

EXITS_WITHIN = 10.0


def toka(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "toka.cli", command],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_until(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"it exited {proc.returncode} before {what}: {output(proc)}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {what} within 60 s: {output(proc)}")
        time.sleep(0.1)


def output(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.stdout.read().decode(errors="replace")


@pytest.fixture
def tools(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    sock = str(tmp_path / "tools.sock")
    proc = toka("tools", {"TOKA_TOOLS_SOCKET": sock, "TOKA_WORKSPACE": str(tmp_path / "ws")})
    try:
        wait_until("an answering probe", lambda: probe(sock) == 0, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def terminated(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(EXITS_WITHIN)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {EXITS_WITHIN} s after SIGTERM") from None


def test_the_tools_server_exits_0_on_sigterm(
    tools: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, sock = tools
    code = terminated(proc)
    said = output(proc)
    assert code == 0, said
    assert "stopping (SIGTERM)" in said
    assert probe(sock) == 1


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_sigterm_ends_the_programs_of_tool_calls_still_running(
    tools: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, sock = tools
    body = json.dumps({"argv": ["sleep", "3600"], "confine": {"mode": "BestEffort"}}).encode()

    def call() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(EXITS_WITHIN * 2)
            s.connect(sock)
            s.sendall(
                b"POST /shell.exec HTTP/1.1\r\nHost: tools\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            while s.recv(65536):
                pass

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    wait_until("a running tool call", lambda: bool(children(proc.pid)), proc)
    (program,) = children(proc.pid)
    assert terminated(proc) == 0, output(proc)
    deadline = time.monotonic() + EXITS_WITHIN
    while alive(program) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(program), "the tool call's program outlived the tools server"


class Kernel(http.server.BaseHTTPRequestHandler):
    """A kernel that is never ready: the agent waits for it, asking."""

    asked = threading.Event()

    def do_GET(self) -> None:
        Kernel.asked.set()
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_agent_exits_on_sigterm_with_the_status_of_a_terminated_run() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Kernel)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Kernel.asked.clear()
    try:
        proc = toka("agent", {"TOKA_KERNEL_ADDR": f"127.0.0.1:{server.server_address[1]}"})
        try:
            # It asks once its handler is in place: the signal cannot come before it.
            wait_until("a readiness question", Kernel.asked.is_set, proc)
            code = terminated(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        said = output(proc)
        assert code == TERMINATED == 143, said
        assert "terminated (SIGTERM)" in said
    finally:
        server.shutdown()
        server.server_close()
