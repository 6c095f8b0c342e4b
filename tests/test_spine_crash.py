"""A worker killed with SIGKILL right after submitting: the job finishes exactly once when a worker
comes back (one provider submission, one set of outputs)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from editq.producer.api import status, submit, wait
from editq.producer.stack import LocalStack
from editq.worker.state import State
from editq.worker.storage import get_storage
from editq.worker.webhook_auth import delivery_url
from tests.conftest import EXAMPLES, SANDBOX_SEED, sandbox_requests, unique, wait_for


@pytest.fixture(scope="module")
def bare() -> Iterator[LocalStack]:
    """A stack with no worker running: the test starts and kills workers itself."""
    with LocalStack(
        workers=0,
        sandbox_opts={"latency_s": 1.0, "jitter_s": 0.0, "concurrency": 4, "seed": SANDBOX_SEED},
    ) as s:
        yield s


def test_sigkill_after_submit_finishes_exactly_once(bare: LocalStack) -> None:
    bare.apply_env()
    tag = unique("crash")
    job_id = submit({"custom_id": tag, "prompt": f"{tag} on marble", "images": [str(EXAMPLES / "watch.png")],
                     "quality": "low", "num_images": 2})
    assert status(job_id)["state"] == State.queued

    # this worker records the provider's request id, then dies with SIGKILL before acking its task
    bare.start_worker("doomed", extra_env={"EDITQ_FAULT_CRASH_AFTER_SUBMIT": "1"})
    doomed = bare.procs["doomed"]
    wait_for(lambda: doomed.poll() is not None, 60, "the doomed worker to kill itself")
    assert doomed.returncode == -9
    st = status(job_id)
    assert st["state"] in (State.submitted, State.ready) and st["request_id"]
    request_id = st["request_id"]

    bare.start_worker("phoenix")
    final = wait(job_id, timeout=90)
    assert final["state"] == State.succeeded and final["request_id"] == request_id

    mine = [r for r in sandbox_requests(bare) if tag in json.dumps(r.get("input"))]
    assert [r["request_id"] for r in mine] == [request_id], "the job was submitted more than once"

    storage = get_storage()
    keys = storage.list_keys(f"{storage.settings.s3_prefix}/{final['batch_id']}/{job_id}/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["0.png", "1.png", "manifest.json"]
    manifest = json.loads(storage.get_bytes(storage.manifest_key(final["batch_id"], job_id)))
    assert manifest["attempts"] == 1
    assert [(r["status"], r.get("request_id")) for r in manifest["provider_requests"]] == [("accepted", request_id)]


def test_answer_lost_in_a_crash_is_marked_uncertain_and_its_late_result_adopted(bare: LocalStack) -> None:
    """The worker dies after the provider accepted request A but before recording A's id. The lease runs
    out, the attempt is recorded `uncertain` and the job is submitted again (B). When A's signed webhook
    arrives it is matched to the job through its per-job URL and adopted; B is cancelled."""
    import httpx

    from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner

    bare.apply_env()
    for name in [n for n in bare.procs if n.startswith("phoenix")]:
        bare.stop_proc(name)  # only the doomed worker may take this job
    sandbox = bare.env["EDITQ_SANDBOX_URL"]
    # deliveries are dropped, so the test itself delivers A's webhook, at the moment it chooses
    patch = {"latency_s": 0.3, "webhook_lost_rate": 1.0}
    assert httpx.patch(f"{sandbox}/_sandbox/config", json=patch, timeout=10).status_code == 200
    fast_lease = {"EDITQ_SUBMIT_LEASE_S": "0.5"}
    try:
        tag = unique("lost")
        job_id = submit({"custom_id": tag, "prompt": f"{tag} on slate", "images": [str(EXAMPLES / "bottle.png")],
                         "quality": "low"})
        bare.start_worker("doomed2", extra_env={"EDITQ_FAULT_CRASH_BEFORE_RECORD": "1", **fast_lease})
        wait_for(lambda: bare.procs["doomed2"].poll() is not None, 60, "the doomed worker to kill itself")
        assert status(job_id)["request_id"] is None  # the provider has request A; we do not know its id
        (a,) = [r for r in sandbox_requests(bare) if tag in json.dumps(r.get("input"))]
        # B must still be running when A's answer is adopted, so that cancelling it is observable
        assert httpx.patch(f"{sandbox}/_sandbox/config", json={"latency_s": 60.0}, timeout=10).status_code == 200

        bare.start_worker("phoenix2", extra_env=fast_lease)
        b_id = wait_for(lambda: status(job_id)["request_id"], 60, "the resubmission B")
        assert b_id != a["request_id"] and status(job_id)["state"] == State.submitted

        auth = {"Authorization": "Key sandbox-key"}
        result_url = f"{sandbox}/fal/openai/gpt-image-2/requests/{a['request_id']}"
        result = wait_for(lambda: (r := httpx.get(result_url, headers=auth, timeout=10)).status_code == 200 and r,
                          30, "request A to finish at the provider").json()
        body = json.dumps({"request_id": a["request_id"], "gateway_request_id": a["request_id"], "status": "OK",
                           "payload": result, "error": None}).encode()
        signer = FalWebhookSigner(Ed25519KeyRing(SANDBOX_SEED), "sandbox-user")
        headers = signer.sign(body, request_id=a["request_id"], timestamp=int(time.time()))
        resp = httpx.post(delivery_url(bare.env["EDITQ_WEBHOOK_BASE_URL"], "fal", job_id), content=body,
                          headers={**headers, "content-type": "application/json"}, timeout=10)
        assert resp.json() == {"status": "accepted"}
        final = wait(job_id, timeout=60)
    finally:
        httpx.patch(f"{sandbox}/_sandbox/config", json={"latency_s": 1.0, "webhook_lost_rate": 0.0}, timeout=10)
    assert final["state"] == State.succeeded and final["request_id"] == a["request_id"]  # A's result was adopted

    mine = [r["request_id"] for r in sandbox_requests(bare) if tag in json.dumps(r.get("input"))]
    assert sorted(mine) == sorted([a["request_id"], b_id])
    storage = get_storage()
    manifest = json.loads(storage.get_bytes(storage.manifest_key(final["batch_id"], job_id)))
    reqs = [(r["attempt"], r["status"], r.get("request_id")) for r in manifest["provider_requests"]]
    assert (1, "uncertain", None) in reqs
    assert (2, "accepted", b_id) in reqs
    assert (2, "adopted", a["request_id"]) in reqs
    assert manifest["provider_request_id"] == a["request_id"]
    keys = storage.list_keys(f"{storage.settings.s3_prefix}/{final['batch_id']}/{job_id}/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["0.png", "manifest.json"]
    b = httpx.get(f"{sandbox}/_sandbox/requests/{b_id}", timeout=10).json()
    assert b["error_type"] == "request_cancelled" or b["status"] == "CANCELLED"  # B was cancelled at the provider
