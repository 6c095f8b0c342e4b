"""Refilling freed provider slots: a dispatch call that claimed keeps looking for freed slots for a moment
instead of ending (worker/pipeline.py `_windowed`, LINGER_S), and the tick sends dispatch only when a slot
is free (`Pipeline.dispatchable`)."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from editq import providers
from editq.schemas.job import EditJob, InputRecord
from editq.worker import aio
from editq.worker.pipeline import Pipeline, _windowed
from editq.worker.triggers import Kicker
from tests.conftest import unique
from tests.test_pipeline_faults import pipe  # noqa: F401  (the fixture: a Pipeline on its own prefix)


def _filler(claims: list[int]) -> tuple[list[int], Any]:
    """A fill that claims claims[i] jobs on its i-th call (0 once the list is used up); each job's step is a
    no-op. Returns the list of rooms it was called with, and the fill."""
    rooms: list[int] = []

    async def step() -> None:
        return None

    def fill(room: int) -> tuple[int, list[Coroutine[Any, Any, None]]]:
        rooms.append(room)
        n = claims[len(rooms) - 1] if len(rooms) <= len(claims) else 0
        return n, [step() for _ in range(n)]

    return rooms, fill


def test_a_dispatch_call_that_claimed_takes_slots_freed_a_moment_later() -> None:
    """Claims 3, finds nothing free twice, then 2 more are free: with the linger the same call takes them
    (before, it returned after the first empty look and the next freed slot waited for a new task)."""
    rooms, fill = _filler([3, 0, 0, 2])
    assert aio.run(_windowed(lambda: 64, fill, "test", linger_s=30.0)) == 5
    assert rooms[:4] == [64, 64, 64, 64]

    rooms, fill = _filler([3, 0, 0, 2])
    assert aio.run(_windowed(lambda: 64, fill, "test")) == 3  # no linger (collect): ends at the first empty look
    assert len(rooms) == 2


def test_a_dispatch_call_that_claimed_nothing_does_not_linger() -> None:
    """A call that finds nothing claimable from the start (every slot taken, a backoff) returns at once."""
    rooms, fill = _filler([])
    assert aio.run(_windowed(lambda: 64, fill, "test", linger_s=30.0)) == 0
    assert rooms == [64]


class _Recorder(Kicker):
    def __init__(self) -> None:
        super().__init__()
        self.dispatched: list[str] = []

    def dispatch(self, provider: str, synchronous: bool = False) -> None:
        self.dispatched.append(provider)

    def collect(self) -> None:
        return None

    def finalize(self, batch_id: str) -> None:
        return None


def _queued(p: Pipeline) -> str:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    job = EditJob(job_id=unique("job"), batch_id=unique("batch"), prompt="p", images=["a.png"], inputs=[rec],
                  idempotency_key=unique("idem"), provider="fal")
    assert p.store.create(job)[0] == 1
    return job.job_id


def test_the_tick_sends_dispatch_only_while_a_slot_is_free(pipe: Pipeline) -> None:  # noqa: F811
    p = pipe
    kick = _Recorder()
    p.kick = kick
    _queued(p)
    cap = max(1, providers.settings_of("fal").concurrency)
    now = time.time()
    p.r.zadd(p.k.slots("fal"), {f"held-{i}": now for i in range(cap)})  # every slot taken
    assert not p.dispatchable("fal")
    p.r.delete(p.k.tick_lock)
    p.tick()
    assert kick.dispatched == []  # a task that could claim nothing is not sent

    p.r.zrem(p.k.slots("fal"), "held-0")  # a slot frees up
    assert p.dispatchable("fal")
    p.r.delete(p.k.tick_lock)
    p.tick()
    assert kick.dispatched == ["fal"]
