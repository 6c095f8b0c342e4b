"""Set-ups the webhook receiver tests share (a receiver and the sandbox, no worker: only the deliveries and the
test move jobs): a job as a worker leaves it at each step of its submit, and fal's delivery of a result,
signed as the sandbox's fal account signs it."""

from __future__ import annotations

import json
import time

from editq.producer.api import submit
from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner
from editq.worker.state import JobStore, State
from tests.conftest import EXAMPLES, SANDBOX_SEED, unique

USER = "sandbox-user"  # the sandbox's fal account
FAL = FalWebhookSigner(Ed25519KeyRing(SANDBOX_SEED), USER)


def queued_job(tag: str, provider: str = "fal") -> str:
    """A job enqueued for `provider` (one image, a prompt unique to this call): its id."""
    return submit({"prompt": unique(tag), "images": [str(EXAMPLES / "mug.png")], "provider": provider})


def claimed_job(tag: str, provider: str = "fal", lease_s: float = 60) -> tuple[JobStore, str]:
    """A job claimed as a worker claims it before it sends (`submitting`, no request id yet)."""
    store = JobStore()
    job_id = queued_job(tag, provider)
    # the claim may take more (any job an earlier failed test left queued): this one must be among them
    assert job_id in store.claim(provider, 100, 100, 0, 0, lease_s)
    return store, job_id


def submitted_job(tag: str, provider: str = "fal", *, indexed: bool = True) -> tuple[str, str]:
    """A job the provider accepted: `submitted` with a made-up request id that the request-id index maps back
    to it (not yet, as in a race with the worker's record, unless `indexed`). (job id, request id)."""
    store, job_id = claimed_job(tag, provider)
    request_id = unique("req")
    if indexed:
        store.r.set(store.k.request(provider, request_id), job_id)
    assert store.move(job_id, [State.submitting], State.submitted, score=time.time() + 3600,
                      fields={"request_id": request_id, "handle": "{}"}).ok
    return job_id, request_id


def fal_result(request_id: str, url: str = "http://127.0.0.1:1/x.png") -> bytes:
    """fal's OK delivery of a request whose one output image is at `url`."""
    return json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "OK",
                       "payload": {"images": [{"url": url, "content_type": "image/png"}]}, "error": None}).encode()
