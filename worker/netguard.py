"""Refuse URLs that point into private networks (SSRF), unless explicitly allowed (sandbox, tests)."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

BLOCKED_HOSTS = {"metadata.google.internal", "metadata"}


class UnsafeURL(ValueError):
    pass


def check_url(url: str, *, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed")
    if allow_private:
        return
    if parts.scheme != "https":
        raise UnsafeURL("only https:// URLs are fetched")
    host = parts.hostname or ""
    if host.lower() in BLOCKED_HOSTS:
        raise UnsafeURL(f"host {host!r} is blocked")
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
    except OSError:
        raise UnsafeURL(f"cannot resolve {host!r}") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip in ipaddress.ip_network("100.64.0.0/10"):
            raise UnsafeURL(f"{host!r} resolves to a non-public address")
