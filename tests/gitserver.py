"""A real git smart-HTTP server on loopback: `git http-backend` behind basic auth.

Repositories live under a directory of the test's own; a repository named in
`private` needs the user and password, the others are public for fetching.
Pushing always needs them (http-backend enables receive-pack only for an
authenticated REMOTE_USER). Every request is logged for the tests to read.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

USER, PASSWORD = "toka-bot", "s3cret-git-password-4711"


@dataclass
class GitServer:
    root: Path
    port: int
    private: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # method, path, authed

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def make_repo(self, name: str, files: dict[str, str], *, private: bool = False) -> str:
        """A bare repository with one commit of `files` on `main`; its commit id."""
        work = self.root / f"{name}.work"
        run("init", "-q", "-b", "main", str(work))
        for rel, text in files.items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        run("-C", str(work), "add", "-A")
        run("-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
        run("clone", "-q", "--bare", str(work), str(self.root / f"{name}.git"))
        if private:
            self.private.add(f"{name}.git")
        return self.rev(name, "main")

    def rev(self, name: str, ref: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(self.root / f"{name}.git"), "rev-parse", "--verify", "-q", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        return proc.stdout.strip()

    def refs(self, name: str) -> dict[str, str]:
        repo = str(self.root / f"{name}.git")
        out = run("-C", repo, "for-each-ref", "--format=%(refname) %(objectname)")
        return dict(tuple(line.split(" ", 1)) for line in out.splitlines())  # type: ignore[misc]


def run(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            repo = path.lstrip("/").split("/", 1)[0]
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            authed = self.headers.get("Authorization") == expected
            body = self._body() if self.command == "POST" else b""
            server.requests.append((self.command, self.path, authed))
            pushing = "git-receive-pack" in self.path
            if (repo in server.private or pushing) and not authed:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            env = {
                "PATH": "/usr/bin:/bin",
                "GIT_PROJECT_ROOT": str(server.root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                "REMOTE_USER": USER if authed else "",
                "REMOTE_ADDR": "127.0.0.1",
            }
            proc = subprocess.run(
                ["git", "http-backend"], input=body, capture_output=True, env=env, check=False
            )
            head, _, payload = proc.stdout.partition(b"\r\n\r\n")
            status = 200
            headers = []
            for line in head.decode(errors="replace").split("\r\n"):
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve
        do_POST = _serve

    return Handler


@contextmanager
def git_server(root: Path) -> Iterator[GitServer]:
    root.mkdir(parents=True, exist_ok=True)
    server = GitServer(root=root, port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
