"""`editq.aio`: the Python API as coroutines, for asyncio programs. Same names, arguments and typed results as
`import editq` (producer/client.py).

How it is made, honestly: editq's calls are blocking Redis (redis-py, with its Sentinel failover and retries)
and S3 (boto3) I/O, and each rule lives once, in the sync code. So every call here runs that sync call in a
worker thread (`asyncio.to_thread`): the event loop is never blocked, but each call in flight holds a thread
of the loop's default executor while it runs (milliseconds for a status, longer for a submit that uploads
inputs). What can wait long without a thread does so on the loop:

* `wait`, `wait_batch`, `wait_job` sleep between polls with `asyncio.sleep`; a thread is held only for each
  status read, so a thousand concurrent waits cost a thousand timers, not a thousand threads;
* `list_jobs` is an async iterator that reads the batch a page (500 jobs) per thread hop.

`submit_batch` reads its `lines` (a plain iterable) and calls `on_progress` in the worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar

from editq.producer import api, batches, client
from editq.producer.results import BatchStatus, JobRow, JobStatus, Status, status_result

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
    """Until the batch or job is finished (a batch: and its manifest written), sleeping on the event loop
    between status reads; its final status. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        st = await asyncio.to_thread(api.status, ident)
        if api.settled(st):
            return status_result(st)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ident} not finished after {timeout}s")
        await asyncio.sleep(interval)


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
