"""The worker's (and the sandbox's) HTTP transport (httpx over aiohttp), against real servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from editq.worker.provider_client import NOT_SENT
from editq.worker.transport import AsyncClient, async_client

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class KeepAliveServer:
    """A minimal HTTP/1.1 server: answers every request with its path, keeps connections open, and
    counts connections and the most requests it held unanswered at once."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.connections = 0
        self.open_requests = 0
        self.max_open_requests = 0
        self.hold = hold

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                self.open_requests += 1
                self.max_open_requests = max(self.max_open_requests, self.open_requests)
                if self.hold is not None:
                    await self.hold.wait()
                self.open_requests -= 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            pass
        finally:
            writer.close()


async def _fire(n: int, max_connections: int, hold: bool) -> tuple[list[str], KeepAliveServer]:
    gate = asyncio.Event() if hold else None
    srv = KeepAliveServer(gate)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with async_client(max_connections) as client:
        async def one(i: int) -> str:
            r = await client.get(f"http://127.0.0.1:{port}/r{i}")
            return r.text

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        if gate is not None:
            while srv.open_requests < max_connections:  # every connection busy, the rest queued in the pool
                await asyncio.sleep(0.005)
            gate.set()
        bodies = await asyncio.gather(*tasks)
        # a second round reuses the kept-alive connections
        bodies += await asyncio.gather(*(one(n + i) for i in range(n)))
    server.close()
    await server.wait_closed()
    return list(bodies), srv


def test_a_full_pool_serves_every_queued_request_within_its_cap() -> None:
    bodies, srv = asyncio.run(_fire(300, 8, hold=True))
    assert bodies == [f"/r{i}" for i in range(600)]
    assert srv.max_open_requests == 8  # never more requests at the server than connections allowed
    assert srv.connections == 8  # and the same 8 connections carried all 600 requests


def test_idle_connections_are_reused_not_reopened() -> None:
    bodies, srv = asyncio.run(_fire(50, 64, hold=False))
    assert bodies == [f"/r{i}" for i in range(100)]
    assert srv.connections <= 50  # the second round of 50 opened nothing new


# ---- one request against a scripted server ---------------------------------------------------------------
class Recorder:
    """Reads one request (head and body, Content-Length or chunked) and keeps the raw bytes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.head = b""
        self.body = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.head = await reader.readuntil(b"\r\n\r\n")
        lines = {ln.split(b":", 1)[0].strip().lower(): ln.split(b":", 1)[1].strip()
                 for ln in self.head.split(b"\r\n")[1:] if b":" in ln}
        if b"content-length" in lines:
            self.body = await reader.readexactly(int(lines[b"content-length"]))
        writer.write(self.answer)
        await writer.drain()
        writer.close()


async def _once(handler: Handler, send: Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]
                ) -> httpx.Response:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with async_client(4) as client:
            return await send(client, base)
    finally:
        server.close()
        await server.wait_closed()


def test_an_encoded_url_reaches_the_server_byte_for_byte() -> None:
    """A presigned URL's signature covers its exact query; re-quoting it would break the signature."""
    rec = Recorder(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    target = "/outputs/b%2Fx/a%20b~c.png?X-Amz-Credential=AKID%2F20261122%2Fus-east-1%2Fs3&X-Amz-Signature=ab%3D"

    async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
        return await client.get(base + target)

    resp = asyncio.run(_once(rec.handle, send))
    assert resp.status_code == 200 and resp.text == "ok"
    assert rec.head.split(b" ", 2)[1] == target.encode()


def test_a_streamed_body_with_a_length_is_sent_with_that_length_not_chunked() -> None:
    """S3 refuses chunked uploads to presigned URLs: a streamed PUT must carry Content-Length."""
    payload = bytes(range(256)) * 4096  # 1 MiB

    async def blocks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i:i + 100_000]

    rec = Recorder(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
        return await client.put(base + "/k", content=blocks(), headers={"Content-Length": str(len(payload))})

    resp = asyncio.run(_once(rec.handle, send))
    assert resp.status_code == 200
    assert b"content-length: 1048576" in rec.head.lower()
    assert b"transfer-encoding" not in rec.head.lower()
    assert rec.body == payload


def test_a_streamed_response_arrives_whole_with_repeated_headers() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Id: a\r\nX-Id: b\r\n\r\n" % len(body)) + body
    rec = Recorder(answer)
    got = bytearray()

    async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
        async with client.stream("GET", base + "/img") as resp:
            async for chunk in resp.aiter_bytes(65536):
                got.extend(chunk)
        return resp

    resp = asyncio.run(_once(rec.handle, send))
    assert bytes(got) == body
    assert resp.headers.get_list("x-id") == ["a", "b"]


def test_connection_refused_is_a_connect_error_so_the_request_was_not_sent() -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()  # nothing listens on the port now
        async with async_client(4) as client:
            await client.post(f"http://127.0.0.1:{port}/submit", json={"a": 1})

    with pytest.raises(httpx.ConnectError) as info:
        asyncio.run(go())
    assert isinstance(info.value, NOT_SENT)


def test_a_server_that_hangs_up_after_reading_the_request_may_have_seen_it() -> None:
    """The request reached the server: this must not look like a connect failure (it may be billed)."""
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
        return await client.post(base + "/submit", json={"a": 1})

    with pytest.raises(httpx.TransportError) as info:
        asyncio.run(_once(hang_up, send))
    assert isinstance(info.value, httpx.RemoteProtocolError)
    assert not isinstance(info.value, NOT_SENT)


def test_no_answer_within_the_read_timeout_is_a_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; returns when the client gives up and closes

    async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
        return await client.post(base + "/submit", json={"a": 1}, timeout=httpx.Timeout(5.0, read=0.2))

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(_once(silent, send))


def test_set_cookie_is_neither_kept_nor_sent_back() -> None:
    first = Recorder(b"HTTP/1.1 200 OK\r\nSet-Cookie: session=abc; Path=/\r\nContent-Length: 0\r\n\r\n")
    second = Recorder(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async def go() -> httpx.Response:
        servers = [await asyncio.start_server(h.handle, "127.0.0.1", 0) for h in (first, second)]
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        async with async_client(4) as client:
            await client.get(f"http://127.0.0.1:{ports[0]}/login")
            resp = await client.get(f"http://127.0.0.1:{ports[1]}/next")
            assert len(client.cookies) == 0
        for s in servers:
            s.close()
            await s.wait_closed()
        return resp

    assert asyncio.run(go()).status_code == 200
    assert b"set-cookie" in first.answer.lower() and b"cookie" not in second.head.lower()


def test_put_direct_sends_the_same_bytes_as_put() -> None:
    """The S3 upload path skips httpx's models but not its guarantees: exact URL, length-framed body."""
    payload = bytes(range(256)) * 1024
    target = "/outputs/a%20b.png?X-Amz-Signature=ab%3D&X-Amz-Credential=AKID%2Fx"

    async def blocks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 50_000):
            yield payload[i:i + 50_000]

    for content in (payload, None):
        rec = Recorder(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied")

        async def send(client: httpx.AsyncClient, base: str, content: bytes | None = content) -> httpx.Response:
            assert isinstance(client, AsyncClient)
            status, text = await client.put_direct(
                base + target, content=content if content is not None else blocks(),
                headers={"Content-Length": str(len(payload)), "x-amz-meta-sha256": "f00"}, timeout=5)
            return httpx.Response(status, text=text)

        resp = asyncio.run(_once(rec.handle, send))
        assert (resp.status_code, resp.text) == (403, "denied")
        assert rec.head.split(b" ", 2)[:2] == [b"PUT", target.encode()]
        assert b"x-amz-meta-sha256: f00" in rec.head.lower() and b"transfer-encoding" not in rec.head.lower()
        assert rec.body == payload


def test_put_direct_connection_refused_is_a_connect_error() -> None:
    async def go() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with async_client(4) as client:
            assert isinstance(client, AsyncClient)
            await client.put_direct(f"http://127.0.0.1:{port}/k", content=b"x", headers={}, timeout=5)

    with pytest.raises(httpx.ConnectError):
        asyncio.run(go())


def test_stream_direct_yields_the_body_decoded_and_maps_a_cut_body() -> None:
    import gzip

    body = bytes(range(256)) * 4096  # 1 MiB
    packed = gzip.compress(body)
    plain = Recorder(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    zipped = Recorder(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
                      + packed)
    cut = Recorder(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:1000])

    def fetch(into: bytearray) -> Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]:
        async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
            assert isinstance(client, AsyncClient)
            async with client.stream_direct(base + "/o%2Fx.png?sig=a%3D", headers={"X-A": "1"}, timeout=5) as (
                    status, chunks):
                async for chunk in chunks:
                    into.extend(chunk)
            return httpx.Response(status)
        return send

    for rec in (plain, zipped):
        got = bytearray()
        assert asyncio.run(_once(rec.handle, fetch(got))).status_code == 200
        assert bytes(got) == body
        assert rec.head.startswith(b"GET /o%2Fx.png?sig=a%3D HTTP/1.1") and b"x-a: 1" in rec.head.lower()
    with pytest.raises(httpx.TransportError) as info:
        asyncio.run(_once(cut.handle, fetch(bytearray())))
    assert not isinstance(info.value, NOT_SENT)


def test_the_process_loop_is_uvloop() -> None:
    import uvloop

    from editq.worker import aio

    assert isinstance(aio.get_loop(), uvloop.Loop)


def test_receiver_keeps_idle_connections_75_s(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from editq.producer.cli import app

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: calls.append({"target": target, **kw}))
    monkeypatch.setenv("EDITQ_WEBHOOK_SECRET", "0" * 64)  # the receiver refuses to start without one
    assert CliRunner().invoke(app, ["webhooks", "--port", "9"]).exit_code == 0
    assert CliRunner().invoke(app, ["webhooks", "--keep-alive", "120"]).exit_code == 0
    assert [(c["target"], c["port"], c["timeout_keep_alive"]) for c in calls] == [
        ("editq.worker.webhooks:app", 9, 75), ("editq.worker.webhooks:app", 8901, 120)]


@pytest.mark.parametrize(("method", "path", "kw"), [
    ("POST", "/fal-ai/edit", {"json": {"prompt": "a café ☕", "n": 1},
                              "params": {"fal_webhook": "http://h:1/w?job=j&t=a b"},
                              "headers": {"X-Fal-Queue-Priority": "low"}}),
    ("GET", "/requests/r1/status?x=1", {"params": {"logs": "0", "flag": True}}),
    ("PUT", "/requests/r1/cancel", {}),
    ("POST", "/raw", {"content": b"\x00bytes", "headers": {"Content-Type": "application/octet-stream"}}),
])
def test_provider_requests_sent_directly_match_httpx(method: str, path: str, kw: dict[str, object],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """ProviderClient.send takes a shortcut past httpx's models (AsyncClient.request_direct): the server must
    see the same request line, headers and body as through httpx, and the protocol the same answer (repeated
    headers joined, a gzip body decoded)."""
    import gzip

    from editq.providers.fal import SPEC, FalSettings
    from editq.providers.types import ProviderRequest
    from editq.worker.provider_client import ProviderClient

    body = gzip.compress(b'{"request_id": "r1"}')
    answer = (b"HTTP/1.1 202 Accepted\r\nContent-Encoding: gzip\r\nX-Thing: a\r\nx-thing: b\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def seen(direct: bool) -> tuple[dict[bytes, bytes], bytes, bytes, tuple[int, dict[str, str], bytes]]:
        rec = Recorder(answer)
        calls: list[str] = []
        real = AsyncClient.request_direct

        async def spy(self: AsyncClient, *a: object, **k: object) -> object:
            calls.append("direct")
            return await real(self, *a, **k)  # type: ignore[arg-type]

        with monkeypatch.context() as m:
            m.setattr(AsyncClient, "request_direct", spy)
            if not direct:
                m.setattr(AsyncClient, "direct_ok", lambda self, url: False)

            async def send(client: httpx.AsyncClient, base: str) -> httpx.Response:
                pc = ProviderClient(SPEC, FalSettings(api_key="k-123", base_url=base), client)
                got = await pc.send(ProviderRequest(method, path, what="submit", **kw))  # type: ignore[arg-type]
                out.append((got.status, got.headers, got.body))
                return httpx.Response(200)

            out: list[tuple[int, dict[str, str], bytes]] = []
            asyncio.run(_once(rec.handle, send))
        assert calls == (["direct"] if direct else [])
        line, *rest = rec.head.split(b"\r\n")
        headers = {ln.split(b":", 1)[0].lower(): ln.split(b":", 1)[1].strip() for ln in rest if b":" in ln}
        assert headers.pop(b"host").startswith(b"127.0.0.1:")  # each run has its own server port
        return headers, line, rec.body, out[0]

    h_direct, line_direct, body_direct, answer_direct = seen(direct=True)
    h_httpx, line_httpx, body_httpx, answer_httpx = seen(direct=False)
    assert line_direct == line_httpx
    assert body_direct == body_httpx
    assert h_direct == h_httpx
    assert answer_direct == answer_httpx
    assert answer_direct[0] == 202 and answer_direct[2] == b'{"request_id": "r1"}'
    assert answer_direct[1]["x-thing"] == "a, b"
