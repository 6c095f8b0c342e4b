"""Refuse URLs that point into private networks (SSRF), and connect only to the address that was checked.

A URL fetched on a user's or a provider's word (an input at enqueue, a provider's output URL in the
worker) is resolved once, here; every address it resolves to must be public (`address_problem`), and
the caller then connects to that address (`Target.connect_url`), sending the original host name as
`Host` and as the TLS server name. Resolving again at connect time would let a name that answered
with a public address for the check answer 127.0.0.1 for the fetch (DNS rebinding).

Private endpoints that must be reachable (the sandbox, a local S3 server) are named exactly, as
`host:port` pairs, in `EDITQ_ALLOWED_PRIVATE_HOSTS`: a URL whose host and port are listed, or whose
every address (with its port) is listed, is fetched (http:// too); nothing else private is.

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
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

BLOCKED_HOSTS = {"metadata.google.internal", "metadata"}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[str, int]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_V4_COMPATIBLE = ipaddress.ip_network("::/96")  # ::a.b.c.d (deprecated IPv4-compatible)
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # ::ffff:0:a.b.c.d (SIIT)


class UnsafeURL(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    """A URL that passed the check. `ip` is the checked address to connect to; None when the URL's
    own host:port is allow-listed (it is connected to by name, like any configured endpoint)."""

    url: str
    host: str
    port: int
    ip: str | None

    @property
    def pinned(self) -> bool:
        return self.ip is not None

    @property
    def connect_url(self) -> str:
        """The URL with its host replaced by the checked address (port always explicit)."""
        if self.ip is None:
            return self.url
        parts = urlsplit(self.url)
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{host}:{self.port}" if userinfo else f"{host}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))

    @property
    def host_header(self) -> str:
        """What `Host` must say: the URL's host (and port, when not the scheme's default)."""
        parts = urlsplit(self.url)
        return parts.netloc.rpartition("@")[2]

    @property
    def server_hostname(self) -> str | None:
        """The TLS server name (SNI, certificate check) for an https URL."""
        return self.host if urlsplit(self.url).scheme == "https" else None

    def pin_headers(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        """`headers` plus the `Host` of the original URL when the connection is pinned."""
        out = dict(headers or {})
        if self.ip is not None:
            out["Host"] = self.host_header
        return out


def allow_list(spec: str | Sequence[str] | None) -> frozenset[Endpoint]:
    """`127.0.0.1:9000,sandbox:8900,[::1]:5000` -> {(host, port)}. Every entry needs its port."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: set[Endpoint] = set()
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            parts = urlsplit(f"//{item}")
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path or parts.query:
            raise ValueError(f"allowed private host {item!r} must be host:port (e.g. 127.0.0.1:9000)")
        out.add((_normal(parts.hostname), port))
    return frozenset(out)


def _normal(host: str) -> str:
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, translated, compatible, NAT64, 6to4, Teredo)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _V4_TRANSLATED or any(ip in net for net in _NAT64):
        return low32
    if ip in _V4_COMPATIBLE and int(ip) > 1:  # not :: and ::1, which are their own (non-public) kinds
        return low32
    return None


def address_problem(ip: Address) -> str | None:
    """Why an address may not be fetched from, or None when it is public."""
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return "a site-local address"
        inner = embedded_ipv4(ip)
        if inner is not None:
            problem = address_problem(inner)
            return f"an IPv6 form of {inner} ({problem})" if problem else None
    if not ip.is_global or ip in _CGNAT:
        return "a non-public address"
    return None


def _parse(url: str) -> tuple[SplitResult, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL: {str(exc).lower()}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed")
    host = parts.hostname or ""
    if not host:
        raise UnsafeURL("not a valid URL: no host")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url):
        raise UnsafeURL("not a valid URL: it contains a control character or a space")
    return parts, _normal(host), port or (443 if parts.scheme == "https" else 80)


def _precheck(url: str, allowed: AbstractSet[Endpoint]) -> tuple[SplitResult, str, int, bool]:
    """Refusals that need no DNS. Returns (parts, host, port, listed by name)."""
    parts, host, port = _parse(url)
    if host in BLOCKED_HOSTS:
        raise UnsafeURL(f"host {host!r} is blocked")
    return parts, host, port, (host, port) in allowed


def _decide(url: str, parts: SplitResult, host: str, port: int, infos: Sequence[tuple[Any, ...]],
            allowed: AbstractSet[Endpoint]) -> Target:
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UnsafeURL(f"cannot resolve {host!r}")
    if all((str(ip), port) in allowed for ip in addresses):  # an allow-listed endpoint, reached by another name
        return Target(url, host, port, str(addresses[0]))
    if parts.scheme != "https":
        raise UnsafeURL("only https:// URLs are fetched")
    for ip in addresses:
        problem = address_problem(ip)
        if problem:
            raise UnsafeURL(f"{host!r} resolves to {problem}")
    return Target(url, host, port, str(addresses[0]))


def _literal(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """An IP address written in the URL needs no resolver: the getaddrinfo answer it would give."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
             (str(ip), port))]


def check_url(url: str, *, allowed: AbstractSet[Endpoint] = frozenset()) -> Target:
    """Blocking: for sync code only. Inside a running event loop use `check_url_async`."""
    parts, host, port, listed = _precheck(url, allowed)
    if listed:
        return Target(url, host, port, None)
    try:
        infos = _literal(host, port) or socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise UnsafeURL(f"cannot resolve {host!r}") from None
    return _decide(url, parts, host, port, infos, allowed)


async def check_url_async(url: str, *, allowed: AbstractSet[Endpoint] = frozenset()) -> Target:
    """`check_url` for async code: the name is resolved off the event loop's thread."""
    parts, host, port, listed = _precheck(url, allowed)
    if listed:
        return Target(url, host, port, None)
    try:
        infos = _literal(host, port) or await asyncio.get_running_loop().getaddrinfo(
            host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise UnsafeURL(f"cannot resolve {host!r}") from None
    return _decide(url, parts, host, port, infos, allowed)
