"""A worker rides through Redis restarts (graceful and SIGKILL, AOF on) with work in flight: it reconnects,
keeps consuming and every job finishes; it neither exits nor logs an unrecoverable error."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from editq.bench.chaos import RedisServer
from editq.producer.api import submit, wait
from editq.producer.stack import LocalStack
from editq.worker.state import State
from tests.conftest import EXAMPLES, SANDBOX_SEED, unique


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


def _batch(n: int) -> list[str]:
    return [submit({"prompt": unique("restart"), "images": [str(EXAMPLES / "mug.png")], "quality": "low"})
            for _ in range(n)]


@pytest.mark.parametrize("hard", [False, True], ids=["graceful", "sigkill"])
def test_a_worker_rides_through_a_redis_restart(own_redis: RedisServer, hard: bool) -> None:
    with LocalStack(workers=1, worker_concurrency=4, redis_url=own_redis.url,
                    sandbox_opts={"latency_s": 0.5, "jitter_s": 0.0, "seed": SANDBOX_SEED}) as stack:
        worker = stack.procs["worker0"]
        first = _batch(6)
        own_redis.restart(hard=hard, down_s=1.0)  # while those jobs are being submitted and collected
        second = _batch(6)
        own_redis.restart(hard=hard, down_s=1.0)
        for job_id in first + second:
            assert wait(job_id, timeout=120)["state"] == State.succeeded
        assert worker.poll() is None, f"the worker exited with {worker.returncode}"
        log = stack.log("worker0")
        assert "Unrecoverable error" not in log
        assert "NotImplementedError" not in log
        assert "Connection to broker lost" in log  # it did see the broker go away
