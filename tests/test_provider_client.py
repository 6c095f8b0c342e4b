"""The one network boundary (worker/provider_client.py): the billing line, credentials only to the hosts a
provider's spec allows, answers that are not JSON, redaction. Real loopback sockets for the billing line."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from editq.providers.fal import SPEC, FalSettings
from editq.providers.fal.protocol import FalProtocol
from editq.providers.types import ProviderRequest
from editq.worker import aio, redact
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.provider_client import NOT_SENT, ProviderClient, transport_error

KEY = "fal-key-abcdef123456"


def client(base: str, handler: Callable[[httpx.Request], httpx.Response] | None = None,
           **settings: Any) -> ProviderClient:
    s = FalSettings(api_key=KEY, base_url=base, **settings)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler)) if handler else aio.http_client()
    return ProviderClient(SPEC, s, http)


# ---- the billing line, as a table --------------------------------------------------------------------------
@pytest.mark.parametrize(("exc", "billed"), [
    (httpx.ConnectError("refused"), False),
    (httpx.ConnectTimeout("connect timeout"), False),
    (httpx.PoolTimeout("no free connection"), False),
    (httpx.UnsupportedProtocol("ftp"), False),
    (httpx.ReadTimeout("no answer"), True),
    (httpx.WriteTimeout("stalled while sending"), True),
    (httpx.ReadError("connection reset by peer"), True),
    (httpx.WriteError("broken pipe"), True),
    (httpx.RemoteProtocolError("server disconnected without sending a response"), True),
])
def test_only_a_connection_never_made_is_not_billed(exc: Exception, billed: bool) -> None:
    err = transport_error("fal", "submit", exc, 30.0)
    assert err.kind is ErrorKind.retryable
    assert err.maybe_billed is billed
    assert ("not sent" in err.reason) is (not billed)
    assert isinstance(exc, NOT_SENT) is (not billed)


def _server(behaviour: Callable[[socket.socket], None]) -> Iterator[str]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                behaviour(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    srv.close()
    t.join(5)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def hangs_up_after_reading() -> Iterator[str]:
    """Reads the whole request, then closes the connection without a word: the provider has it."""
    yield from _server(lambda conn: (_read_request(conn), None)[1])


@pytest.fixture
def resets_after_reading() -> Iterator[str]:
    def reset(conn: socket.socket) -> None:
        _read_request(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
    yield from _server(reset)


def _send(c: ProviderClient) -> ProviderError:
    async def go() -> ProviderError:
        with pytest.raises(ProviderError) as info:
            await c.send(ProviderRequest("POST", "/openai/gpt-image-2/edit", json={"prompt": "x"}, what="submit"))
        return info.value
    return aio.run(go())


def test_a_connection_dropped_after_the_request_was_sent_may_have_been_billed(hangs_up_after_reading: str) -> None:
    err = _send(client(hangs_up_after_reading))
    assert err.maybe_billed and err.kind is ErrorKind.retryable
    assert "may have been processed and billed" in err.reason


def test_a_connection_reset_after_the_request_was_sent_may_have_been_billed(resets_after_reading: str) -> None:
    err = _send(client(resets_after_reading))
    assert err.maybe_billed


def test_a_refused_connection_was_not_sent() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    err = _send(client(f"http://127.0.0.1:{port}"))
    assert not err.maybe_billed and "not sent" in err.reason


def test_the_fal_protocol_records_a_dropped_submit_as_maybe_billed(hangs_up_after_reading: str) -> None:
    """The adapter-level defect: a submit whose connection dropped after sending was resubmitted silently."""
    from editq.providers.types import InputUrls
    from tests.test_fal_protocol import job

    proto = FalProtocol(FalSettings(api_key=KEY, base_url=hangs_up_after_reading))
    c = ProviderClient(SPEC, proto.settings, aio.http_client())
    req = proto.build_request(job(), InputUrls(images=["https://s3/a"]), None)

    async def go() -> ProviderError:
        with pytest.raises(ProviderError) as info:
            await proto.submit(c, job(), req)
        return info.value

    assert aio.run(go()).maybe_billed


# ---- credentials only where the spec allows --------------------------------------------------------------
def test_credentials_go_only_to_the_providers_hosts() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers.get("authorization")))
        return httpx.Response(202, json={"status": "IN_QUEUE"})

    c = client("https://queue.fal.run", handler)
    proto = FalProtocol(c.settings)
    ok = asyncio.run(proto.poll(c, "r1", {"status_url": "https://queue.fal.run/x/requests/r1/status"}))
    assert not ok.done and seen == [("queue.fal.run", f"Key {KEY}")]
    # an answer that names another host gets nothing: the request does not leave
    evil = {"status_url": "https://attacker.example/steal", "response_url": "https://attacker.example/r"}
    with pytest.raises(ProviderError, match=r"refusing to send credentials to 'attacker\.example'") as info:
        asyncio.run(proto.poll(c, "r1", evil))
    assert not info.value.maybe_billed and KEY not in info.value.reason
    assert len(seen) == 1
    # unauthenticated requests (public key sets) may go anywhere
    asyncio.run(c.send(ProviderRequest("GET", "https://rest.fal.ai/.well-known/jwks.json", auth=False)))
    assert seen[-1] == ("rest.fal.ai", None)


def test_configured_auth_hosts_may_receive_the_key() -> None:
    c = client("https://queue.fal.run", lambda r: httpx.Response(200), auth_hosts=["cdn.fal.media"])
    assert c.output_headers("https://cdn.fal.media/a.png", True) == {"Authorization": f"Key {KEY}"}
    assert c.output_headers("https://elsewhere.example/a.png", True) == {}
    assert c.output_headers("https://cdn.fal.media/a.png", False) == {}


# ---- answers ---------------------------------------------------------------------------------------------------
def test_an_answer_that_is_not_json_is_read_not_raised() -> None:
    c = client("https://queue.fal.run", lambda r: httpx.Response(200, text="<html>busy</html>"))
    answer = asyncio.run(c.send(ProviderRequest("GET", "/x")))
    assert answer.status == 200 and answer.json is None and answer.obj == {} and "busy" in answer.text


def test_one_unreadable_poll_answer_fails_that_request_only() -> None:
    """A poll group of three: one answer is HTML, one is a JSON list. Each stands alone."""
    def handler(request: httpx.Request) -> httpx.Response:
        rid = request.url.path.split("/")[-2]
        if rid == "html":
            return httpx.Response(200, text="<html>gateway</html>")
        if rid == "list":
            return httpx.Response(200, json=["not", "an", "object"])
        return httpx.Response(202, json={"status": "IN_PROGRESS"})

    c = client("https://queue.fal.run", handler)
    proto = FalProtocol(c.settings)
    items = [(rid, {"status_url": f"https://queue.fal.run/a/requests/{rid}/status"}) for rid in ("ok", "html", "list")]
    out = asyncio.run(proto.poll_many(c, items))
    assert not isinstance(out[0], ProviderError) and not out[0].done
    assert isinstance(out[1], ProviderError) and "malformed answer" in out[1].reason
    assert isinstance(out[2], ProviderError) and out[2].kind is ErrorKind.unknown


# ---- redaction ---------------------------------------------------------------------------------------------------
def test_every_registered_secret_is_redacted_from_every_error() -> None:
    redact.register("r8_secret-token-0001", None, "short")
    err = ProviderError(ErrorKind.terminal, "HTTP 401: token r8_secret-token-0001 is invalid; short is fine")
    assert err.reason == "HTTP 401: token *** is invalid; short is fine"
    client("https://queue.fal.run", lambda r: httpx.Response(200))  # registers its key
    assert KEY not in ProviderError(ErrorKind.terminal, f"bad key {KEY}").reason
    assert redact.redact(f"a {KEY}\n") == "a ***\n"


def test_a_dotted_auth_host_covers_its_subdomains_only() -> None:
    c = client("https://queue.fal.run", lambda r: httpx.Response(200), auth_hosts=[".cdn.example"])
    assert c.may_authenticate("https://cdn.example/a") and c.may_authenticate("https://x.y.cdn.example/a")
    assert not c.may_authenticate("https://cdn.example.evil.test/a")
    assert not c.may_authenticate("https://evilcdn.example/a")
