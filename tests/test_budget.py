"""Budgets on real Redis: the claim script reserves each job's worst case against its batch and tenant caps,
the move script settles it on every way out of the provider's hands, and no number of concurrent claimers
commits a cent over a cap (64 claimers in two worker processes)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from editq.schemas.job import EditJob, InputRecord
from editq.schemas.settings import get_settings
from editq.worker.state import MICRO, JobStore, State, batch_scope, tenant_scope
from tests.conftest import ROOT, unique

NOW = 1_796_040_000.0  # a fixed instant (2026-12-01 12:00 UTC): the tenant's day never turns mid-test
DAY = int(NOW // 86400)


@pytest.fixture
def store(prefixed_store: Callable[[str], JobStore]) -> JobStore:
    return prefixed_store("editq-budget")


@pytest.fixture
def tenant_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("EDITQ_TENANT_BUDGETS", json.dumps({"acme": 1.0}))
    monkeypatch.setenv("EDITQ_TENANT_BUDGET_DEFAULT", "0.5")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _job(batch: str, tenant: str | None = None) -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=unique("job"), batch_id=batch, prompt="p", images=["a.png"], inputs=[rec],
                   idempotency_key=unique("idem"), tenant=tenant)


def _create(store: JobStore, batch: str, costs: list[float], tenant: str | None = None) -> list[str]:
    ids = []
    for usd in costs:
        job = _job(batch, tenant)
        assert store.create(job, worst_case={"fal": round(usd * MICRO), "replicate": round(usd * MICRO)})[0] == 1
        ids.append(job.job_id)
    return ids


def _budget(store: JobStore, batch: str, usd: float, on_budget: str = "wait") -> None:
    store.r.hset(store.k.batch(batch), mapping={"max_cost": round(usd * MICRO), "on_budget": on_budget})


def _money(store: JobStore, batch: str) -> tuple[int, int]:
    raw = store.r.hgetall(store.k.batch(batch))
    return int(raw.get("committed", 0)), int(raw.get("spent", 0))


def _claim(store: JobStore, want: int = 64) -> tuple[list[str], list[str]]:
    return store.claim_budgeted("fal", want, 1000, 0, 0, 600, now=NOW)


def test_a_claim_reserves_the_worst_case_and_a_job_over_budget_waits_visibly(store: JobStore) -> None:
    b = unique("b")
    _budget(store, b, 0.50)
    ids = _create(store, b, [0.22, 0.22, 0.41, 0.05])
    claimed, failing = _claim(store)
    # 0.22 + 0.22 fit; 0.41 would make 0.85; 0.05 still fits after it (a dear job never blocks a cheap one)
    assert claimed == [ids[0], ids[1], ids[3]] and failing == []
    assert _money(store, b) == (490_000, 0)
    view = store.get(ids[2])
    assert view is not None and view.state is State.budget_wait
    assert view.fields["budget_reason"] == ("batch budget $0.50: $0.44 committed, this job needs up to $0.41 on fal")
    assert store.batch_counts(b) == {"total": 4, "n_queued": 0, "n_submitting": 3, "n_budget_wait": 1}
    assert store.r.lrange(store.k.budget_wait(batch_scope(b)), 0, -1) == [ids[2]]
    assert store.budget_scopes() == [batch_scope(b)]
    # nothing fits until money is released or the cap raised: the waiting job stays where it is
    assert store.release_budget(batch_scope(b), now=NOW) == 0
    _budget(store, b, 0.90)
    assert store.release_budget(batch_scope(b), now=NOW) == 1
    assert store.budget_scopes() == []
    assert _claim(store)[0] == [ids[2]] and _money(store, b) == (900_000, 0)


def test_on_budget_fail_hands_the_jobs_to_the_caller_to_fail(store: JobStore) -> None:
    b = unique("b")
    _budget(store, b, 0.10, on_budget="fail")
    ids = _create(store, b, [0.06, 0.06])
    claimed, failing = _claim(store)
    assert claimed == [ids[0]] and failing == [ids[1]]
    assert store.move(ids[1], [State.budget_wait], State.failed).ok
    assert _money(store, b) == (60_000, 0)  # the failed one never reserved anything
    assert store.release_budget(batch_scope(b), now=NOW) == 0 and store.budget_scopes() == []


def test_settling_releases_keeps_or_adjusts_on_every_way_out(store: JobStore) -> None:
    b = unique("b")
    ids = _create(store, b, [0.41] * 6)
    assert len(_claim(store)[0]) == 6
    assert _money(store, b) == (6 * 410_000, 0)
    # a failure the provider did not bill: released
    assert store.move(ids[0], [State.submitting], State.retry_wait, score=NOW, fields={"settle": "0"}).ok
    # an attempt that may have been billed (answer lost): the default keeps it all
    assert store.move(ids[1], [State.submitting], State.queued).ok
    # success: adjusted to the real cost (the provider's figure or the estimate from the outputs)
    for jid in ids[2:4]:
        assert store.move(jid, [State.submitting], State.submitted).ok
        assert store.move(jid, [State.submitted], State.ready).ok
        assert store.move(jid, [State.ready], State.collecting).ok
    assert store.move(ids[2], [State.collecting], State.succeeded, fields={"settle": "60000"}).ok
    assert store.move(ids[3], [State.collecting], State.failed).ok  # outputs lost after billing: kept
    assert store.move(ids[4], [State.submitting], State.cancelled).ok  # cancelled in flight: kept
    assert store.move(ids[5], [State.submitting], State.failed, fields={"settle": "all"}).ok
    committed, spent = _money(store, b)
    assert spent == 410_000 + 60_000 + 410_000 + 410_000 + 410_000
    assert committed == spent  # nothing is in flight any more: committed is exactly what was spent
    for jid in ids:
        v = store.get(jid)
        assert v is not None and v.fields.get("resv", "0") == "0" and "settle" not in v.fields
    assert store.get(ids[0]).fields["spent"] == "0"  # type: ignore[union-attr]
    # the kept attempt is claimed again and reserves again (it may be billed twice: both are counted)
    store.move(ids[0], [State.retry_wait], State.queued)
    assert sorted(_claim(store)[0]) == sorted([ids[0], ids[1]])
    assert _money(store, b) == (spent + 2 * 410_000, spent)


def test_tenant_daily_budgets_from_settings_and_overridden_in_redis(store: JobStore, tenant_env: None) -> None:
    b1, b2 = unique("b"), unique("b")
    a = _create(store, b1, [0.41, 0.41], tenant="acme") + _create(store, b2, [0.41], tenant="acme")
    other = _create(store, b2, [0.41, 0.41], tenant="zeta")  # not listed: the default, $0.50
    claimed, _ = _claim(store)
    assert sorted(claimed) == sorted([a[0], a[1], other[0]])  # acme: 0.82 of 1.00; zeta: 0.41 of 0.50
    tk = store.k.tenant_day("acme", DAY)
    assert store.r.hget(tk, "committed") == "820000" and store.r.ttl(tk) > 86400
    waiting = store.get(a[2])
    assert waiting is not None and waiting.state is State.budget_wait
    assert waiting.fields["budget_reason"].startswith("tenant acme daily budget $1.00: $0.82 committed")
    assert store.get(other[1]).state is State.budget_wait  # type: ignore[union-attr]
    # `editq budget --tenant acme --max-cost 2` (Redis) overrides the settings' $1.00
    store.r.hset(store.k.tenant_budgets, "acme", 2 * MICRO)
    assert store.release_budget(tenant_scope("acme"), now=NOW) == 1
    assert _claim(store)[0] == [a[2]]
    # the next UTC day starts from nothing
    assert store.release_budget(tenant_scope("zeta"), now=NOW + 86400) == 1
    assert store.claim_budgeted("fal", 8, 1000, 0, 0, 600, now=NOW + 86400)[0] == [other[1]]
    assert store.r.hget(store.k.tenant_day("zeta", DAY + 1), "committed") == "410000"


def test_64_concurrent_claimers_in_two_processes_never_commit_over_the_caps(
        store: JobStore, stack_redis_url: str) -> None:
    """The gateway failure the issue cites (5 concurrent requests against a $0.45 cap spent $0.60) cannot
    happen: every reservation is made inside the one claim script. Two batches with a $30 cap each share a
    tenant with a $45 daily cap; 1,600 jobs of $0.06-$0.41; two processes of 32 claimers claim, fail (release)
    and hold jobs concurrently while a watcher reads the committed money all along."""
    rnd = random.Random(7)
    costs = [0.06, 0.11, 0.23, 0.41]
    batches = [unique("race-a"), unique("race-b")]
    caps = {batches[0]: 30.0, batches[1]: 30.0}
    tenant_cap = 45
    env = {**os.environ, "EDITQ_TENANT_BUDGETS": json.dumps({"acme": float(tenant_cap)})}
    jobs: dict[str, float] = {}
    for b in batches:
        _budget(store, b, caps[b])
        for usd in [rnd.choice(costs) for _ in range(800)]:
            jobs[_create(store, b, [usd], tenant="acme")[0]] = usd
    tenant_key = store.k.tenant_day("acme", DAY)
    seen = {b: 0 for b in [*batches, "tenant"]}
    stop = threading.Event()

    def watch() -> None:  # committed money as any observer sees it, while the race runs
        r = redis.Redis.from_url(stack_redis_url, decode_responses=True)
        while not stop.is_set():
            pipe = r.pipeline(transaction=True)  # one consistent snapshot of the three counters
            for b in batches:
                pipe.hget(store.k.batch(b), "committed")
            pipe.hget(tenant_key, "committed")
            values = [int(v or 0) for v in pipe.execute()]
            for name, v in zip([*batches, "tenant"], values, strict=True):
                seen[name] = max(seen[name], v)

    watcher = threading.Thread(target=watch)
    watcher.start()
    # the barrier the 64 claimers of both processes meet at after their first claim (test keys, deleted after)
    barrier = [unique("budget-race-count"), unique("budget-race-gate")]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.budget_race", stack_redis_url, store.k.prefix, "fal",
                               "32", str(seed), repr(NOW), *barrier], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stdin=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    try:
        for p in procs:  # both processes are up, their 64 claimers parked on a barrier
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        store.r.delete(*barrier)
        stop.set()
        watcher.join()
    assert [p.returncode for p in procs] == [0, 0]
    # both processes were in the race: each of its 32 claimers held a first job before any claimed a second
    assert all(len(o["claimed"]) >= 32 for o in outs), [len(o["claimed"]) for o in outs]
    claims = [j for o in outs for j in o["claimed"]]
    assert len(claims) == len(set(claims)) > 200  # no job was claimed twice
    # caps held at every moment the watcher looked, and at the end
    assert seen[batches[0]] <= 30 * MICRO and seen[batches[1]] <= 30 * MICRO and seen["tenant"] <= tenant_cap * MICRO
    # quiesce: let what the releasers freed be claimed, until nothing moves
    for env_key, value in (("EDITQ_TENANT_BUDGETS", env["EDITQ_TENANT_BUDGETS"]),):
        os.environ[env_key] = value
    get_settings.cache_clear()
    try:
        while True:
            moved = sum(store.release_budget(s, now=NOW) for s in store.budget_scopes())
            got, _ = _claim(store, 1000)
            if not moved and not got:
                break
    finally:
        os.environ.pop("EDITQ_TENANT_BUDGETS", None)
        get_settings.cache_clear()
    views = {v.job_id: v for v in store.get_many(list(jobs)) if v is not None}
    held = {b: 0 for b in batches}
    for v in views.values():
        assert v.state in (State.submitted, State.failed, State.budget_wait, State.submitting), v.state
        if v.state in (State.submitted, State.submitting):
            assert int(v.fields["resv"]) == round(jobs[v.job_id] * MICRO)
            held[v.job.batch_id] += int(v.fields["resv"])
        else:
            assert v.fields.get("resv", "0") == "0"  # released on failure, or never reserved
    tenant_committed = int(store.r.hget(tenant_key, "committed") or 0)
    assert tenant_committed == sum(held.values()) <= tenant_cap * MICRO
    for b in batches:
        committed, spent = _money(store, b)
        assert spent == 0 and committed == held[b] <= caps[b] * MICRO  # exact: only what is held
    # ...and exactly: a job still waiting does not fit what its budgets have left
    room_tenant = tenant_cap * MICRO - tenant_committed
    for v in views.values():
        if v.state is State.budget_wait:
            need = round(jobs[v.job_id] * MICRO)
            room_batch = caps[v.job.batch_id] * MICRO - held[v.job.batch_id]
            assert need > min(room_batch, room_tenant), (need, room_batch, room_tenant)
    assert any(v.state is State.budget_wait for v in views.values())  # the caps did bind


def test_the_metrics_read_every_budget_in_force(store: JobStore, tenant_env: None) -> None:
    from editq.worker import budgets, metrics

    assert budgets.readings in metrics.BUDGET_READERS or not metrics.BUDGET_READERS  # (another test may clear it)
    b = unique("b")
    _budget(store, b, 2.0)
    store.r.sadd(store.k.budget_batches, b)
    _create(store, b, [0.41], tenant="acme")
    _claim(store)
    store.r.hset(store.k.tenant_budgets, "zeta", 3 * MICRO)
    got = sorted(budgets.readings(store.r, store.k, now=NOW))
    assert got == sorted([(batch_scope(b), 2.0, 1.59), (tenant_scope("acme"), 1.0, 0.59),
                          (tenant_scope("zeta"), 3.0, 3.0)])
