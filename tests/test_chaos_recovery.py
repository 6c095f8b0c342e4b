"""Recovery that does not wait out leases: dead workers' claims, the moment a request may reach the provider,
and jobs whose webhook is late or lost. Real Redis, the sandbox over HTTP, no worker running."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from editq import providers
from editq.producer.api import submit
from editq.producer.stack import LocalStack, free_port
from editq.providers.types import ProviderRequest
from editq.worker import aio
from editq.worker.errors import ProviderError
from editq.worker.pipeline import Pipeline
from editq.worker.provider_client import client_for, on_wire
from editq.worker.state import JobStore, State
from tests.conftest import EXAMPLES, SANDBOX_SEED, unique, wait_for


@pytest.fixture(scope="module")
def bare() -> Iterator[LocalStack]:
    with LocalStack(workers=0, sandbox_opts={"latency_s": 1.0, "jitter_s": 0.0, "seed": SANDBOX_SEED}) as s:
        yield s


def _job(store: JobStore, tag: str) -> str:
    job_id = submit({"prompt": unique(tag), "images": [str(EXAMPLES / "mug.png")]})
    assert job_id in store.claim("fal", 100, 100, 0, 0, 3600)  # a lease far away
    return job_id


def _entry(store: JobStore, job_id: str, attempt: int = 1) -> dict:  # type: ignore[type-arg]
    return json.loads(store.r.hget(store.k.job(job_id), f"req.{attempt}") or "{}")


def _tick(p: Pipeline, reap: bool) -> dict[str, int]:
    p.r.delete(p.k.tick_lock)  # one tick per call, whatever the last one left
    return p.tick(reap=reap)


def test_a_dead_workers_claims_are_recovered_at_once(bare: LocalStack) -> None:
    bare.apply_env()
    p = Pipeline()
    store = p.store
    now = time.time()
    unsent, sent, alive = _job(store, "unsent"), _job(store, "sent"), _job(store, "alive")
    for jid, owner, status in ((unsent, "dead-host:1", "sending"), (sent, "dead-host:1", "sent"),
                               (alive, "live-host:2", "sent")):
        store.set_fields(jid, owner=owner, **{"req.1": json.dumps({"attempt": 1, "provider": "fal", "status": status})})
    collecting = _job(store, "collect")
    assert store.move(collecting, [State.submitting], State.ready).ok
    assert store.move(collecting, [State.ready], State.collecting, score=now + 3600).ok
    store.set_fields(collecting, owner="dead-host:1")
    p.r.zadd(p.k.alive, {"dead-host:1": now - 60, "live-host:2": now})

    _tick(p, reap=False)  # a worker just reconnected does not judge the others
    assert {store.get(j).state for j in (unsent, sent, collecting)} == {State.submitting, State.collecting}  # type: ignore[union-attr]

    stats = _tick(p, reap=True)
    assert stats["reaped"] == 3 and stats["recovered"] == 2 and stats["recollect"] == 1
    assert store.get(unsent).state is State.queued and store.get(sent).state is State.queued  # type: ignore[union-attr]
    assert store.get(collecting).state is State.ready  # type: ignore[union-attr]
    assert store.get(alive).state is State.submitting  # type: ignore[union-attr]
    # never connected to the provider: not sent; connected: may have been billed
    assert _entry(store, unsent)["status"] == "not_sent"
    assert _entry(store, sent)["status"] == "uncertain"
    assert p.r.zrange(p.k.alive, 0, -1) == ["live-host:2"]


def test_a_worker_lost_right_after_its_claim_still_owns_it_and_is_recovered_at_once(bare: LocalStack) -> None:
    """The owner is written by the claim script itself: a worker killed between the claim and its next write
    (seen in CI: two Oxen jobs `submitting` with no owner and no attempt record, left to the synchronous
    provider's 360 s lease) is reaped like any other. With no attempt record its attempt is `uncertain`: Redis
    losing its last writes could have dropped a `sent` record, and a second charge is never hidden."""
    bare.apply_env()
    p = Pipeline()
    store = p.store
    now = time.time()
    job_id = submit({"prompt": unique("claim-only"), "images": [str(EXAMPLES / "mug.png")], "provider": "oxen"})
    assert store.claim("oxen", 100, 100, 0, 0, 3600, owner="gone-host:7:a1b2c3") == [job_id]
    assert p.r.hget(p.k.job(job_id), "owner") == "gone-host:7:a1b2c3"
    assert _entry(store, job_id) == {}  # lost before its attempt record
    p.r.delete(p.k.alive)  # this module's stack runs no worker: only the two lives below are listed
    p.r.zadd(p.k.alive, {"gone-host:7:a1b2c3": now - 60, "gone-host:7:d4e5f6": now})  # same pid, a new life

    stats = _tick(p, reap=True)
    assert stats["reaped"] == 1 and stats["recovered"] == 1
    view = store.get(job_id)
    assert view is not None and view.state is State.queued
    assert _entry(store, job_id)["status"] == "uncertain"
    assert p.r.zrange(p.k.alive, 0, -1) == ["gone-host:7:d4e5f6"]


def test_a_submit_step_that_raises_hands_its_job_to_the_next_tick_not_to_its_lease(
        bare: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error outside the provider error boundary (a defect, Redis gone for longer than its retries) must not
    leave the job `submitting` for its whole lease: it is due at once and the tick requeues it."""
    bare.apply_env()
    p = Pipeline()
    job_id = submit({"prompt": unique("raises"), "images": [str(EXAMPLES / "mug.png")], "provider": "oxen"})
    adapter = providers.protocol_of("oxen")

    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a defect in the adapter")

    monkeypatch.setattr(adapter, "submit", broken)
    before = time.time()
    assert aio.run(p.dispatch("oxen")) >= 1  # with any Oxen job an earlier test left queued
    view = p.store.get(job_id)
    assert view is not None and view.state is State.submitting
    lease_end = p.r.zscore(p.k.inflight, job_id)
    assert lease_end is not None and lease_end <= time.time()  # due now, not timeout + 60 s ahead
    assert lease_end >= before
    monkeypatch.undo()

    stats = _tick(p, reap=False)
    assert stats["recovered"] >= 1
    view = p.store.get(job_id)
    assert view is not None and view.state is State.queued
    assert _entry(p.store, job_id)["status"] == "not_sent"  # the broken submit never opened a connection


def test_a_queue_providers_submit_that_raises_after_it_went_on_the_wire_keeps_its_lease(
        bare: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider may have accepted it: its webhook or the sweep can still re-attach the job, so it is not
    made due (which would record it `uncertain` and send it again at once); its lease recovers it otherwise."""
    bare.apply_env()
    p = Pipeline()
    job_id = submit({"prompt": unique("raises-sent"), "images": [str(EXAMPLES / "mug.png")], "provider": "fal"})
    adapter = providers.protocol_of("fal")

    async def sent_then_broken(*_: object, **__: object) -> None:
        mark = on_wire.get()
        assert mark is not None
        pending = mark()  # a connection to the provider was open for it
        if pending is not None:  # the mark's round trip, shared with other submits (worker/roundtrips.py)
            await pending
        raise RuntimeError("a defect after the request left")

    monkeypatch.setattr(adapter, "submit", sent_then_broken)
    before = time.time()
    assert aio.run(p.dispatch("fal")) >= 1
    monkeypatch.undo()
    view = p.store.get(job_id)
    assert view is not None and view.state is State.submitting
    assert _entry(p.store, job_id)["status"] == "sent"
    lease_end = p.r.zscore(p.k.inflight, job_id)
    assert lease_end is not None and lease_end >= before + p.settings.submit_lease_s - 1


def test_the_wire_mark_fires_once_a_connection_to_the_provider_is_open(bare: LocalStack) -> None:
    bare.apply_env()
    sandbox = bare.env["EDITQ_SANDBOX_URL"]
    refused = f"http://127.0.0.1:{free_port()}/x"

    async def run() -> tuple[list[str], list[str]]:
        client = client_for("fal")
        marks: list[str] = []
        on_wire.set(lambda: marks.append("sent"))
        with pytest.raises(ProviderError, match="not sent"):
            await client.send(ProviderRequest("GET", refused, auth=False, what="submit"))
        assert marks == []  # never connected: nothing can have reached the provider
        for _ in range(2):
            await client.send(ProviderRequest("GET", f"{sandbox}/_sandbox/health", auth=False, what="submit"))
        unarmed: list[str] = []  # a request outside a submit (no mark set in this task) marks nothing
        await aio.http_client().get(f"{sandbox}/_sandbox/health")
        return marks, unarmed

    marks, unarmed = aio.run(run())
    assert marks == ["sent"] and unarmed == []


def test_a_submit_is_marked_sent_while_its_answer_is_awaited(bare: LocalStack) -> None:
    """The pipeline arms the mark for each submit: while the provider holds the request, the attempt reads
    `sent` (a worker lost now may have been billed); before the connection, `sending`."""
    bare.apply_env()
    sandbox = bare.env["EDITQ_SANDBOX_URL"]
    p = Pipeline()
    job_id = submit({"prompt": unique("wire"), "images": [str(EXAMPLES / "mug.png")]})
    httpx.patch(f"{sandbox}/_sandbox/config", json={"submit_timeout_rate": 1.0, "timeout_hold_s": 3}, timeout=10)
    try:
        t = threading.Thread(target=lambda: aio.run(p.dispatch("fal")))
        t.start()
        wait_for(lambda: _entry(p.store, job_id).get("status") == "sent", 10, "the attempt marked sent")
        assert p.store.get(job_id).state is State.submitting  # type: ignore[union-attr]
        t.join(30)
    finally:
        httpx.patch(f"{sandbox}/_sandbox/config", json={"submit_timeout_rate": 0.0}, timeout=10)
    assert _entry(p.store, job_id)["status"] == "failed"  # the 504 came back: not billed, retried


def test_with_webhooks_the_first_poll_comes_after_one_and_a_half_times_the_providers_latency(
        bare: LocalStack) -> None:
    """Not 60 s after the submit: a late or lost delivery would hold the provider slot that long and keep the
    last jobs of a batch waiting (worker/policy.py poll_delay)."""
    bare.apply_env()
    p = Pipeline()
    assert p.settings.webhook_base_url and p.settings.poll_interval_webhook_s == 60
    p.r.hset(p.k.latency_median, "fal", "4.0")  # its recent median latency (worker/events.py keeps it)
    p.r.delete(*(key for lane in ("bulk", "interactive")  # what earlier tests left queued
                 for key in (p.k.pending("fal", lane), p.k.fair("fal", lane))))
    job_id = submit({"prompt": unique("quiet"), "images": [str(EXAMPLES / "mug.png")]})
    sandbox = bare.env["EDITQ_SANDBOX_URL"]
    httpx.patch(f"{sandbox}/_sandbox/config", json={"latency_s": 10.0}, timeout=10)  # still running when we look
    try:
        before = time.time()
        aio.run(p.dispatch("fal"))
        view = p.store.get(job_id)
        assert view is not None and view.state is State.submitted
        score = p.r.zscore(p.k.inflight, job_id)
        assert before + 5 <= score <= time.time() + 6.5  # 1.5 x 4 s
    finally:
        httpx.patch(f"{sandbox}/_sandbox/config", json={"latency_s": 1.0}, timeout=10)


def test_ready_jobs_are_popped_and_claimed_in_one_step(bare: LocalStack) -> None:
    """Popping the ready list and moving the jobs to `collecting` in two round trips lost the popped jobs when
    the worker died (or its Redis connection dropped) in between: `ready`, in no index, collected by nobody
    (25 of 120 in a chaos run). One script does both: a popped job is always leased to a collector."""
    bare.apply_env()
    store = JobStore()
    store.r.delete(store.k.ready)
    a, b, gone = _job(store, "ready-a"), _job(store, "ready-b"), _job(store, "ready-gone")
    for jid in (a, b, gone):
        assert store.move(jid, [State.submitting], State.ready).ok
    assert store.move(gone, [State.ready], State.cancelled).ok  # still listed, no longer ready
    store.r.lrem(store.k.ready, 0, gone)
    store.r.lpush(store.k.ready, gone)
    until = time.time() + 120
    assert store.claim_ready(5, until, "me:1") == [a, b]  # the stale id is dropped on the way
    assert store.r.llen(store.k.ready) == 0
    for jid in (a, b):
        view = store.get(jid)
        assert view is not None and view.state is State.collecting
        assert (view.fields["owner"], view.fields["collect_attempts"]) == ("me:1", "1")
        assert abs(store.r.zscore(store.k.collecting, jid) - until) < 0.01
