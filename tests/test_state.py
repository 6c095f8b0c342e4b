"""The state machine on a real Redis: atomic moves, refused illegal moves, global caps in the claim."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from editq.schemas.job import EditJob, InputRecord
from editq.worker.state import TRANSITIONS, JobStore, State
from tests.conftest import unique


@pytest.fixture
def store(prefixed_store: Callable[[str], JobStore]) -> JobStore:
    return prefixed_store("editq-state")


def _job(batch: str, lane: str = "bulk", idem: str | None = None) -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=unique("job"), batch_id=batch, prompt="p", images=["a.png"], inputs=[rec],
                   idempotency_key=idem or unique("idem"), priority=lane)


def _create(store: JobStore, batch: str, n: int, lane: str = "bulk") -> list[str]:
    ids = []
    for _ in range(n):
        job = _job(batch, lane)
        assert store.create(job)[0] == 1
        ids.append(job.job_id)
    return ids


def test_create_is_idempotent_by_key(store: JobStore) -> None:
    a = _job("b1", idem="same")
    b = _job("b1", idem="same")
    assert store.create(a) == [1, a.job_id]
    assert store.create(b) == [0, a.job_id]
    assert store.batch_counts("b1") == {"total": 1, "n_queued": 1}


def test_claim_respects_cap_reserve_and_lanes(store: JobStore) -> None:
    bulk = _create(store, "b2", 10)
    urgent = _create(store, "b2", 2, lane="interactive")
    # cap 5 with 1 slot reserved for the interactive lane: interactive first, bulk gets at most cap-reserve
    first = store.claim("fal", 64, 5, 1, 0, 60)
    assert first[:2] == urgent and len(first) == 4  # 2 interactive + 2 bulk (5 - 1 reserved - 2 used)
    assert store.claim("fal", 64, 5, 1, 0, 60) == []  # bulk may not take the reserved slot
    more = _create(store, "b2", 1, lane="interactive")
    assert store.claim("fal", 64, 5, 1, 0, 60) == more  # ...but interactive may
    assert store.claim("fal", 64, 5, 1, 0, 60) == []
    # releasing a slot (job leaves submitting/submitted) lets the next one in
    assert store.move(first[0], [State.submitting], State.ready).ok
    # 4 slots held; cap raised to 6 with 1 reserved: exactly one more bulk job fits
    assert store.claim("fal", 64, 6, 1, 0, 60) == bulk[2:3]
    assert store.r.zcard(store.k.slots("fal")) == 5


def test_rpm_and_backoff(store: JobStore) -> None:
    _create(store, "b3", 5)
    assert len(store.claim("fal", 64, 100, 0, 3, 60)) == 3  # 3 requests per minute
    assert store.claim("fal", 64, 100, 0, 3, 60) == []
    store.r.delete(store.k.rpm("fal"))
    store.r.set(store.k.backoff("fal"), "1", px=60_000)  # a provider's Retry-After, shared by all workers
    assert store.claim("fal", 64, 100, 0, 0, 60) == []
    store.r.delete(store.k.backoff("fal"))
    assert len(store.claim("fal", 64, 100, 0, 0, 60)) == 2


def test_moves_are_guarded_and_counted(store: JobStore) -> None:
    (jid,) = _create(store, "b4", 1)
    with pytest.raises(ValueError, match="illegal transition"):
        store.move(jid, [State.queued], State.succeeded)
    assert store.claim("fal", 1, 10, 0, 0, 60) == [jid]
    ok = store.move(jid, [State.submitting], State.submitted, score=time.time(), fields={"request_id": "r1"})
    assert ok.ok and ok.previous == "submitting"
    # the webhook and the poller race: exactly one wins
    assert store.move(jid, [State.submitted], State.ready).ok
    again = store.move(jid, [State.submitted], State.ready)
    assert not again.ok and again.previous == "ready"
    assert store.move(jid, [State.ready], State.collecting, score=time.time()).ok
    assert store.close_batch("b4") is False
    before = store.get(jid)
    assert before is not None and [h.state for h in before.history] == [
        "queued", "submitting", "submitted", "ready", "collecting"]
    done = store.move(jid, [State.collecting], State.succeeded)
    assert done.ok and done.batch_finished  # last job of a closed batch queues the batch manifest
    assert store.r.zrange(store.k.finalize, 0, -1) == ["b4"]
    assert store.batch_counts("b4") == {"total": 1, "done": 1, "n_queued": 0, "n_submitting": 0, "n_submitted": 0,
                                        "n_ready": 0, "n_collecting": 0, "n_succeeded": 1}
    view = store.get(jid)  # finished: the compact record (its history is in its manifest, in S3)
    assert view is not None and view.compact and view.state is State.succeeded and view.request_id == "r1"
    assert store.r.ttl(store.k.job(jid)) > 0  # finished jobs expire from Redis (S3 keeps the manifest)
    assert store.r.zcard(store.k.inflight) == 0 and store.r.zcard(store.k.slots("fal")) == 0


def test_transition_table_has_no_exit_from_terminal() -> None:
    for s in (State.succeeded, State.failed, State.cancelled):
        assert TRANSITIONS[s] == frozenset()


def test_moves_claim_coalesced_wake_ups_in_the_same_round_trip(store: JobStore) -> None:
    """A burst of completions sends one collect task and one dispatch task, not one per job; a flag a
    running pump holds absorbs them all."""
    ids = _create(store, "b5", 12)
    claimed = store.claim("fal", 10, 10, 0, 0, 60)
    assert len(claimed) == 10  # 2 stay queued, so each freed slot has work waiting
    sent: list[str] = []
    store.kick_ms = 5000
    store.on_ready = lambda: sent.append("collect")
    store.on_slot_freed = lambda provider: sent.append(f"dispatch:{provider}")
    for jid in claimed[:5]:
        assert store.move(jid, [State.submitting], State.ready).ok
    assert sorted(sent) == ["collect", "dispatch:fal"]
    assert 0 < store.r.pttl(store.k.kick_collect) <= 5000
    assert 0 < store.r.pttl(store.k.kick_dispatch("fal")) <= 5000
    # the flags expire (or a task clears them): the next move sends again
    store.r.delete(store.k.kick_collect, store.k.kick_dispatch("fal"))
    store.r.set(store.k.kick_collect, "1", px=15_000)  # a collect pump holds its flag
    assert store.move(claimed[5], [State.submitting], State.ready).ok
    assert sorted(sent) == ["collect", "dispatch:fal", "dispatch:fal"]
    # a move that is refused claims nothing
    assert not store.move(claimed[5], [State.submitting], State.ready).ok
    assert len(sent) == 3 and ids[10] not in claimed


def test_commands_before_a_move_share_its_round_trip_and_survive_lost_scripts(store: JobStore) -> None:
    """`move(before=...)` (the submit's request id and circuit reset ride with its move to `submitted`): the
    commands run and the move is applied in one call, even when Redis no longer has the script (a restart)."""
    (jid,) = _create(store, "b9", 1)
    assert store.claim("fal", 1, 5, 0, 0, 60) == [jid]
    r, k = store.r, store.k
    store._transition.sha = "0" * 40  # as after SCRIPT FLUSH: EVALSHA answers NOSCRIPT
    moved = store.move(jid, [State.submitting], State.submitted, score=time.time() + 60, fields={"request_id": "r1"},
                       before=lambda p: p.set(k.request("fal", "r1"), jid))
    assert moved.ok and moved.previous == "submitting"
    assert r.get(k.request("fal", "r1")) == jid
    view = store.get(jid)
    assert view is not None and view.state is State.submitted and view.request_id == "r1"
    # a second move from the same state is refused, and its `before` commands still ran
    again = store.move(jid, [State.submitting], State.submitted, before=lambda p: p.set(k.request("fal", "r2"), jid))
    assert not again.ok and r.get(k.request("fal", "r2")) == jid


def test_a_job_coming_back_to_the_queue_goes_to_its_head(store: JobStore) -> None:
    """A retried job (or a claim recovered from a lost worker) has waited longest: it is claimed before the
    backlog, not after it (in a 1,000-job chaos run a job retried early was submitted last and finished a
    minute after every other job). New jobs keep their order."""
    ids = _create(store, "b10", 6)
    first, second = store.claim("fal", 2, 16, 0, 0, 60)
    assert [first, second] == ids[:2]
    assert store.move(first, [State.submitting], State.retry_wait, score=time.time()).ok
    assert store.move(first, [State.retry_wait], State.queued).ok  # its back-off is over
    assert store.move(second, [State.submitting], State.queued).ok  # recovered from a dead worker, never sent
    assert store.claim("fal", 64, 16, 0, 0, 60) == [second, first, *ids[2:]]


def test_async_moves_race_apply_once_wake_up_count_and_survive_lost_scripts(store: JobStore,
                                                                             stack_redis_url: str) -> None:
    """`amove` (the receiver's move on its loop's redis.asyncio client): the same script, reply and wake-ups as
    `move`; the second of two racing moves is refused; a lost script (a Redis restart) is loaded again."""
    import asyncio

    import redis.asyncio

    ids = _create(store, "b10", 3)
    claimed = store.claim("fal", 2, 10, 0, 0, 60)
    assert len(claimed) == 2  # one stays queued: a freed slot has work waiting
    sent: list[str] = []
    store.kick_ms = 5000
    store.on_ready = lambda: sent.append("collect")
    store.on_slot_freed = lambda provider: sent.append(f"dispatch:{provider}")

    async def run() -> None:
        ar = redis.asyncio.Redis.from_url(stack_redis_url, decode_responses=True)
        try:
            jid = claimed[0]
            with pytest.raises(ValueError, match="illegal transition"):
                await store.amove(ar, jid, [State.queued], State.succeeded)
            store._transition.sha = "0" * 40  # as after SCRIPT FLUSH: EVALSHA answers NOSCRIPT
            first, second = await asyncio.gather(
                store.amove(ar, jid, [State.submitting], State.ready, fields={"request_id": "r1", "n": 1},
                            found="fal|webhook"),
                store.amove(ar, jid, [State.submitting], State.ready, fields={"request_id": "r2"},
                            found="fal|webhook"))
            assert sorted([first.ok, second.ok]) == [False, True]
            assert sorted(sent) == ["collect", "dispatch:fal"]  # once, by the move that won
        finally:
            await ar.aclose()

    asyncio.run(run())
    view = store.get(claimed[0])
    assert view is not None and view.state is State.ready and view.request_id in ("r1", "r2")
    assert view.fields.get("n") in (None, "1")
    assert ids[2] not in claimed
    assert store.r.hgetall(store.k.stats_found) == {"fal|webhook": "1"}  # counted by the move that won, once
    # the sync move counts the same way; a refused one counts nothing
    assert store.move(claimed[1], [State.submitting], State.ready, found="fal|poll").ok
    assert not store.move(claimed[1], [State.submitting], State.ready, found="fal|poll").ok
    assert store.r.hgetall(store.k.stats_found) == {"fal|webhook": "1", "fal|poll": "1"}


def test_the_receivers_loop_client_is_one_per_loop_and_none_with_sentinel(monkeypatch: pytest.MonkeyPatch,
                                                                          stack_redis_url: str) -> None:
    """`loop_redis`: one redis.asyncio client per event loop (a client belongs to its loop); with Sentinel none,
    and the receiver makes its round trips on threads with the client that follows a failover."""
    import asyncio

    from editq.schemas.settings import get_settings
    from editq.worker.redis_client import loop_redis

    async def twice() -> tuple[object, object, object]:
        a, b = loop_redis(), loop_redis()
        pong = await a.ping()
        await a.connection_pool.disconnect()
        return a, b, pong

    monkeypatch.setenv("EDITQ_REDIS_URL", stack_redis_url)
    monkeypatch.delenv("EDITQ_REDIS_SENTINELS", raising=False)
    get_settings.cache_clear()
    try:
        a, b, pong = asyncio.run(twice())
        c, _, _ = asyncio.run(twice())
        assert a is b and pong is True and c is not a
        monkeypatch.setenv("EDITQ_REDIS_SENTINELS", "127.0.0.1:1")
        get_settings.cache_clear()
        assert asyncio.run(_none()) is None
    finally:
        get_settings.cache_clear()


async def _none() -> object:
    from editq.worker.redis_client import loop_redis

    return loop_redis()
