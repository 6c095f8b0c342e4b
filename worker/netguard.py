"""Refuse URLs that point into private networks (SSRF), unless explicitly allowed (sandbox, tests).

Two entry points with the same rules: `check_url` resolves with a blocking `socket.getaddrinfo`
(for sync callers: the producer), `check_url_async` through the running loop's `getaddrinfo`
(the default executor on asyncio, libuv's thread pool on uvloop), so a slow DNS answer never
stalls the other jobs on a worker's shared event loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

BLOCKED_HOSTS = {"metadata.google.internal", "metadata"}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class UnsafeURL(ValueError):
    pass


def _target(url: str, *, allow_private: bool) -> tuple[str, int] | None:
    """The (host, port) to resolve, None when nothing needs resolving; raises for the refusals
    that need no DNS (scheme, plain http, blocked host names)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed")
    if allow_private:
        return None
    if parts.scheme != "https":
        raise UnsafeURL("only https:// URLs are fetched")
    host = parts.hostname or ""
    if host.lower() in BLOCKED_HOSTS:
        raise UnsafeURL(f"host {host!r} is blocked")
    return host, parts.port or 443


def _refuse_non_public(host: str, infos: Sequence[tuple[Any, ...]]) -> None:
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip in _CGNAT:
            raise UnsafeURL(f"{host!r} resolves to a non-public address")


def check_url(url: str, *, allow_private: bool) -> None:
    """Blocking: for sync code only. Inside a running event loop use `check_url_async`."""
    target = _target(url, allow_private=allow_private)
    if target is None:
        return
    host, port = target
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise UnsafeURL(f"cannot resolve {host!r}") from None
    _refuse_non_public(host, infos)


async def check_url_async(url: str, *, allow_private: bool) -> None:
    """`check_url` for async code: the name is resolved off the event loop's thread."""
    target = _target(url, allow_private=allow_private)
    if target is None:
        return
    host, port = target
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise UnsafeURL(f"cannot resolve {host!r}") from None
    _refuse_non_public(host, infos)
