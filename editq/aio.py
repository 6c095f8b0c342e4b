"""`editq.aio`: the Python API as coroutines, for asyncio programs. Same names, arguments and typed results as
`import editq` (producer/client.py).

How it is made, honestly: editq's calls are blocking Redis (redis-py, with its Sentinel failover and retries)
and S3 (boto3) I/O, and each rule lives once, in the sync code. So every call here runs that sync call in a
worker thread (`asyncio.to_thread`): the event loop is never blocked, but each call in flight holds a thread
of the loop's default executor while it runs (milliseconds for a status, longer for a submit that uploads
inputs). What can wait long without a thread does so on the loop:

* `wait`, `wait_batch`, `wait_job` poll on the loop itself: one thread hop resolves the id, then each poll is
  one command on redis.asyncio (HMGET of the batch's `closed`/`done`/`total`/`manifest_key`, or HGET of the
  job's `state`: producer/api.py decides from them, as the sync `wait` does from a status), and the final
  status is read in a thread once. Between polls they sleep on the loop: a thousand concurrent waits hold
  no thread and share one small connection pool per event loop. With Redis Sentinel
  (`EDITQ_REDIS_SENTINELS`) the polls go through the sync client in a thread instead (its failover
  handling is written once, there);
* `list_jobs` is an async iterator that reads the batch a page (500 jobs) per thread hop.

`submit_batch` reads its `lines` (a plain iterable) and calls `on_progress` in the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar

from editq.producer import api, batches, client
from editq.producer.results import BatchStatus, JobRow, JobStatus, Status, status_result
from editq.schemas.settings import get_settings
from editq.worker.keys import keys

P = ParamSpec("P")
R = TypeVar("R")

PAGE = 500  # rows of `list_jobs` read per thread hop


def in_thread(fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """`fn` as a coroutine function run in a worker thread, with `fn`'s signature (a type checker sees it)."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    return run


submit = in_thread(client.submit)
submit_batch = in_thread(client.submit_batch)
submit_file = in_thread(client.submit_file)
estimate_file = in_thread(client.estimate_file)
estimate_batch = in_thread(client.estimate_batch)
status = in_thread(client.status)
batch_status = in_thread(client.batch_status)
job_status = in_thread(client.job_status)
rerun = in_thread(client.rerun)
cancel = in_thread(client.cancel)
cancel_batch = in_thread(client.cancel_batch)
batch_budget = in_thread(client.batch_budget)
set_batch_budget = in_thread(client.set_batch_budget)
tenant_budget = in_thread(client.tenant_budget)
set_tenant_budget = in_thread(client.set_tenant_budget)
download = in_thread(client.download)
continue_batch = in_thread(client.continue_batch)
report = in_thread(client.report)


async def wait(ident: str, *, timeout: float = 600.0, interval: float = 0.5) -> Status:
    """Until the batch or job is finished (a batch: and its manifest written), polling on the event loop;
    its final status. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    first = await asyncio.to_thread(api.status, ident, latest=False)  # which it is (UnknownId if neither)
    if not api.settled(first):
        async with _poller(first) as poll:
            while not await poll():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ident} not finished after {timeout}s")
                await asyncio.sleep(interval)
    return status_result(await asyncio.to_thread(api.status, ident))


Poll = Callable[[], Coroutine[Any, Any, bool]]


@contextlib.asynccontextmanager
async def _poller(st: dict[str, Any]) -> AsyncIterator[Poll]:
    """One cheap read that says whether the batch or job of status `st` is settled."""
    settings = get_settings()
    if settings.redis_sentinels:
        ident = st["batch_id"] if st["kind"] == "batch" else st["job_id"]

        async def in_a_thread() -> bool:
            return api.settled(await asyncio.to_thread(api.status, ident, latest=False))

        yield in_a_thread
        return
    k = keys()
    async with _loop_redis(settings.redis_url) as r:
        if st["kind"] == "batch":
            key = k.batch(st["batch_id"])

            async def batch() -> bool:
                values = await r.hmget(key, api.SETTLED_FIELDS)
                return api.batch_settled(dict(zip(api.SETTLED_FIELDS, values, strict=True)))

            yield batch
        else:
            job_key = k.job(st["job_id"])

            async def job() -> bool:
                return api.job_settled(await r.hget(job_key, "state"))

            yield job


POLL_CONNECTIONS = 8  # per event loop: a poll holds a connection for one command
# per event loop and Redis URL: the shared client and how many waits use it (closed when the last one ends)
_loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = \
    weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _loop_redis(url: str) -> AsyncIterator[Any]:
    """The running loop's redis.asyncio client for `url`, shared by the waits running on it (a client belongs
    to the loop it was made on); its connections are closed when the last of them ends."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.exceptions import ConnectionError, TimeoutError

    from editq.worker.redis_client import retry_policy

    clients = _loop_clients.setdefault(asyncio.get_running_loop(), {})
    if url not in clients:  # a restart of Redis is ridden through as the sync client does
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, decode_responses=True, max_connections=POLL_CONNECTIONS, timeout=None,
            retry=retry_policy(get_settings(), Retry), retry_on_error=[ConnectionError, TimeoutError])
        clients[url] = [redis.asyncio.Redis(connection_pool=pool), 0]
    entry = clients[url]
    entry[1] += 1
    try:
        yield entry[0]
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del clients[url]
            await entry[0].connection_pool.disconnect()


async def wait_batch(batch_id: str, *, timeout: float = 600.0, interval: float = 0.5) -> BatchStatus:
    await batch_status(batch_id)  # an unknown id or a job id fails now, not at the timeout
    st = await wait(batch_id, timeout=timeout, interval=interval)
    assert isinstance(st, BatchStatus)
    return st


async def wait_job(ident: str, *, batch_id: str | None = None, timeout: float = 600.0,
                   interval: float = 0.5) -> JobStatus:
    job_id = await asyncio.to_thread(batches.resolve, ident, batch_id)
    st = await wait(job_id, timeout=timeout, interval=interval)
    assert isinstance(st, JobStatus)
    return st


async def list_jobs(batch_id: str, states: Iterable[str] | None = None, *,
                    latest: bool = False) -> AsyncIterator[JobRow]:
    """`editq.list_jobs` as an async iterator: `async for row in editq.aio.list_jobs(batch_id, ["failed"])`."""
    rows = client.list_jobs(batch_id, states, latest=latest)
    while True:
        page = await asyncio.to_thread(lambda: list(itertools.islice(rows, PAGE)))
        if not page:
            return
        for row in page:
            yield row


__all__ = ["batch_budget", "batch_status", "cancel", "cancel_batch", "continue_batch", "download", "estimate_batch",
           "estimate_file", "in_thread", "job_status", "list_jobs", "report", "rerun", "set_batch_budget",
           "set_tenant_budget", "status", "submit", "submit_batch", "submit_file", "tenant_budget", "wait",
           "wait_batch", "wait_job"]
