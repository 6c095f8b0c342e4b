"""One asyncio event loop per worker process, on a daemon thread, with one pooled HTTP client.

Celery tasks are synchronous; they hand their I/O to this loop with `run(coro)`, so one task can
submit or collect dozens of jobs concurrently and every task shares the same connection pool.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpcore
import httpx

T = TypeVar("T")

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "loop": None, "http": None, "http_pid": None}


def _start() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="editq-io"))
    threading.Thread(target=loop.run_forever, name="editq-aio", daemon=True).start()
    return loop


def get_loop() -> asyncio.AbstractEventLoop:
    with _lock:
        if _state["pid"] != os.getpid() or _state["loop"] is None:
            _state.update(pid=os.getpid(), loop=_start(), http=None, http_pid=None)
        return _state["loop"]


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the process loop from any thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop()).result(timeout)


MAX_CONNECTIONS = 128


class _Pool(httpcore.AsyncConnectionPool):
    """httpcore 1.0's pool, without its per-request O(n^2) bookkeeping.

    Upstream, every request start and end runs `_assign_requests_to_connections`, which (a) for each
    idle connection rebuilds a list of all connections just to take its length, (b) polls every
    idle socket for a server-side close, and (c) for every queued request scans every connection, so
    a full pool with hundreds of requests waiting (a burst of webhooks or submits) costs queued x
    connections per request. They were the top of the worker's and the sandbox's CPU profiles (py-spy)
    at a few hundred requests/s. Here: the keep-alive limit uses len(); a connection about to be reused
    is checked for expiry right then; the sweep of closed and expired connections runs at most once a
    second (closed ones are never handed out in between; a full pool still replaces an idle one); idle
    connections are found by one lazy scan per call and origin (one queued request, the usual case,
    stops at the first), and a full pool of busy connections stops the scan.
    """

    _swept = 0.0

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        closing: list[httpcore.AsyncConnectionInterface] = []
        now = time.monotonic()
        if now - self._swept >= 1.0:
            self._swept = now
            for connection in list(self._connections):
                if connection.is_closed():
                    self._connections.remove(connection)
                elif connection.has_expired() or (
                    connection.is_idle() and len(self._connections) > self._max_keepalive_connections
                ):
                    self._connections.remove(connection)
                    closing.append(connection)
        queued = [r for r in self._requests if r.is_queued()]
        if not queued:
            return closing
        # HTTP/1.1 only: a connection is available exactly when it is idle. One lazy scan per origin hands
        # idle connections out in turn, so one call is O(requests + connections), not their product, and
        # a connection is never handed to two requests.
        idle: dict[tuple[bytes, bytes, int], Iterator[httpcore.AsyncConnectionInterface]] = {}
        gone: set[int] = set()
        for pool_request in queued:
            origin = pool_request.request.url.origin
            ours = idle.get((origin.scheme, origin.host, origin.port))
            if ours is None:  # scanned lazily: one queued request (the usual case) stops at the first idle one
                ours = (c for c in list(self._connections) if c.is_idle() and c.can_handle_request(origin))
                idle[(origin.scheme, origin.host, origin.port)] = ours
            chosen = None
            for candidate in ours:
                if id(candidate) in gone:
                    continue
                if candidate.has_expired():
                    self._connections.remove(candidate)
                    closing.append(candidate)
                    continue
                chosen = candidate
                break
            if chosen is None:
                if len(self._connections) >= self._max_connections:
                    # connections the server closed still count until the sweep; drop them now, or a
                    # request can wait here until its pool timeout
                    self._connections = [c for c in self._connections if not c.is_closed()]
                if len(self._connections) >= self._max_connections:
                    victim = next((c for c in self._connections if c.is_idle() and id(c) not in gone), None)
                    # (a connection handed out in this call still reads idle until its request starts;
                    # those are in `gone` too, so none is closed under its new request)
                    if victim is None:
                        break  # every connection is busy: the rest stay queued until one frees up
                    self._connections.remove(victim)
                    closing.append(victim)
                    gone.add(id(victim))
                chosen = self.create_connection(origin)
                self._connections.append(chosen)
            pool_request.assign_to_connection(chosen)
            gone.add(id(chosen))
        return closing


def pooled_transport(max_connections: int, keepalive_expiry: float = 5.0) -> httpx.AsyncHTTPTransport:
    """An httpx transport on the O(n) pool above (also used by the sandbox's client)."""
    transport = httpx.AsyncHTTPTransport()
    transport._pool = _Pool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
    )
    return transport


def http_client() -> httpx.AsyncClient:
    """The process-wide async client (call from inside the loop)."""
    client = _state.get("http")
    if client is None or _state["http_pid"] != os.getpid():
        client = httpx.AsyncClient(
            transport=pooled_transport(MAX_CONNECTIONS),
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=False,
        )
        _state.update(http=client, http_pid=os.getpid())
    return client


class Window:
    """Coroutines running side by side, with an O(1) wait for the next to finish.

    `asyncio.wait(set, FIRST_COMPLETED)` adds and removes a callback on every pending future each
    time it is called, so a loop that waits for one of 64 at a time does 64 times the work it needs.
    Here each task reports to a queue when it is done."""

    def __init__(self) -> None:
        self._done: asyncio.Queue[asyncio.Future[Any]] = asyncio.Queue()
        self.running = 0

    def start(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.running += 1
        task.add_done_callback(self._done.put_nowait)

    async def finished(self) -> list[asyncio.Future[Any]]:
        """Wait until at least one has finished; return all that have."""
        out = [await self._done.get()]
        while not self._done.empty():
            out.append(self._done.get_nowait())
        self.running -= len(out)
        return out
