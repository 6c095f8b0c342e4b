"""The sweep on real parts (Redis, S3 over HTTP, the sandbox, the receiver, a Celery worker; separate processes):
with the sandbox dropping every webhook and the safety-net poll out of the test's reach, fal and Replicate jobs
are finished by the sweep of the provider's own request history; a real webhook arriving after that changes
nothing; one sweep of a provider runs at a time."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from editq.producer.api import status, submit_batch, wait
from editq.producer.stack import LocalStack
from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner, StandardWebhookSigner
from editq.worker import aio
from editq.worker.keys import keys
from editq.worker.pipeline import Pipeline
from editq.worker.redis_client import get_redis
from editq.worker.storage import get_storage
from editq.worker.sweep import Sweeper
from editq.worker.webhook_auth import delivery_url
from tests.e2e import EXAMPLES, configure_sandbox, read_manifests, start, using

SEED = 7
# the sweep every 0.5 s; the safety-net poll 600 s away (300 s for Replicate, its cap): a job that finishes
# within the test was found by a webhook or by the sweep, and the sandbox loses every webhook
EXTRA = {"EDITQ_SWEEP_INTERVAL_S": "0.5", "EDITQ_SWEEP_MARGIN_S": "5", "EDITQ_POLL_INTERVAL_WEBHOOK_S": "600",
         "EDITQ_POLL_QUIET_MIN_S": "600"}
SANDBOX = {"latency_s": 0.2, "jitter_s": 0.1, "concurrency": 8, "seed": SEED}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from start(True, EXTRA, sandbox_opts=SANDBOX, keep_env=True)


@pytest.fixture
def lossy(stack: LocalStack) -> Iterator[LocalStack]:
    with using(stack):
        configure_sandbox(stack, {"webhook_lost_rate": 1.0})
        try:
            yield stack
        finally:
            configure_sandbox(stack, {"webhook_lost_rate": 0.0})


def _found() -> dict[str, int]:
    return {k: int(v) for k, v in get_redis().hgetall(keys().stats_found).items()}


def _job_objects(batch_id: str, job_id: str) -> dict[str, bytes]:
    storage = get_storage()
    return {key: storage.get_bytes(key) for key in storage.list_keys(storage.job_prefix(batch_id, job_id))}


def _late_webhook(stack: LocalStack, provider: str, job_id: str, request_id: str) -> httpx.Response:
    """The delivery the sandbox dropped, as the provider would send it now: the same body, signed."""
    sandbox = stack.env["EDITQ_SANDBOX_URL"]
    now = int(time.time())
    if provider == "fal":
        result = httpx.get(f"{sandbox}/fal/openai/gpt-image-2/requests/{request_id}",
                           headers={"Authorization": "Key sandbox-key"}).json()
        body = json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                           "payload": result, "error": None}).encode()
        headers = FalWebhookSigner(Ed25519KeyRing(SEED, "fal"), "sandbox-user").sign(
            body, request_id=request_id, timestamp=now)
    else:
        prediction = httpx.get(f"{sandbox}/replicate/v1/predictions/{request_id}",
                               headers={"Authorization": "Bearer r8_sandbox-token"}).json()
        assert prediction["status"] == "succeeded"
        body = json.dumps(prediction).encode()
        headers = StandardWebhookSigner(SEED, "replicate").sign(body, request_id=request_id, timestamp=now)
    url = delivery_url(stack.env["EDITQ_WEBHOOK_BASE_URL"], provider, job_id)
    return httpx.post(url, content=body, headers={**headers, "content-type": "application/json"}, timeout=15)


def test_lost_webhooks_are_found_by_the_sweep_and_a_late_one_changes_nothing(lossy: LocalStack) -> None:
    sandbox = lossy.env["EDITQ_SANDBOX_URL"]
    before_found = _found()
    before = httpx.get(f"{sandbox}/_sandbox/stats").json()["providers"]
    tag = f"sweep{time.time_ns() % 10**9}"
    lines: list[dict[str, Any]] = [
        {"custom_id": f"{provider}-{i}", "prompt": f"{tag} {provider} {i}", "images": ["mug.png"],
         "provider": provider, "quality": "low"}
        for provider in ("fal", "replicate") for i in range(3)]
    report = submit_batch(lines, base_dir=EXAMPLES)
    assert report.enqueued == 6, report.invalid
    final = wait(report.batch_id, timeout=90)
    assert final["counts"] == {"succeeded": 6}, final

    after = httpx.get(f"{sandbox}/_sandbox/stats").json()["providers"]
    for provider in ("fal", "replicate"):  # every completion's webhook was dropped...
        assert after[provider]["webhooks"]["lost"] - before[provider]["webhooks"]["lost"] == 3
    found = _found()  # ...and every job was found by the sweep, none by a webhook or the safety-net poll
    gained = {k: v - before_found.get(k, 0) for k, v in found.items() if v != before_found.get(k, 0)}
    assert gained == {"fal|sweep": 3, "replicate|sweep": 3}
    r, k = get_redis(), keys()
    for provider in ("fal", "replicate"):
        mark = r.hgetall(k.sweep_mark(provider))
        assert float(mark["start"]) < float(mark["end"]) and int(mark["pages"]) >= 1

    manifests = read_manifests(report.batch_id)
    storage = get_storage()
    for m in manifests:
        assert m["state"] == "succeeded"
        assert [h["state"] for h in m["history"]] == ["queued", "submitting", "submitted", "ready", "collecting",
                                                      "succeeded"]
        (out,) = m["outputs"]
        assert hashlib.sha256(storage.get_bytes(out["key"])).hexdigest() == out["sha256"]

    # the real webhook, arriving after the sweep: answered, and nothing changes (no second store, no count)
    for m in manifests:
        if not m["custom_id"].endswith("-0"):
            continue
        job_id, provider = m["job_id"], m["provider"]
        stored = _job_objects(report.batch_id, job_id)
        st = status(job_id)
        resp = _late_webhook(lossy, provider, job_id, st["request_id"])
        assert (resp.status_code, resp.json()) == (200, {"status": "already-done"})
        again = status(job_id)
        assert again["state"] == "succeeded" and again["history"] == st["history"]
        assert _job_objects(report.batch_id, job_id) == stored
    assert _found() == found


def test_one_sweep_of_a_provider_at_a_time(stack: LocalStack) -> None:
    """A sweep finds the provider's lease taken (another worker sweeping) and does nothing; with the lease free
    and no job at the provider, it lists nothing."""
    with using(stack):
        _one_at_a_time(Pipeline())


def _one_at_a_time(pipeline: Pipeline) -> None:
    lease = pipeline.r.lock(pipeline.k.sweep_lock("fal"), timeout=30, blocking=False)
    assert lease.acquire(blocking=False)
    try:
        busy = aio.run(Sweeper(pipeline).sweep("fal"))
        assert busy.outcome == "busy" and busy.pages == 0
    finally:
        lease.release()
    if not pipeline.r.zcard(pipeline.k.slots("fal")):
        idle = aio.run(Sweeper(pipeline).sweep("fal"))
        assert idle.outcome == "idle" and idle.pages == 0
