"""`toka tools`: serve tool calls on a Unix socket, one JSON request per call.

It holds no token, key or grant: the kernel has checked the capability
before forwarding. The socket lives in a volume only the kernel and this
container mount.

The HTTP here is the least the kernel's client needs (a request line,
headers, a Content-Length body, keep-alive), on `socketserver` alone:
`http.server` would pull in `http.client`, `email` and `ssl` and cost this
sidecar a third more memory (docs/architecture.md, Measured targets: tools ≤ 15 MB).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import socketserver
import struct
import sys
import traceback
from collections.abc import Callable
from http import HTTPStatus  # the enum only: not http.client, email or ssl
from pathlib import Path
from typing import Any

from toka.contract import PROBE_FLAG, TOOLS_SOCKET, TOOLS_SOCKET_ENV, WORKSPACE, WORKSPACE_ENV
from toka.tools import sandbox
from toka.tools.ops import OPS, ToolError, Workspace, kill_running, os_error, prepare_workspace

MAX_BODY = 2_000_000
MAX_HEADER_LINES = 100


class _BadRequest(Exception):
    pass


class _Handler(socketserver.StreamRequestHandler):
    server: ToolServer

    def handle(self) -> None:
        # A program the agent runs here is confined by Landlock, but a Unix socket's path is
        # not a file it opens: it could still connect and ask for any tool, unchecked. Only
        # the kernel may; what this server started (or what they started) may not, and
        # is answered before a byte of its request is read. The kernel runs as another
        # user; programs run here cannot change theirs (no privileges, no_new_privs).
        pid, uid = peer_credentials(self.request)
        if not (uid != os.getuid() or trusted_peer(pid, os.getpid())):
            self._reply(403, {"error": "not for programs run by tools"}, close=True)
            return
        while True:
            try:
                request = self._read_request()
            except _BadRequest as err:
                self._reply(400, {"error": f"bad request: {err}"}, close=True)
                return
            if request is None:
                return
            method, path, body, keep_alive = request
            status, answer = self._dispatch(method, path, body)
            self._reply(status, answer, close=not keep_alive)
            if not keep_alive:
                return

    def _read_request(self) -> tuple[str, str, bytes | None, bool] | None:
        """(method, path, body or None when too large, keep-alive), or None at EOF."""
        line = self.rfile.readline(8192)
        if not line:
            return None
        try:
            method, path, version = line.decode("latin-1").split()
        except ValueError:
            raise _BadRequest("malformed request line") from None
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADER_LINES):
            raw = self.rfile.readline(8192)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        else:
            raise _BadRequest("too many headers")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest("chunked bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            raise _BadRequest("Content-Length is not a number") from None
        if length > MAX_BODY:
            return method, path, None, False  # read no more of it: answer, then close
        body = self.rfile.read(length) if length else b""
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "") != "close"
        return method, path, body, keep_alive

    def _dispatch(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        if method == "GET" and path == "/healthz":
            return 200, {"ok": True, "workspace": self.server.workspace_ops.state}
        name = path.lstrip("/")
        op = self.server.handlers.get(name) if method == "POST" else None
        if op is None:
            return 404, {"error": f"unknown tool {path.lstrip('/')!r}"}
        if body is None:
            return 413, {"error": "request too large"}
        try:
            args = json.loads(body or b"{}")
            if not isinstance(args, dict):
                raise ValueError("body is not an object")
            state = self.server.workspace_ops.state
            if name in OPS and state.get("state") != "Ready":
                return 409, {"error": f"the workspace is not ready: {state.get('message')}"}
            return 200, op(args)
        except ToolError as err:
            return err.status, {"error": str(err)}
        except ValueError as err:
            return 400, {"error": f"bad request: {err}"}
        except OSError as err:
            # An op that let one through: still the workspace's state, answered as such.
            failed = os_error(err, name)
            return failed.status, {"error": str(failed)}
        except Exception as err:
            # A bug in an op: answered, so the kernel can say so, and the connection kept.
            traceback.print_exc(file=sys.stderr)
            return 500, {"error": f"{name} failed: {type(err).__name__}: {str(err)[:300]}"}

    def _reply(self, status: int, body: dict[str, Any], *, close: bool) -> None:
        data = json.dumps(body).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        )
        self.wfile.write(head.encode("latin-1") + data)
        self.wfile.flush()


class ToolServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, workspace: Path, workspace_ops: Workspace):
        self.workspace = workspace
        self.workspace_ops = workspace_ops
        self.handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            name: functools.partial(op, workspace) for name, op in OPS.items()
        } | {
            # The kernel's own steps; the kernel never forwards an agent's call to these.
            "workspace.status": workspace_ops.status,
            "git.commit": workspace_ops.commit,
            "git.push": workspace_ops.push,
            "sandbox.status": sandbox_status,
        }
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, _Handler)
        # Only the kernel and this container mount the socket's volume.
        os.chmod(path, 0o666)  # noqa: S103


def sandbox_status(_: dict[str, Any]) -> dict[str, Any]:
    abi = sandbox.abi_version()
    return {"landlock": abi, "guarantees": sandbox.guarantees(abi)}


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process that connected, as at connect time."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def read_stat(pid: int, proc: Path = Path("/proc")) -> tuple[str, int] | None:
    """(state, parent pid) from /proc/<pid>/stat, or None when it is gone or unreadable."""
    try:
        fields = (proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def trusted_peer(pid: int, me: int, proc: Path = Path("/proc")) -> bool:
    """Whether the process that connected is not one this server started, nor one they
    started: in another PID namespace (0: the kernel's container), this process itself
    (the kernel in tests), or one whose ancestry is known and does not pass through
    `me` — it reaches init, or a parent outside this PID namespace (a probe or `kubectl
    exec`, whose parent reads 0).

    Fails closed. A peer gone before it is looked at (it connected, handed the socket on
    and exited) is untrusted, and so is any process on the way up that is exiting. One
    read is not enough for that: a process reaped while its stat is read can read as
    running with parent 0, as if it were the top. So every link is read again once the
    walk has decided, and the answer stands only if all are still there, unchanged."""
    if pid in (0, me):
        return True
    chain: list[tuple[int, tuple[str, int]]] = []
    for _ in range(4096):
        stat = read_stat(pid, proc)
        if stat is None or stat[0] in ("Z", "X", "x"):
            return False
        chain.append((pid, stat))
        parent = stat[1]
        if parent == me:
            return False
        if parent in (0, 1):
            return all(read_stat(p, proc) == seen for p, seen in chain)
        pid = parent
    return False


def probe(path: str) -> int:
    """Exit 0 when the server answers its health check (the startup probe)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(path)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: tools\r\nConnection: close\r\n\r\n")
            status_line = sock.makefile("rb").readline()
        return 0 if status_line.split()[1:2] == [b"200"] else 1
    except (OSError, IndexError):
        return 1


class _Stopped(BaseException):
    """SIGTERM or SIGINT: stop serving, wherever the main thread is."""


def _stop(signum: int, _frame: object) -> None:
    # Once: a second signal must not interrupt the way out.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped(signum)


def main(argv: list[str]) -> int:
    path = os.environ.get(TOOLS_SOCKET_ENV, TOOLS_SOCKET)
    if PROBE_FLAG in argv:
        return probe(path)
    # PID 1 in its container ignores a signal it has no handler for: without these the
    # pod would wait out its whole grace period, and end with a SIGKILL.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    workspace = Path(os.environ.get(WORKSPACE_ENV, WORKSPACE))
    try:
        # Orphans of the programs it runs become its children: `trusted_peer` sees them
        # all, and each call's leftovers are killed.
        sandbox.become_subreaper()
        state = prepare_workspace(workspace, os.environ)
        if state["state"] == "Ready":
            print(
                f"toka tools: workspace ready ({_describe(state)}); serving on {path}", flush=True
            )
        else:
            # Served anyway: the kernel reads the reason and reports it on the Agent.
            print(f"toka tools: workspace failed: {state['message']}", file=sys.stderr, flush=True)
        with ToolServer(path, workspace, Workspace(workspace, state, os.environ)) as server:
            server.serve_forever()
    except _Stopped as stopped:
        print(f"toka tools: stopping ({signal.Signals(stopped.args[0]).name})", flush=True)
    finally:
        kill_running()
    return 0


def _describe(state: dict[str, Any]) -> str:
    if not state.get("git"):
        return str(state.get("message"))
    merged = ", ".join(state.get("merged") or []) or "nothing"
    how = "resumed at" if state.get("resumed") else f"merged {merged} into"
    return f"base {str(state['base'])[:12]}, {how} {str(state['start'])[:12]}"
