"""The enqueue writer thread (producer/api.py `ChunkWriter`): chunks land in order, a Redis failure in the
writer is raised by `submit_batch`, and the jobs written before it stay in a closed batch."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from editq.producer import api
from editq.producer.api import FIRST_CHUNK, submit_batch
from editq.producer.stack import LocalStack
from editq.worker.state import JobStore
from tests.conftest import EXAMPLES, unique

MUG = str(EXAMPLES / "mug.png")


def line(tag: str, i: int) -> dict[str, Any]:
    return {"custom_id": f"{tag}-{i}", "provider": "fal", "prompt": f"On an oak table {tag} {i}", "images": [MUG],
            "quality": "low", "size": "1024x1024"}


def test_chunks_land_in_order_so_a_repeat_in_a_later_chunk_is_a_duplicate(live: LocalStack) -> None:
    tag = unique("wr")
    n = FIRST_CHUNK + 20
    lines = [line(tag, i) for i in range(n)] + [line(tag, i) for i in range(5)]  # the repeats: a later chunk
    report = submit_batch(lines, keep_ids=True)
    assert report.enqueued == n and not report.invalid
    assert [ln for ln, _ in report.duplicates] == list(range(n + 1, n + 6))
    assert [jid for _, jid in report.duplicates] == report.job_ids[:5]
    store = JobStore()
    assert store.r.lrange(store.k.batch_jobs(report.batch_id), 0, -1) == report.job_ids


def test_a_redis_failure_in_the_writer_is_raised_and_the_written_chunk_stays(
        live: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = unique("wrfail")
    real = api.Enqueuer.store_chunk
    calls: list[int] = []

    def failing(self: api.Enqueuer, jobs: list[Any], report: api.BatchReport) -> set[str]:
        calls.append(len(jobs))
        if len(calls) == 2:
            raise redis.ConnectionError("Redis went away (test)")
        return real(self, jobs, report)

    monkeypatch.setattr(api.Enqueuer, "store_chunk", failing)
    batch_id = f"batch_{tag}"
    with pytest.raises(redis.ConnectionError, match="went away"):
        submit_batch([line(tag, i) for i in range(FIRST_CHUNK + 600)], batch_id=batch_id)
    store = JobStore()
    raw = store.r.hgetall(store.k.batch(batch_id))
    assert calls[0] == FIRST_CHUNK and int(raw["total"]) == FIRST_CHUNK  # the first chunk landed, nothing after
    assert store.r.llen(store.k.batch_jobs(batch_id)) == FIRST_CHUNK
    assert raw.get("closed") == "1"  # closed (worker/lua/close.lua): what was enqueued runs to its manifest
