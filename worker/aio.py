"""One asyncio event loop per worker process, on a daemon thread, with one pooled HTTP client.

Celery tasks are synchronous; they hand their I/O to this loop with `run(coro)`, so one task can
submit or collect dozens of jobs concurrently and every task shares the same connection pool.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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


def http_client() -> httpx.AsyncClient:
    """The process-wide async client (call from inside the loop)."""
    client = _state.get("http")
    if client is None or _state["http_pid"] != os.getpid():
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            timeout=httpx.Timeout(30.0, connect=10.0),
            follow_redirects=False,
        )
        _state.update(http=client, http_pid=os.getpid())
    return client
