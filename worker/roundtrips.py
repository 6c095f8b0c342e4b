"""Redis commands from many tasks of one event loop, sent together in one pipeline round trip.

The worker's submits and collects run as tasks on one loop, and each used to make its own blocking round
trip per step (the `sent` mark, the move to `submitted`, the move to `succeeded`): under load a one-command
pipeline cost ~125 us of CPU and held the loop ~0.9 ms; eight commands in one pipeline cost ~23 us each
(measured on this machine, docs/benchmarks.md section 12, session 12). Here a task queues its commands and
awaits them; the first task of a loop iteration to queue schedules the flush at the end of that iteration
(`call_soon`), so every task that reaches the same point in the same iteration shares the round trip.
Nothing waits longer than the rest of its iteration: no timer, no batch size to fill.

Each task gets back the results of its own commands, in order (a command's error as its result, as
redis-py's `raise_on_error=False` gives it); a failure of the whole round trip (Redis gone for longer than
its retries) is raised in every task whose commands were in it. A command is written before the task that
queued it goes on, exactly as with its own round trip: only the moment is shared.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Queue = Callable[[Any], None]  # adds a task's commands to the shared pipeline


class RoundTrips:
    def __init__(self, r: Any) -> None:
        self.r = r
        # per loop (tests run more than one): (the task's commands, its future)
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Queue, asyncio.Future[list[Any]]]]] = {}

    def send(self, queue: Queue) -> asyncio.Future[list[Any]]:
        """Queue commands (`queue(pipe)` adds them) for this loop's next round trip; await the result for
        the results of these commands."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append((queue, fut))
        return fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        if not batch:
            return
        spans: list[tuple[int, int]] = []
        try:
            pipe = self.r.pipeline(transaction=False)
            for queue, fut in batch:
                start = len(pipe.command_stack)
                try:
                    queue(pipe)
                except Exception as exc:  # this task's commands only (a value Redis cannot take)
                    del pipe.command_stack[start:]
                    fut.set_exception(exc)
                spans.append((start, len(pipe.command_stack)))
            results = pipe.execute(raise_on_error=False) if pipe.command_stack else []
        except BaseException as exc:  # handed to every waiting task, whatever it is
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), (start, end) in zip(batch, spans, strict=True):
            if not fut.done():
                fut.set_result(results[start:end])
