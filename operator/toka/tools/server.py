"""`toka tools`: serve tool calls on a Unix socket, one request per call.

It holds no token, key or grant: the kernel has checked the capability
before forwarding. The socket lives in a volume only the kernel and this
container mount.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from toka.tools.ops import OPS, ToolError, seed

MAX_BODY = 2_000_000


class _Handler(BaseHTTPRequestHandler):
    server: ToolServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"ok": True, "seed": self.server.seed_message})
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        op = OPS.get(self.path.lstrip("/"))
        length = int(self.headers.get("Content-Length") or 0)
        if op is None:
            self._reply(404, {"error": f"unknown tool {self.path.lstrip('/')!r}"})
            return
        if length > MAX_BODY:
            self._reply(413, {"error": "request too large"})
            return
        try:
            args = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(args, dict):
                raise ValueError("body is not an object")
            self._reply(200, op(self.server.workspace, args))
        except ToolError as err:
            self._reply(err.status, {"error": str(err)})
        except ValueError as err:
            self._reply(400, {"error": f"bad request: {err}"})


class ToolServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, workspace: Path, seed_message: str):
        self.workspace = workspace
        self.seed_message = seed_message
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, _Handler)
        # Only the kernel and this container mount the socket's volume.
        os.chmod(path, 0o666)  # noqa: S103


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 2):
        super().__init__("tools", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def probe(path: str) -> int:
    """Exit 0 when the server answers (the startup probe)."""
    try:
        conn = _UnixConnection(path)
        conn.request("GET", "/healthz")
        return 0 if conn.getresponse().status == 200 else 1
    except OSError:
        return 1


def main(argv: list[str]) -> int:
    path = os.environ.get("TOKA_TOOLS_SOCKET", "/run/toka/tools.sock")
    if "--probe" in argv:
        return probe(path)
    workspace = Path(os.environ.get("TOKA_WORKSPACE", "/workspace"))
    try:
        message = seed(
            workspace,
            os.environ.get("TOKA_WORKSPACE_SEED_DIR"),
            os.environ.get("TOKA_WORKSPACE_GIT_URL"),
            os.environ.get("TOKA_WORKSPACE_GIT_REF"),
        )
    except (ToolError, OSError) as err:
        print(f"toka tools: cannot seed the workspace: {err}", file=sys.stderr, flush=True)
        return 1
    print(f"toka tools: {message}; serving on {path}", flush=True)
    with ToolServer(path, workspace, message) as server:
        server.serve_forever()
    return 0
