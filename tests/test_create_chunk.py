"""create.lua takes a chunk of jobs: one call for N jobs leaves exactly the Redis records N calls of one leave
(job hashes, idempotency keys, queues and the tenants' fair ring, counters, the batch's job list and custom_ids,
a replaced job's `superseded_by`), and answers the same (created, id) per job, duplicates within the chunk too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from editq.schemas.job import EditJob, InputRecord
from editq.worker.keys import Keys
from editq.worker.state import JobStore, State, create_entry
from tests.conftest import unique

WORST = {"fal": 123_000, "replicate": 456_000}


@pytest.fixture
def r(stack_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack_redis_url, decode_responses=True)
    prefixes: list[str] = []
    client.prefixes = prefixes  # type: ignore[attr-defined]
    yield client
    for prefix in prefixes:
        for key in Keys(prefix).scan(client):
            client.delete(key)


def _store(r: redis.Redis) -> JobStore:
    prefix = unique("editq-chunk")
    r.prefixes.append(prefix)  # type: ignore[attr-defined]
    return JobStore(r, Keys(prefix))


def _job(i: int, idem: str, **kw: Any) -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=f"job_{i}", batch_id=kw.pop("batch", "b1"), prompt=f"p{i}", images=["a.png"],
                   inputs=[rec], idempotency_key=idem, created_at=1000.0 + i, **kw)


def _jobs() -> list[EditJob]:
    """Duplicates within the chunk (k1, k5), a key held by a failed job (k-old: replaced), a custom_id used
    twice, three tenants and no tenant, two lanes, a fallback route, two batches."""
    return [
        _job(1, "k1", custom_id="c1"), _job(2, "k2", tenant="acme", custom_id="c1"), _job(3, "k1"),
        _job(4, "k-old", custom_id="c4"), _job(5, "k5", priority="interactive", tenant="acme"),
        _job(6, "k6", provider="replicate,fal", tenant="zed"), _job(7, "k7", batch="b2", custom_id="c7"),
        _job(8, "k5"), _job(9, "k9", tenant="acme"), _job(10, "k10", tenant="zed", priority="interactive"),
    ]


def _dump(store: JobStore) -> dict[str, Any]:
    """Every key under the store's prefix with its value (and whether it expires); the failed job's last
    change (stamped with the clock) left out."""
    r, out = store.r, {}
    for key in Keys(store.k.prefix).scan(r):
        kind = r.type(key)
        value: Any
        if kind == "hash":
            value = r.hgetall(key)
            if key == store.k.job("job_0"):
                value.pop("updated_at", None)
                value.pop("h", None)
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        else:
            value = r.get(key)
        out[key] = (kind, value, r.ttl(key) > 0)
    return out


def _relative(dump: dict[str, Any], store: JobStore) -> dict[str, Any]:
    return {key[len(store.k.prefix):]: value for key, value in dump.items()}


def _with_failed_job(store: JobStore) -> None:
    old = _job(0, "k-old", custom_id="c0")
    assert store.create(old) == [1, "job_0"]
    assert store.move("job_0", [State.queued], State.failed).ok


def test_a_chunk_leaves_the_records_of_one_call_per_job(r: redis.Redis) -> None:
    one, chunk = _store(r), _store(r)
    _with_failed_job(one)
    _with_failed_job(chunk)
    singles = [tuple(one.create(job, worst_case=WORST)) for job in _jobs()]
    together = chunk.create_many([create_entry(job, worst_case=WORST) for job in _jobs()])

    assert [(bool(c), jid) for c, jid in singles] == together
    assert together == [(True, "job_1"), (True, "job_2"), (False, "job_1"), (True, "job_4"), (True, "job_5"),
                        (True, "job_6"), (True, "job_7"), (False, "job_5"), (True, "job_9"), (True, "job_10")]
    b = _dump(chunk)
    assert _relative(_dump(one), one) == _relative(b, chunk)
    # and what they hold is what a queued job is
    k = chunk.k
    job4 = b[k.job("job_4")][1]
    assert job4["state"] == "queued" and job4["batch_id"] == "b1" and job4["wc.fal"] == "123000"
    assert b[k.job("job_0")][1]["superseded_by"] == "job_4"
    assert b[k.batch_jobs("b1")][1] == ["job_0", "job_1", "job_2", "job_4", "job_5", "job_6", "job_9", "job_10"]
    assert b[k.batch("b1")][1]["total"] == "8" and b[k.batch("b2")][1]["total"] == "1"
    assert b[k.batch_cids("b1")][1] == {"c0": "job_0", "c1": "job_1", "c4": "job_4"}
    assert b[k.pending_tenant("fal", "bulk", "acme")][1] == ["job_2", "job_9"]


def test_a_chunk_is_read_later(r: redis.Redis) -> None:
    """send_create_many returns at once; the reply (read later) is the one create_many gives, and a chunk sent
    after it sees its keys."""
    store = _store(r)
    jobs = _jobs()
    first = store.send_create_many([create_entry(j) for j in jobs[:5]])
    assert first.result() == [(True, "job_1"), (True, "job_2"), (False, "job_1"), (True, "job_4"), (True, "job_5")]
    with pytest.raises(RuntimeError):
        first.result()
    second = store.send_create_many([create_entry(j) for j in jobs[5:]])
    assert second.result() == [(True, "job_6"), (True, "job_7"), (False, "job_5"), (True, "job_9"), (True, "job_10")]


def test_a_chunk_survives_redis_not_knowing_the_script(r: redis.Redis) -> None:
    """(As after a Redis restart: EVALSHA answers NOSCRIPT; the script is loaded and the chunk runs once.) The
    shared test Redis keeps its scripts: this store asks for one by a sha Redis never saw."""
    store = _store(r)
    store._create.sha = "0" * 40
    assert store.create_many([create_entry(j) for j in _jobs()[:2]]) == [(True, "job_1"), (True, "job_2")]
