"""The SSRF check: the same refusals sync and async, and the async one never blocks the event loop."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from editq.producer.inputs import InputPreparer
from editq.schemas.settings import Settings
from editq.worker.errors import ProviderError
from editq.worker.netguard import Target, UnsafeURL, allow_list, check_url, check_url_async
from editq.worker.storage import Storage
from editq.worker.transport import AiohttpTransport, AsyncClient
from tests.conftest import EXAMPLES

# the bounded wait of the blocking resolver below: only reached when the loop is blocked (the bug)
BLOCKED_FOR_S = 5.0

Infos = list[tuple[Any, ...]]


def _infos(*ips: str) -> Infos:
    return [
        (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, 443))
        for ip in ips
    ]


FAKE_DNS: dict[str, Infos] = {
    "public.example": _infos("93.184.216.34"),
    "private.example": _infos("10.1.2.3"),
    "loopback.example": _infos("127.0.0.1"),
    "linklocal.example": _infos("169.254.169.254"),
    "cgnat.example": _infos("100.64.0.7"),
    "mapped.example": _infos("::ffff:10.0.0.1"),
    "mixed.example": _infos("93.184.216.34", "192.168.0.1"),
    "public6.example": _infos("2606:2800:220:1:248:1893:25c8:1946"),
    # IPv6 forms that carry a private IPv4 address, and the IPv6 ranges that are not public
    "nat64.example": _infos("64:ff9b::a00:1"),  # 64:ff9b::10.0.0.1
    "nat64-local.example": _infos("64:ff9b:1::7f00:1"),  # local-use NAT64 of 127.0.0.1
    "6to4.example": _infos("2002:a00:1::1"),  # 6to4 of 10.0.0.1
    "compat.example": _infos("::a9fe:a9fe"),  # ::169.254.169.254
    "translated.example": _infos("::ffff:0:7f00:1"),  # ::ffff:0:127.0.0.1
    "teredo.example": _infos("2001:0:4136:e378:8000:63bf:f5ff:fffe"),  # Teredo client 10.0.0.1
    "sitelocal.example": _infos("fec0::1"),
    "multicast6.example": _infos("ff0e::1"),
    "multicast4.example": _infos("239.1.2.3"),
    "nat64-public.example": _infos("64:ff9b::5db8:d822"),  # 64:ff9b::93.184.216.34: a public address
    "sandbox.example": _infos("10.9.8.7"),  # private, but its address:port is allow-listed below
}


def _fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> Infos:
    if host not in FAKE_DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return FAKE_DNS[host]


ALLOWED = allow_list("sandbox:8900,10.9.8.7:9000,127.0.0.1:5000")

# (url, allowed, refusal message fragment or None when the URL is allowed)
CASES: list[tuple[str, frozenset[tuple[str, int]], str | None]] = [
    ("ftp://public.example/x", frozenset(), "scheme 'ftp'"),
    ("file:///etc/passwd", ALLOWED, "scheme 'file'"),
    ("http://public.example/x.png", frozenset(), "only https://"),
    ("https://metadata.google.internal/computeMetadata/v1/", frozenset(), "is blocked"),
    ("https://METADATA/", frozenset(), "is blocked"),
    ("https://nowhere.example/x.png", frozenset(), "cannot resolve"),
    ("https://private.example/x.png", frozenset(), "non-public"),
    ("https://loopback.example/x.png", frozenset(), "non-public"),
    ("https://linklocal.example/x.png", frozenset(), "non-public"),
    ("https://cgnat.example/x.png", frozenset(), "non-public"),
    ("https://mapped.example/x.png", frozenset(), "non-public"),
    ("https://mixed.example/x.png", frozenset(), "non-public"),
    ("https://nat64.example/x.png", frozenset(), "an IPv6 form of 10.0.0.1"),
    ("https://nat64-local.example/x.png", frozenset(), "an IPv6 form of 127.0.0.1"),
    ("https://6to4.example/x.png", frozenset(), "an IPv6 form of 10.0.0.1"),
    ("https://compat.example/x.png", frozenset(), "an IPv6 form of 169.254.169.254"),
    ("https://translated.example/x.png", frozenset(), "an IPv6 form of 127.0.0.1"),
    ("https://teredo.example/x.png", frozenset(), "an IPv6 form of 10.0.0.1"),
    ("https://sitelocal.example/x.png", frozenset(), "site-local"),
    ("https://multicast6.example/x.png", frozenset(), "multicast"),
    ("https://multicast4.example/x.png", frozenset(), "multicast"),
    ("https://[::ffff:0:a00:1]/x.png", frozenset(), "an IPv6 form of 10.0.0.1"),
    ("https://public.example:99999/x.png", frozenset(), "port out of range"),
    ("https://public.example:8443/x.png", frozenset(), None),
    ("https://public6.example/x.png", frozenset(), None),
    ("https://nat64-public.example/x.png", frozenset(), None),
    # the allow-list names exact host:port pairs; http:// is fetched from those only
    ("http://sandbox:8900/fal/files/o.png", ALLOWED, None),
    ("http://127.0.0.1:5000/bucket/k", ALLOWED, None),
    ("http://sandbox.example:9000/x.png", ALLOWED, None),  # every address it resolves to is listed
    ("http://127.0.0.1:5001/bucket/k", ALLOWED, "only https://"),  # another port on the same host
    ("https://127.0.0.1:5001/bucket/k", ALLOWED, "non-public"),
    ("https://sandbox.example/x.png", ALLOWED, "non-public"),
    ("https://private.example/x.png", ALLOWED, "non-public"),
]


def _run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    # a plain asyncio loop: its getaddrinfo goes through socket.getaddrinfo, which the tests replace
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(coro_fn())


@pytest.mark.parametrize(("url", "allowed", "refusal"), CASES)
def test_sync_and_async_checks_refuse_the_same_urls(
    monkeypatch: pytest.MonkeyPatch, url: str, allowed: frozenset[tuple[str, int]], refusal: str | None
) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", _fake_getaddrinfo)
    outcomes: list[str | None] = []

    async def check_async() -> None:
        await check_url_async(url, allowed=allowed)

    for check in (lambda: check_url(url, allowed=allowed), lambda: _run(check_async)):
        try:
            check()
            outcomes.append(None)
        except UnsafeURL as exc:
            outcomes.append(str(exc))
    if refusal is None:
        assert outcomes == [None, None]
    else:
        assert outcomes[0] is not None and refusal in outcomes[0]
        assert outcomes[1] == outcomes[0]


def test_async_check_on_uvloop_resolves_for_real() -> None:
    """The worker's loop is uvloop (worker/aio.py): its own getaddrinfo, not socket.getaddrinfo."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        with pytest.raises(UnsafeURL, match="non-public"):
            runner.run(check_url_async("https://localhost/x.png"))
        with pytest.raises(UnsafeURL, match="only https"):
            runner.run(check_url_async("http://localhost/x.png"))


class BlockingResolver:
    """A getaddrinfo that blocks its caller until released (bounded), noting whether the event loop
    got to run another coroutine meanwhile."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.other_ran = threading.Event()
        self.seen_progress: list[bool] = []
        self.thread: threading.Thread | None = None

    def __call__(self, host: str, port: object, *args: object, **kwargs: object) -> Infos:
        self.thread = threading.current_thread()
        self.entered.set()
        self.release.wait(BLOCKED_FOR_S)
        self.seen_progress.append(self.other_ran.is_set())
        return _infos("10.0.0.1")  # private: the check refuses, so nothing is downloaded

    async def other_coroutine(self) -> None:
        """Runs on the same loop: waits (off-loop) until the resolver is blocked, then makes progress
        and lets it go. Only possible while the resolver is not holding the loop's thread."""
        await asyncio.to_thread(self.entered.wait, BLOCKED_FOR_S)
        self.other_ran.set()
        self.release.set()


def _assert_loop_kept_running(resolver: BlockingResolver, loop_thread: threading.Thread) -> None:
    assert resolver.seen_progress == [True], "the event loop was blocked while the host name resolved"
    assert resolver.thread is not loop_thread


def test_async_check_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = BlockingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    loop_thread = threading.current_thread()

    async def main() -> None:
        other = asyncio.create_task(resolver.other_coroutine())
        with pytest.raises(UnsafeURL, match="non-public"):
            await check_url_async("https://slow-dns.example/x.png")
        await other

    _run(main)
    _assert_loop_kept_running(resolver, loop_thread)


def test_output_download_check_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's call site: Storage.store_output checks a provider's output URL before fetching it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "editq-local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "editq-local-secret")
    settings = Settings.model_validate(
        {"s3_endpoint": "http://127.0.0.1:9", "s3_bucket": "editq-test"}
    )
    storage = Storage(settings)
    resolver = BlockingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    loop_thread = threading.current_thread()

    async def main() -> None:
        other = asyncio.create_task(resolver.other_coroutine())
        async with httpx.AsyncClient() as http:
            with pytest.raises(UnsafeURL, match="non-public"):
                await storage.store_output(
                    http,
                    url="https://slow-dns.example/out.png",
                    b64=None,
                    key_for_ext=lambda ext: f"o.{ext}",
                    index=0,
                )
        await other

    _run(main)
    _assert_loop_kept_running(resolver, loop_thread)


# ---- resolve once, connect to the checked address (DNS rebinding) ------------------------------------


class CountingServer:
    """A real HTTP server on one loopback address that answers every GET with a PNG and notes its Host
    (and, over TLS, the server name each client asked for)."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        hosts: list[str] = []
        self.hosts = hosts
        self.server_names: list[str | None] = []
        body = (EXAMPLES / "mug.png").read_bytes()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hosts.append(self.headers.get("Host", ""))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)  # type: ignore[assignment,func-returns-value]
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Certificates:
    """A throwaway CA and a certificate it signed for `rebind.example` (cryptography, in memory)."""

    def __init__(self, tmp: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)

        def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, ca: bool) -> Any:
            builder = (x509.CertificateBuilder()
                       .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                       .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - datetime.timedelta(hours=1))
                       .not_valid_after(now + datetime.timedelta(hours=1))
                       .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
            if not ca:
                builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
            return builder.sign(issuer_key, hashes.SHA256())

        ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "editq test CA")])
        ca = cert("editq test CA", ca_key, ca_name, ca_key, True)
        leaf = cert("rebind.example", leaf_key, ca_name, ca_key, False)
        self.ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
        self.chain = tmp / "leaf.pem"
        self.chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def server(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.chain)
        return ctx

    def client(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx


def _server_pair(tls: Certificates | None) -> tuple[CountingServer, CountingServer]:
    """The checked server on 127.0.0.2 and the internal one on 127.0.0.1, on the same port."""
    for _ in range(20):
        checked = CountingServer("127.0.0.2", 0, tls.server() if tls else None)
        try:
            return checked, CountingServer("127.0.0.1", checked.port, tls.server() if tls else None)
        except OSError:  # the port is taken on 127.0.0.1: try another pair
            checked.close()
    raise AssertionError("no free port on both 127.0.0.1 and 127.0.0.2")


@pytest.fixture(params=["http", "https"])
def rebinding(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
              ) -> Iterator[tuple[str, CountingServer, CountingServer, ssl.SSLContext | None]]:
    """`rebind.example` answers 127.0.0.2 (the allow-listed stand-in for a public address) to its first
    lookup and 127.0.0.1 (the internal service) to every later one. Both serve on the same port; over
    https with a certificate for `rebind.example` only (so the fetch works only if the TLS name is the
    URL's host, not the address connected to). Yields (scheme, checked, internal, client trust store)."""
    certs = Certificates(tmp_path) if request.param == "https" else None
    checked, internal = _server_pair(certs)
    assert internal is not None
    real = socket.getaddrinfo
    answers = iter(["127.0.0.2"])

    def getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> Infos:
        if host == "rebind.example":
            ip = next(answers, "127.0.0.1")
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(str(port))))]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield request.param, checked, internal, certs.client() if certs else None
    checked.close()
    internal.close()


def _settings(port: int) -> Settings:
    return Settings.model_validate({"s3_endpoint": "http://127.0.0.1:9", "s3_bucket": "editq-test",
                                    "allowed_private_hosts": f"127.0.0.2:{port}"})


Rebinding = tuple[str, CountingServer, CountingServer, ssl.SSLContext | None]


def _assert_fetched_from_the_checked_address(scheme: str, checked: CountingServer, internal: CountingServer) -> None:
    assert internal.hosts == [] and internal.server_names == []  # a second lookup would have said 127.0.0.1
    assert checked.hosts == [f"rebind.example:{checked.port}"]  # the URL's own Host, on the checked address
    if scheme == "https":  # and the URL's host as the TLS name: the certificate was verified for it
        assert checked.server_names == ["rebind.example"]


def test_an_input_is_fetched_from_the_address_that_was_checked(rebinding: Rebinding) -> None:
    scheme, checked, internal, trust = rebinding
    preparer = InputPreparer(cast(Storage, None), Path("."), _settings(checked.port), tls=trust)

    data = preparer._download(f"{scheme}://rebind.example:{checked.port}/x.png", "images[0]", 10**7)

    assert data == (EXAMPLES / "mug.png").read_bytes()
    _assert_fetched_from_the_checked_address(scheme, checked, internal)


def test_a_provider_output_is_fetched_from_the_address_that_was_checked(
        monkeypatch: pytest.MonkeyPatch, rebinding: Rebinding) -> None:
    """The worker's call site, on the worker's own client (aiohttp underneath)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "editq-local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "editq-local-secret")
    scheme, checked, internal, trust = rebinding
    storage = Storage(_settings(checked.port))

    async def main() -> None:
        http = AsyncClient(wire=AiohttpTransport(4, ssl_context=trust))
        try:
            with pytest.raises(ProviderError, match="S3 PUT"):  # fetched; then the (absent) S3 refuses
                await storage.store_output(http, url=f"{scheme}://rebind.example:{checked.port}/out.png", b64=None,
                                           key_for_ext=lambda ext: f"o.{ext}", index=0)
        finally:
            await http.aclose()

    _run(main)
    _assert_fetched_from_the_checked_address(scheme, checked, internal)


def test_a_pinned_target_keeps_the_urls_host_for_host_and_tls() -> None:
    target = Target("https://user@cdn.example:8443/a/b.png?sig=1", "cdn.example", 8443, "2606:4700::1")
    assert target.connect_url == "https://user@[2606:4700::1]:8443/a/b.png?sig=1"
    assert target.pin_headers({"Accept": "*/*"}) == {"Accept": "*/*", "Host": "cdn.example:8443"}
    assert target.server_hostname == "cdn.example"
    named = Target("http://sandbox:8900/o.png", "sandbox", 8900, None)  # allow-listed by name: not pinned
    assert (named.connect_url, named.pin_headers(), named.pinned) == ("http://sandbox:8900/o.png", {}, False)
