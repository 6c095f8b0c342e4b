"""Redis failover under a running batch: a real primary, replica and three sentinels; editq (workers,
receiver, producer) and Celery find the primary through the sentinels; the primary is SIGKILLed mid-batch,
the sentinels promote the replica, and every job still finishes once: nothing lost, nothing paid twice
(the sandbox's request log has exactly one request per job). An `editq.aio.wait` started before the kill
polls through the sentinels (its Sentinel path) and returns the batch's final status after the failover."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import editq
from editq.producer import api
from editq.producer.api import status, submit_batch, wait
from editq.producer.stack import LocalStack
from editq.schemas.settings import get_settings
from tests import e2e
from tests.conftest import EXAMPLES, wait_for
from tests.redis_ha import RedisHA, redis_ha

N = 40


class AioWait:
    """`editq.aio.wait(batch)` on an event loop of its own in a thread, started now; `result()` joins it.
    Counts the status reads it makes in threads: 2 on the loop-client path, one per poll more via Sentinel."""

    def __init__(self, batch_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        self.outcome: editq.Status | BaseException | None = None
        real = api.status

        def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
            if threading.current_thread() is not threading.main_thread():
                self.reads += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(api, "status", counted)
        self.thread = threading.Thread(target=self._run, args=(batch_id,))
        self.thread.start()

    def _run(self, batch_id: str) -> None:
        try:
            self.outcome = asyncio.run(editq.aio.wait(batch_id, timeout=300, interval=0.2))
        except BaseException as exc:
            self.outcome = exc

    def result(self) -> editq.Status:
        self.thread.join(timeout=330)
        assert not self.thread.is_alive(), "editq.aio.wait did not return"
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        assert self.outcome is not None
        return self.outcome


def test_a_primary_killed_mid_batch_fails_over_and_every_job_finishes_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with redis_ha(tmp_path) as ha:
        extra = {**ha.env(), "EDITQ_FAL_CONCURRENCY": "6", "EDITQ_INTERACTIVE_RESERVE": "0",
                 "EDITQ_POLL_INTERVAL_WEBHOOK_S": "3", "EDITQ_SUBMIT_LEASE_S": "20", "EDITQ_COLLECT_LEASE_S": "20"}
        opts = {"latency_s": 0.5, "jitter_s": 0.2, "concurrency": 16, "seed": 11}
        for stack in e2e.start(True, extra, sandbox_opts=opts, workers=2, keep_env=True,
                               redis_url=extra["EDITQ_REDIS_URL"]):
            _failover_mid_batch(stack, ha, monkeypatch)


def _failover_mid_batch(stack: LocalStack, ha: RedisHA, monkeypatch: pytest.MonkeyPatch) -> None:
    with e2e.using(stack):
        assert get_settings().redis_sentinels  # editq.aio.wait takes its Sentinel path
        lines = [{"custom_id": f"f{i}", "prompt": f"failover {i}", "images": ["mug.png"]} for i in range(N)]
        report = submit_batch(lines, base_dir=EXAMPLES)
        bid = report.batch_id
        aio_wait = AioWait(bid, monkeypatch)  # waits across the failover
        wait_for(lambda: status(bid)["counts"].get("succeeded", 0) >= 6, 90, "a few jobs done")
        assert status(bid)["counts"].get("succeeded", 0) < N  # mid-batch
        old = ha.master_port()
        ha.kill_primary()
        wait_for(lambda: ha.master_port() != old, 60, "the sentinels to promote the replica")
        assert ha.master_port() == ha.replica
        restarts: list[str] = []

        def finished() -> dict[str, int] | None:
            # the supervisor's part (Kubernetes restarts an exited container whatever its exit code): Celery's
            # consumer can still exit on a broker failover (kombu's reconnect bug; "a worker rides through a
            # Redis restart" is handled elsewhere); the jobs must not suffer from it
            for name in ("worker0", "worker1"):
                if stack.procs[name].poll() is not None:
                    restarts.append(name)
                    stack.start_worker(name)
            counts = status(bid)["counts"]
            return counts if set(counts) == {"succeeded"} and counts["succeeded"] == N else None

        assert wait_for(finished, 240, "every job finished after the failover") == {"succeeded": N}
        assert wait(bid, timeout=60)["counts"] == {"succeeded": N}
        final = aio_wait.result()
        assert isinstance(final, editq.BatchStatus) and final.batch_id == bid
        assert (final.total, final.done, final.counts, final.finished) == (N, N, {"succeeded": N}, True)
        assert final.manifest_key and final == editq.batch_status(bid)
        assert aio_wait.reads > 2, "the waits' polls went through the sync (Sentinel) client"
        manifests = e2e.verify_batch(bid, report.job_ids, "fal")  # outputs in S3 match their manifests
        assert len(manifests) == N
    # nothing paid twice: one provider request per job, each one the job's recorded request
    log = [e for e in e2e.sandbox_log(stack, "fal") if str(e["input"].get("prompt", "")).startswith("failover ")]
    assert Counter(str(e["input"]["prompt"]) for e in log) == Counter({f"failover {i}": 1 for i in range(N)})
    assert {e["request_id"] for e in log} == {m["provider_request_id"] for m in manifests.values()}
    assert stack.procs["webhooks"].poll() is None, stack.log("webhooks")[-3000:]  # the receiver rode through
    assert restarts == [], f"workers exited during the failover: {restarts}"  # they rode through it
