"""A real Jaeger v2 on loopback: an OTLP/HTTP receiver, in-memory storage, the query API.

Built from its Go module into the cache (`ensure_jaeger`). Every listener is
bound to 127.0.0.1 on a free port, and Jaeger's own telemetry (metrics
endpoint, self-tracing) is off, so nothing listens beyond the loopback.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toka.devcluster.binaries import ensure_jaeger
from toka.devcluster.controlplane import die_with_parent, free_port

JSON = dict[str, Any]

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


@dataclass
class Jaeger:
    otlp_port: int
    query_port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT is set to for exporting here."""
        return f"http://127.0.0.1:{self.otlp_port}"

    def env(self) -> dict[str, str]:
        """The environment that turns tracing on toward this Jaeger, batches sent quickly."""
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.query_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)

    def trace(self, trace_id: str) -> JSON | None:
        """The trace as the query API's /api/traces/<id> shows it, or None if unknown."""
        try:
            data = self._get(f"/api/traces/{trace_id}")["data"]
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise
        return data[0] if data else None

    def services(self) -> list[str]:
        return list(self._get("/api/services")["data"] or [])


def spans(trace: JSON) -> list[JSON]:
    """The spans of a trace, each with its tags as a dict and its service's name."""
    processes = trace["processes"]
    out = []
    for span in trace["spans"]:
        tags = {t["key"]: t["value"] for t in span.get("tags", [])}
        parent = next(
            (r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"), None
        )
        out.append(
            {
                "name": span["operationName"],
                "id": span["spanID"],
                "parent": parent,
                "service": processes[span["processID"]]["serviceName"],
                "tags": tags,
                "logs": [
                    {f["key"]: f["value"] for f in log.get("fields", [])}
                    for log in span.get("logs", [])
                ],
            }
        )
    return out


@contextmanager
def running_jaeger(work: Path, timeout: float = 30) -> Iterator[Jaeger]:
    """Jaeger all-in-one with in-memory storage, ready to receive and answer queries."""
    binary = ensure_jaeger()
    otlp, query, query_grpc = free_port(), free_port(), free_port()
    config = work / "jaeger.yaml"
    config.write_text(CONFIG.format(otlp=otlp, query=query, query_grpc=query_grpc))
    log = work / "jaeger.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(binary), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    jaeger = Jaeger(otlp, query, log, proc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jaeger exited: {log.read_text()[-2000:]}")
            try:
                jaeger.services()
                with socket.create_connection(("127.0.0.1", otlp), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jaeger not ready: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield jaeger
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
