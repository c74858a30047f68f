"""`http.fetch`: HTTP for the agent, never to private, loopback, link-local or metadata addresses.

The host is resolved first; if any address it resolves to is refused, the
request is refused. The connection then uses exactly the vetted addresses
(aiohttp with a pinned resolver), so a second DNS answer cannot swap in
127.0.0.1. Redirects are followed by hand, each hop checked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

JSON = dict[str, Any]
Resolve = Callable[[str, int], Awaitable[list[str]]]
MAX_BODY = 1_000_000
MAX_REDIRECTS = 3
METADATA = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "fd00:ec2::254", "192.0.0.192")
}


class FetchRefused(Exception):
    pass


def refusal(address: str) -> str | None:
    """Why an address is not reachable for agents, or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or ip.is_multicast:
        return "a private or reserved address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"):
        return "a shared (carrier-grade NAT) address"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


async def vet(host: str, port: int, resolve: Resolve) -> list[str]:
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            addresses = await resolve(host, port)
        except OSError as err:
            raise FetchRefused(f"cannot resolve {host}: {err}") from None
    for address in addresses:
        why = refusal(address)
        if why:
            raise FetchRefused(f"{host} resolves to {address}, {why}; agents may not reach it")
    if not addresses:
        raise FetchRefused(f"{host} resolves to no address")
    return addresses


class _Pinned(AbstractResolver):
    def __init__(self, host: str, addresses: list[str]):
        self.host = host
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_UNSPEC
    ) -> list[ResolveResult]:
        if host != self.host:
            raise OSError(f"unexpected host {host}")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        return None


async def fetch(
    url: str,
    *,
    method: str = "GET",
    body: str | None = None,
    timeout: float = 20.0,
    resolve: Resolve = system_resolve,
    allow_host: Callable[[str], bool] | None = None,
) -> JSON:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused(f"only http(s) URLs with a host can be fetched: {url!r}")
        host = parts.hostname.lower()
        if allow_host is not None and not allow_host(host):
            raise FetchRefused(f"redirect to {host}, which no capability allows")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await vet(host, port, resolve)
        connector = aiohttp.TCPConnector(resolver=_Pinned(host, addresses), use_dns_cache=False)
        async with (
            aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), trust_env=False
            ) as session,
            session.request(method, url, data=body, allow_redirects=False) as resp,
        ):
            if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                url = urljoin(url, resp.headers["location"])
                if resp.status == 303:
                    method, body = "GET", None
                continue
            data = await resp.content.read(MAX_BODY + 1)
            return {
                "status": resp.status,
                "url": url,
                "content_type": resp.headers.get("content-type", ""),
                "body": data[:MAX_BODY].decode(errors="replace"),
                "truncated": len(data) > MAX_BODY,
            }
    raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")
