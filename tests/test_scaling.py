"""Scale-out: RabbitMQ as the Celery broker (Redis still holds the state), and two worker processes
sharing one global provider cap. Real processes, real Redis, real S3 server, real sandbox."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from editq.producer.api import submit_batch, wait
from editq.producer.stack import LocalStack, scoped_env
from tests.conftest import EXAMPLES, unique

RABBIT_URL = os.environ.get("EDITQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _rabbit_up() -> bool:
    from kombu import Connection

    try:
        with Connection(RABBIT_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def rabbitmq() -> str:
    """RabbitMQ must run for this test: start it if it is down, fail with a clear message if it cannot."""
    if _rabbit_up():
        return RABBIT_URL
    server = shutil.which("rabbitmq-server")
    if server is None:
        pytest.fail(f"RabbitMQ is not reachable at {RABBIT_URL} and rabbitmq-server is not installed "
                    "(apt-get install rabbitmq-server, or set EDITQ_TEST_AMQP_URL)")
    subprocess.run([server, "-detached"], check=False, capture_output=True, timeout=30)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if _rabbit_up():
            return RABBIT_URL
        time.sleep(0.5)
    pytest.fail(f"started `rabbitmq-server -detached` but {RABBIT_URL} did not answer within 45 s")


@pytest.fixture
def clean_env() -> Iterator[None]:
    with scoped_env():
        yield


def _rows(tag: str, n: int) -> list[dict[str, object]]:
    return [{"custom_id": f"{tag}-{i}", "prompt": f"{tag} product shot #{i}", "images": [str(EXAMPLES / "mug.png")],
             "quality": "low", "size": "1024x1024"} for i in range(n)]


def _claimed_by_dispatch(log: str) -> int:
    """Jobs this worker claimed and submitted: the sum of its dispatch tasks' return values."""
    return sum(int(n) for n in re.findall(r"Task editq\.dispatch\[[^\]]+\] succeeded in [0-9.e-]+s: (\d+)", log))


def test_batch_completes_with_rabbitmq_as_broker(rabbitmq: str, clean_env: None, tmp_path: Path) -> None:
    os.environ["EDITQ_BROKER_URL"] = rabbitmq
    with LocalStack(sandbox_opts={"latency_s": 0.2, "jitter_s": 0.0, "concurrency": 8, "seed": 3},
                    worker_concurrency=4, log_dir=tmp_path) as stack:
        report = submit_batch(_rows(unique("amqp"), 6))
        assert report.enqueued == 6
        final = wait(report.batch_id, timeout=50)
        assert final["counts"] == {"succeeded": 6}
        log = stack.log("worker0")
        assert "amqp://guest:**@127.0.0.1:5672//" in log, "the worker did not use RabbitMQ"
        queue = stack.env["EDITQ_QUEUE_PREFIX"]
    from kombu import Connection

    with Connection(rabbitmq) as conn:  # our queues were RabbitMQ's; remove them
        ch = conn.default_channel
        for name in (queue, f"{queue}.sync"):
            ch.queue_delete(name)


def test_two_workers_share_one_provider_cap(clean_env: None, tmp_path: Path) -> None:
    os.environ["EDITQ_FAL_CONCURRENCY"] = "4"
    with LocalStack(sandbox_opts={"latency_s": 0.3, "jitter_s": 0.2, "concurrency": 50, "seed": 5},
                    workers=2, worker_concurrency=4, log_dir=tmp_path) as stack:
        report = submit_batch(_rows(unique("cap"), 40))
        assert report.enqueued == 40
        final = wait(report.batch_id, timeout=55)
        assert final["counts"] == {"succeeded": 40}
        stats = httpx.get(f"{stack.env['EDITQ_SANDBOX_URL']}/_sandbox/stats", timeout=10).json()
        fal = stats["providers"]["fal"]
        # the sandbox would have run 50 at once; the two workers together never had more than 4 out
        assert fal["accepted"] == 40
        assert fal["max_in_flight"] <= 4
        per_worker = [_claimed_by_dispatch(stack.log(f"worker{i}")) for i in range(2)]
        assert sum(per_worker) == 40
        assert all(n > 0 for n in per_worker), f"one worker did all the work: {per_worker}"
