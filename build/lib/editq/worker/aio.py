"""One asyncio event loop per worker process, on a daemon thread, with one pooled HTTP client.

Celery tasks are synchronous; they hand their I/O to this loop with `run(coro)`, so one task can
submit or collect dozens of jobs concurrently and every task shares the same connection pool.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from editq.worker.transport import async_client

T = TypeVar("T")

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "loop": None, "http": None, "http_pid": None}


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (it comes with uvicorn[standard]): its loop and transports run in C."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _start() -> asyncio.AbstractEventLoop:
    atexit.register(shutdown)  # the HTTP client is closed on the way out, not reported unclosed by aiohttp
    loop = _new_loop()
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


def http_client() -> httpx.AsyncClient:
    """The process-wide async client (call from inside the loop)."""
    client = _state.get("http")
    if client is None or _state["http_pid"] != os.getpid():
        client = async_client(
            MAX_CONNECTIONS,
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=False,
        )
        _state.update(http=client, http_pid=os.getpid())
    return client


async def close_http_client() -> None:
    """Close this process's HTTP client (and its aiohttp session) if it was opened; call from inside the loop
    that uses it. A session left open is reported by aiohttp as "Unclosed client session" at exit."""
    client = _state.get("http")
    if client is not None and _state["http_pid"] == os.getpid():
        _state.update(http=None, http_pid=None)
        await client.aclose()


def shutdown(timeout: float = 5.0) -> None:
    """Close the HTTP client on the process loop, then stop the loop (a worker or CLI command exiting)."""
    with _lock:
        loop = _state["loop"] if _state["pid"] == os.getpid() else None
    if loop is None or loop.is_closed():
        return
    with contextlib.suppress(Exception):  # a loop that is stuck or already stopping: nothing more to close
        asyncio.run_coroutine_threadsafe(close_http_client(), loop).result(timeout)


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
