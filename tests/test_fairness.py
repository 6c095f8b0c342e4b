"""Fair sharing between tenants on a real Redis: the claim script takes each job from the tenant lowest in
its lane's ring (worker/lua/fair.lua), so a tenant's first job does not wait behind another's backlog, and
backlogged tenants are served in proportion to their weights (EDITQ_TENANT_WEIGHTS)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from pydantic import ValidationError

from editq.schemas.job import EditJob, InputRecord
from editq.schemas.settings import get_settings
from editq.worker.metrics import RedisCollector
from editq.worker.state import JobStore, State
from tests.conftest import ROOT, unique

ROUND = 64  # one dispatch round claims up to submit_batch jobs (64 by default)


@pytest.fixture
def store(prefixed_store: Callable[[str], JobStore]) -> JobStore:
    return prefixed_store("editq-fair")


@pytest.fixture
def weights(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EDITQ_TENANT_WEIGHTS", json.dumps({"acme": 3, "globex": 1}))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _job(batch: str, tenant: str | None, lane: str = "bulk") -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=unique("job"), batch_id=batch, prompt="p", images=["a.png"], inputs=[rec],
                   idempotency_key=unique("idem"), tenant=tenant, priority=lane)


def _enqueue(store: JobStore, tenant: str | None, n: int, batches: int = 1, lane: str = "bulk") -> list[str]:
    """`n` jobs of `tenant` split over `batches` batches, created in one pipeline per batch."""
    ids: list[str] = []
    for b in range(batches):
        bid = unique(f"b{b}")
        pipe = store.r.pipeline(transaction=False)
        jobs = [_job(bid, tenant, lane) for _ in range(n // batches)]
        for job in jobs:
            store.create(job, pipe=pipe)
        assert all(res[0] == 1 for res in pipe.execute())
        ids += [j.job_id for j in jobs]
    return ids


def _round(store: JobStore, want: int = ROUND) -> list[str]:
    return store.claim("fal", want, 1_000_000, 0, 0, 600)


def test_a_new_tenant_is_claimed_within_two_rounds_behind_another_tenants_backlog(store: JobStore) -> None:
    a_jobs = _enqueue(store, "acme", 2000, batches=20)
    assert _round(store) == a_jobs[:ROUND]  # alone, a tenant is served in its enqueue order
    assert _round(store) == a_jobs[ROUND:2 * ROUND]
    (b_job,) = _enqueue(store, "globex", 1)
    rounds = [_round(store), _round(store)]
    assert b_job in rounds[0] + rounds[1]
    before = (rounds[0] + rounds[1]).index(b_job)  # claims of the next rounds that went before it
    assert before == 0, f"{before} claims went before the new tenant's first job"  # it joins ahead of the ring
    # nothing skipped or taken twice: acme's jobs still come in order around it
    taken_a = [j for j in rounds[0] + rounds[1] if j != b_job]
    assert taken_a == a_jobs[2 * ROUND:2 * ROUND + len(taken_a)]
    # ...and jobs without a tenant are one more tenant of their own
    (anon,) = _enqueue(store, None, 1)
    assert anon in _round(store)[:2]


def test_weights_share_the_claims_of_a_long_run(store: JobStore, weights: None) -> None:
    """acme 3 : globex 1 : no tenant 1 (the default weight), all three backlogged the whole run."""
    queued = {t: _enqueue(store, t, 600, batches=3) for t in ("acme", "globex", None)}
    owner = {jid: t for t, ids in queued.items() for jid in ids}
    taken: list[str] = []
    for _ in range(25):
        taken += _round(store, 20)
    counts = Counter(owner[j] for j in taken)
    total, weight = len(taken), {"acme": 3, "globex": 1, None: 1}
    assert total == 500
    for tenant, w in weight.items():
        expected = total * w / sum(weight.values())
        # start-time fair queuing: a backlogged tenant's claims differ from its weighted share by < 1 job
        assert abs(counts[tenant] - expected) <= 1, (tenant, counts, expected)
        # and each tenant's jobs were taken in its own enqueue order
        assert [j for j in taken if owner[j] == tenant] == queued[tenant][:counts[tenant]]
    # the rest drains completely: every job claimed exactly once, the rings and queues gone
    while more := _round(store):
        taken += more
    assert len(taken) == len(set(taken)) == len(owner)
    assert not store.has_queued("fal") and store.r.zcard(store.k.fair("fal", "bulk")) == 0


def test_lanes_keep_their_order_across_tenants(store: JobStore) -> None:
    """Every interactive job, of any tenant, before any bulk job; tenants share within each lane."""
    a_bulk = _enqueue(store, "acme", 200, batches=2)
    a_urgent = _enqueue(store, "acme", 40, lane="interactive")
    b_urgent = _enqueue(store, "globex", 2, lane="interactive")
    b_bulk = _enqueue(store, "globex", 2)
    first = _round(store, 48)
    assert set(first[:42]) == set(a_urgent + b_urgent)  # interactive first...
    assert set(b_urgent) <= set(first[:4])  # ...shared: globex's two do not wait behind acme's 40
    assert set(b_bulk) <= set(first[42:]) and first[42:] == [j for j in first[42:] if j in b_bulk or j in a_bulk[:4]]


def test_a_job_back_in_the_queue_rejoins_its_tenant_and_stale_ids_cost_nothing(store: JobStore) -> None:
    a = _enqueue(store, "acme", 6)
    b = _enqueue(store, "globex", 6)
    (first,) = _round(store, 1)
    assert store.move(first, [State.submitting], State.retry_wait, score=1.0).ok
    assert store.move(first, [State.retry_wait], State.queued).ok  # a retry: back at the head of its tenant's queue
    assert store.r.lrange(store.k.pending_tenant("fal", "bulk", "acme" if first in a else "globex"), 0, 0) == [first]
    for jid in b[1:]:  # globex cancels all but one (their ids stay in its queue until a claim pops them)
        assert store.move(jid, [State.queued], State.cancelled).ok
    taken = _round(store, 100)
    assert sorted(taken) == sorted(a + b[:1])  # cancelled ones dropped, nothing else lost
    assert not store.has_queued("fal")


def test_jobs_queued_before_the_upgrade_are_adopted(store: JobStore) -> None:
    """A deployment upgraded with jobs in the one list per lane it had: they are served as the jobs without a
    tenant (whatever their tenant), alongside the new queues."""
    old = _enqueue(store, "acme", 3)
    r, k = store.r, store.k
    r.delete(k.fair("fal", "bulk"), k.pending_tenant("fal", "bulk", "acme"))
    r.rpush(k.pending("fal", "bulk"), *old)  # the layout before tenants had queues
    assert store.has_queued("fal")
    new = _enqueue(store, "acme", 3)
    assert sorted(_round(store)) == sorted(old + new)


def test_concurrent_claimers_share_without_loss_or_double_claims(store: JobStore) -> None:
    owner = {jid: t for t in ("acme", "globex", "initech") for jid in _enqueue(store, t, 300, batches=3)}
    taken: list[str] = []
    lock = threading.Lock()

    def claimer() -> None:
        s = JobStore(store.r, store.k)
        while got := s.claim("fal", 7, 1_000_000, 0, 0, 600):
            with lock:
                taken.extend(got)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == len(set(taken)) == len(owner)
    assert not store.has_queued("fal") and store.r.zcard(store.k.slots("fal")) == len(owner)


def test_the_oldest_queued_age_looks_at_every_tenants_queue(store: JobStore) -> None:
    (old,) = _enqueue(store, "acme", 1)
    store.r.hset(store.k.job(old), "updated_at", "1000.0")  # queued long ago
    _enqueue(store, "globex", 1)
    _enqueue(store, None, 1)
    families = {m.name: m for m in RedisCollector(store.r, store.k).collect()}
    ages = {tuple(s.labels.values()): s.value for s in families["editq_oldest_queued_job_age_seconds"].samples}
    assert ages[("fal", "bulk")] > 1_000_000  # acme's job, though globex's and the untenanted are newer


def test_the_benchmark_runs_and_reports_the_new_tenant_first() -> None:
    """A tiny run of `python -m editq.bench.fairness` (its own Redis): says nothing about speed."""
    proc = subprocess.run([sys.executable, "-m", "editq.bench.fairness", "--jobs", "600", "--batches", "6",
                           "--rounds", "3", "--jobs-b", "200", "--tenants", "3", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["b_first"]["found"] and out["b_first"]["claims_before_it"] == 0
    assert out["b_first"]["rounds_until_claimed"] == 1
    assert out["a_and_b"]["split"] == {"A": 96, "B": 96} and out["a_alone"]["claimed"] == 192
    assert out["5_tenants"]["claimed"] == 192 and out["5_tenants"]["commands_per_job"] > 0


def test_weights_are_positive_and_the_empty_name_weighs_the_jobs_without_a_tenant(
        store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDITQ_TENANT_WEIGHTS", json.dumps({"acme": 0}))
    get_settings.cache_clear()
    with pytest.raises(ValidationError):
        get_settings()
    monkeypatch.setenv("EDITQ_TENANT_WEIGHTS", json.dumps({"": 3}))
    monkeypatch.setenv("EDITQ_TENANT_WEIGHT_DEFAULT", "1")
    get_settings.cache_clear()
    try:
        anon = set(_enqueue(store, None, 40))
        _enqueue(store, "acme", 40)
        taken = _round(store, 20)
        assert abs(sum(j in anon for j in taken) - 15) <= 1  # 3 : 1
    finally:
        get_settings.cache_clear()
