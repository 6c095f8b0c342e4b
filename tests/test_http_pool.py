"""The worker's (and the sandbox's) HTTP connection pool, against a real keep-alive server on loopback."""

from __future__ import annotations

import asyncio

import httpx

from worker.aio import pooled_transport


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
    async with httpx.AsyncClient(transport=pooled_transport(max_connections)) as client:
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
