"""The real node's own network namespace, and the one door into it from the host.

Traffic stays on this machine: every address the node, its Services and its
pods use outside 127.0.0.0/8 lives inside a network namespace this module
creates (the node's: lo carrying the node address, and the CNI bridge) or
one CNI creates inside it (each pod's). Neither has a route off the
machine: the namespace is born with only `lo`, nothing here adds an
interface that leads out, and CNI gives pods routes only to the cluster's
own ranges. Deleting the namespace deletes every address with it.

The host reaches the API server, which listens inside, through a forwarder
that holds one socket in each world: it binds 127.0.0.1:PORT on the host,
then enters the namespace, where every connection it makes lands on the
API server's port there (6443, as on most clusters).

Stdlib only: the forwarder starts in every dev cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
MAX_CONNECTIONS = 400
# Loaded once here: `enter` also runs in a forked child before exec (preexec_fn), where
# loading a library could deadlock on a lock another thread of the parent held.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def enter(name: str) -> None:
    """Move the calling thread (the whole process, if it has one thread) into `name`."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")


def create(name: str, node_ip: str) -> None:
    """A namespace with only `lo`, up, carrying 127.0.0.1 and the node's address."""
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "addr", "add", f"{node_ip}/32", "dev", "lo")
        # Scoped to this namespace: routing between the bridge's pods and Services.
        _ip("netns", "exec", name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    except OSError:
        delete(name)
        raise


def delete(name: str) -> None:
    if netns_path(name).exists():
        _ip("netns", "delete", name)


def interfaces(name: str) -> list[str]:
    """The namespace's interface names (for tests of what leads out)."""
    out = subprocess.run(
        ["ip", "-n", name, "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


# --- the forwarder: `python -m toka.devcluster.netns forward NAME HOST_PORT INNER_PORT` ---


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction; at its end only that direction is closed (the answer to a request
    whose sender has finished sending still comes back)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def _serve(listener: socket.socket, inner_port: int) -> None:
    # Bounded: idle clients cannot use up the file descriptors.
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with slots:
            try:
                inner_reader, inner_writer = await asyncio.open_connection("127.0.0.1", inner_port)
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(_pipe(reader, inner_writer), _pipe(inner_reader, writer))
            finally:
                for w in (writer, inner_writer):
                    with contextlib.suppress(OSError, RuntimeError):
                        w.close()

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def forward(name: str, port: int, inner_port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(512)
    enter(name)  # from here on every socket made is inside the node's namespace
    asyncio.run(_serve(listener, inner_port))


if __name__ == "__main__":
    if sys.argv[1:2] == ["forward"] and len(sys.argv) == 5:
        forward(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: python -m toka.devcluster.netns forward NAME HOST_PORT INNER_PORT")
