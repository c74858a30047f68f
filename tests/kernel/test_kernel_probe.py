"""`toka kernel --probe`, the kernel's startup probe, run as its container runs it."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from tests.kernel.stack import kernel_stack


async def toka_kernel_probe(addr: str) -> int:
    """The exit status of `toka kernel --probe` with TOKA_KERNEL_ADDR=addr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "toka.cli",
        "kernel",
        "--probe",
        env={**os.environ, "TOKA_KERNEL_ADDR": addr},
    )
    return await asyncio.wait_for(proc.wait(), 30)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_kernel_probe_passes_against_a_running_kernel(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, []) as stack:
        addr = f"{stack.http.base_url.host}:{stack.http.base_url.port}"
        assert await toka_kernel_probe(addr) == 0


async def test_the_kernel_probe_fails_while_the_kernel_is_not_ready(tmp_path: Path) -> None:
    async with kernel_stack(tmp_path, []) as stack:
        stack.kernel.ready = False
        addr = f"{stack.http.base_url.host}:{stack.http.base_url.port}"
        assert await toka_kernel_probe(addr) == 1


async def test_the_kernel_probe_fails_when_nothing_listens() -> None:
    assert await toka_kernel_probe(f"127.0.0.1:{unused_port()}") == 1
