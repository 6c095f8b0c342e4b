"""Redis round trips shared by the tasks of one event loop (worker/roundtrips.py) and the moves made through
them (`JobStore.move_shared`): one pipeline per loop iteration, each task its own results and errors, the
same moves as `JobStore.move`. And the `sent` mark written through it before a request's first byte."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from editq.schemas.job import EditJob, InputRecord
from editq.worker.roundtrips import RoundTrips
from editq.worker.state import JobStore, State
from tests.conftest import unique


@pytest.fixture
def store(prefixed_store: Callable[[str], JobStore]) -> JobStore:
    return prefixed_store("editq-trips")


class Counting:
    """The store's Redis client, counting the pipelines it executes."""

    def __init__(self, r: Any) -> None:
        self.r = r
        self.executed: list[int] = []  # commands per executed pipeline

    def pipeline(self, **kw: Any) -> Any:
        pipe = self.r.pipeline(**kw)
        execute = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            self.executed.append(len(pipe.command_stack))
            return execute(*a, **k)

        pipe.execute = counted
        return pipe


def _create(store: JobStore, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="i/x.png")
        job = EditJob(job_id=unique("job"), batch_id="b1", prompt="p", images=["a.png"], inputs=[rec],
                      idempotency_key=unique("idem"))
        assert store.create(job)[0] == 1
        ids.append(job.job_id)
    return ids


def test_tasks_of_one_iteration_share_one_round_trip_and_get_their_own_results(store: JobStore) -> None:
    counting = Counting(store.r)
    trips = RoundTrips(counting)
    key = store.k.job(unique("trips"))  # a key under the test's prefix

    async def one(i: int) -> list[Any]:
        def queue(pipe: Any) -> None:
            pipe.hset(key, f"f{i}", str(i))
            pipe.hget(key, f"f{i}")

        return await trips.send(queue)

    async def run() -> tuple[list[list[Any]], list[Any]]:
        together = await asyncio.gather(*(one(i) for i in range(8)))
        later = await one(99)  # a later iteration: a round trip of its own
        return together, later

    together, later = asyncio.run(run())
    assert together == [[1, str(i)] for i in range(8)]
    assert later == [1, "99"]
    assert counting.executed == [16, 2]


def test_an_error_is_its_own_tasks_and_a_lost_round_trip_fails_every_task(store: JobStore) -> None:
    trips = RoundTrips(store.r)
    key = store.k.job(unique("trips-err"))
    store.r.set(key, "a string")

    def unsendable(pipe: Any) -> None:
        raise ValueError("a value Redis cannot take")

    async def run() -> list[Any]:
        return await asyncio.gather(
            trips.send(lambda pipe: pipe.hget(key, "x")),  # WRONGTYPE: an error result for this task only
            trips.send(unsendable),  # raised in this task only; its commands are not sent
            trips.send(lambda pipe: pipe.get(key)),
            return_exceptions=True)

    wrong, refused, fine = asyncio.run(run())
    assert isinstance(wrong, list) and isinstance(wrong[0], redis.ResponseError)
    assert isinstance(refused, ValueError)
    assert fine == ["a string"]

    class Gone:
        def pipeline(self, **kw: Any) -> Any:
            pipe = store.r.pipeline(**kw)

            def fail(*a: Any, **k: Any) -> Any:
                raise redis.ConnectionError("Redis gone")

            pipe.execute = fail
            return pipe

    lost = RoundTrips(Gone())

    async def run_lost() -> list[Any]:
        return await asyncio.gather(*(lost.send(lambda pipe: pipe.get(key)) for _ in range(3)),
                                    return_exceptions=True)

    assert all(isinstance(e, redis.ConnectionError) for e in asyncio.run(run_lost()))


def test_shared_moves_are_the_same_moves_and_survive_lost_scripts(store: JobStore) -> None:
    ids = _create(store, 4)
    assert sorted(store.claim("fal", 4, 10, 0, 0, 60)) == sorted(ids)
    counting = Counting(store.r)
    trips = RoundTrips(counting)
    k = store.k

    async def move(jid: str, rid: str) -> Any:
        return await store.move_shared(trips, jid, [State.submitting], State.submitted, score=time.time() + 60,
                                       fields={"request_id": rid}, before=lambda p: p.set(k.request("fal", rid), jid))

    async def run() -> list[Any]:
        return await asyncio.gather(*(move(jid, f"r{i}") for i, jid in enumerate(ids[:3])))

    moved = asyncio.run(run())
    assert [m.ok for m in moved] == [True] * 3 and counting.executed == [6]
    for i, jid in enumerate(ids[:3]):
        view = store.get(jid)
        assert view is not None and view.state is State.submitted and view.request_id == f"r{i}"
        assert store.r.get(k.request("fal", f"r{i}")) == jid
    # refused the second time, as `move` is; its `before` commands ran
    again = asyncio.run(move(ids[0], "r-again"))
    assert not again.ok and again.previous == "submitted" and store.r.get(k.request("fal", "r-again")) == ids[0]
    # Redis lost its scripts (a restart): the move loads it and is applied
    store._transition.sha = "0" * 40
    last = asyncio.run(move(ids[3], "r3"))
    assert last.ok
    view = store.get(ids[3])
    assert view is not None and view.state is State.submitted and view.request_id == "r3"
    # an illegal move is refused before anything is sent
    with pytest.raises(ValueError, match="illegal transition"):
        asyncio.run(store.move_shared(trips, ids[0], [State.submitted], State.succeeded))


def test_a_request_waits_for_its_awaitable_connection_hook_before_its_first_byte(store: JobStore) -> None:
    """The submit's `sent` mark is a round trip shared with other tasks (awaited): the request is written only
    after it. A hook that fails sends nothing, and its connection goes back to the pool."""
    import httpx

    from editq.worker import transport

    key = store.k.job(unique("wire-mark"))
    seen: list[str | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            seen.append(store.r.get(key))  # what Redis says when the request's bytes arrive
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async def slow_mark() -> None:
        await asyncio.sleep(0.2)  # a slow round trip: the request must not leave meanwhile
        store.r.set(key, "sent")

    async def failing_mark() -> None:
        await asyncio.sleep(0)
        raise redis.ConnectionError("Redis gone")

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = transport.async_client(1)
        assert isinstance(client, transport.AsyncClient)
        url = f"http://127.0.0.1:{port}/x"
        try:
            for mark in (slow_mark, failing_mark, slow_mark):
                store.r.delete(key)
                transport.on_connected.set(mark)
                try:
                    answer = await client.request_direct("GET", url, headers={}, body=None, timeout=httpx.Timeout(5))
                except redis.ConnectionError:
                    assert mark is failing_mark
                else:
                    assert answer[0] == 200 and answer[2] == b"ok"
                assert transport.on_connected.get() is None  # fired once, then disarmed
        finally:
            await client.aclose()
            server.close()

    asyncio.run(run())
    # the failed hook's request never reached the server, and the pool of one connection still served the next
    assert seen == ["sent", "sent"]


def test_a_shared_ready_claim_is_claim_ready_and_get_many(store: JobStore) -> None:
    ids = _create(store, 5)
    assert sorted(store.claim("fal", 5, 10, 0, 0, 60)) == sorted(ids)
    for jid in ids:
        assert store.move(jid, [State.submitting], State.ready).ok
    counting = Counting(store.r)
    trips = RoundTrips(counting)
    lease = time.time() + 60

    async def claim(n: int) -> list[Any]:
        return await store.claim_ready_shared(trips, n, lease, "me")

    async def run() -> list[list[Any]]:
        return await asyncio.gather(claim(2), claim(1))

    first, second = asyncio.run(run())
    assert counting.executed == [2, 3]  # the two claims in one round trip, then their three records in one
    got = [v.job_id for v in first + second]
    assert len(set(got)) == 3 and set(got) <= set(ids)
    for view in first + second:
        assert view.state is State.collecting and view.fields["owner"] == "me"
        assert view.fields["collect_attempts"] == "1"
        assert store.r.zscore(store.k.collecting, view.job_id) == pytest.approx(lease, abs=0.01)
    store._claim_ready.sha = "0" * 40  # as after SCRIPT FLUSH
    rest = asyncio.run(claim(10))
    assert sorted(v.job_id for v in rest) == sorted(set(ids) - set(got))
    assert asyncio.run(claim(10)) == []
