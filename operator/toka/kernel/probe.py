"""`toka kernel --probe`: the kernel's startup probe, run inside its container.

An exec probe, not `httpGet`: the kubelet sends HTTP probes to the pod IP, and the
kernel listens on loopback only (the agent reaches it there; other pods must not).
It runs every second while the kernel starts, so it imports the standard library's
`socket` alone, not the kernel's modules.
"""

from __future__ import annotations

import os
import socket

from toka.contract import DEFAULT_KERNEL_ADDR as DEFAULT_ADDR
from toka.contract import KERNEL_ADDR_ENV as ADDR_ENV
from toka.contract import KERNEL_HOST, KERNEL_READY_PATH

TIMEOUT_SECONDS = 2.0


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or KERNEL_HOST, int(port)


def probe(addr: str | None = None, timeout: float = TIMEOUT_SECONDS) -> int:
    """Exit 0 when the kernel at `addr` ($TOKA_KERNEL_ADDR) answers /readyz with 200."""
    try:
        host, port = split_addr(addr or os.environ.get(ADDR_ENV) or DEFAULT_ADDR)
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            request = (
                f"GET {KERNEL_READY_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Connection: close\r\n\r\n"
            )
            sock.sendall(request.encode())
            status_line = sock.makefile("rb").readline(8192)
        return 0 if status_line.split()[1:2] == [b"200"] else 1
    except (OSError, IndexError, ValueError):
        return 1
