"""The receiver verifies before it acts: bad signature, stale timestamp, unknown key and missing headers
are refused and change no state; a valid delivery is applied once; a duplicate changes nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from editq.producer.stack import LocalStack
from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner
from editq.worker.state import JobStore, State
from editq.worker.webhook_auth import delivery_url
from tests import deliveries
from tests.conftest import SANDBOX_SEED, unique
from tests.deliveries import FAL, USER, claimed_job, fal_result


@pytest.fixture(scope="module")
def receiver_stack() -> Iterator[LocalStack]:
    """Receiver + sandbox (for its JWKS) and no worker, so nothing moves a job but the deliveries."""
    with LocalStack(workers=0, sandbox_opts={"seed": SANDBOX_SEED}) as s:
        yield s


@pytest.fixture
def submitted_job(receiver_stack: LocalStack) -> tuple[str, str]:
    receiver_stack.apply_env()
    return deliveries.submitted_job("wh")


def _post(stack: LocalStack, job_id: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(delivery_url(stack.env["EDITQ_WEBHOOK_BASE_URL"], "fal", job_id),
                      content=body, headers={**headers, "content-type": "application/json"}, timeout=10)


def _state(job_id: str) -> tuple[str, str]:
    view = JobStore().get(job_id)
    assert view is not None
    return view.state.value, view.fields.get("h", "")


def test_refused_deliveries_change_nothing(receiver_stack: LocalStack, submitted_job: tuple[str, str]) -> None:
    job_id, rid = submitted_job
    body = fal_result(rid)
    before = _state(job_id)
    now = int(time.time())

    tampered = _post(receiver_stack, job_id, body.replace(b"x.png", b"y.png"),
                     FAL.sign(body, request_id=rid, timestamp=now))
    unknown_key = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=now, valid=False))
    stale = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=now - 3600))
    future = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=now + 3600))
    headers = FAL.sign(body, request_id=rid, timestamp=now)
    headers.pop("X-Fal-Webhook-Signature")
    missing = _post(receiver_stack, job_id, body, headers)
    other_user = FalWebhookSigner(Ed25519KeyRing(SANDBOX_SEED), "someone-else")
    swapped = _post(receiver_stack, job_id, body, {
        **other_user.sign(body, request_id=rid, timestamp=now),
        "X-Fal-Webhook-User-Id": USER,  # header edited after signing
    })

    for resp, why in [(tampered, "signature"), (unknown_key, "signature"), (stale, "timestamp"),
                      (future, "timestamp"), (missing, "missing header"), (swapped, "signature")]:
        assert resp.status_code == 401, resp.text
        assert why in resp.json()["error"]
    assert _state(job_id) == before


def test_valid_delivery_applies_once(receiver_stack: LocalStack, submitted_job: tuple[str, str]) -> None:
    job_id, rid = submitted_job
    body = fal_result(rid)
    headers = FAL.sign(body, request_id=rid, timestamp=int(time.time()))

    first = _post(receiver_stack, job_id, body, headers)
    assert first.status_code == 200 and first.json() == {"status": "accepted"}
    state, history = _state(job_id)
    assert state == State.ready
    result = JobStore().get(job_id).json_field("result")  # type: ignore[union-attr]
    assert result["outputs"] == [{"url": "http://127.0.0.1:1/x.png", "content_type": "image/png"}]

    replay = _post(receiver_stack, job_id, body, headers)
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    # the provider's own retry (new timestamp, new signature) is a no-op too
    retry = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=int(time.time()) + 1))
    assert retry.status_code == 200 and retry.json() == {"status": "already-done"}
    assert _state(job_id) == (state, history)
    assert history.count("ready\t") == 1


def test_delivery_for_unknown_request_is_acknowledged_and_ignored(receiver_stack: LocalStack) -> None:
    receiver_stack.apply_env()
    rid = unique("nobody")
    body = fal_result(rid)
    headers = FAL.sign(body, request_id=rid, timestamp=int(time.time()))
    resp = _post(receiver_stack, "job_does_not_exist", body, headers)
    assert resp.status_code == 200 and resp.json() == {"status": "unknown-request"}


def test_delivery_racing_the_workers_record_is_applied(receiver_stack: LocalStack) -> None:
    """The receiver looks the request id up before the worker records it, and reads the job after the
    worker recorded it (`submitted`, with this request id): the delivery must complete the job, not be
    acknowledged as an unknown request and left to the 60 s safety-net poll."""
    receiver_stack.apply_env()
    # recorded on the job, but the request-id index is not there yet for the receiver's first lookup
    job_id, rid = deliveries.submitted_job("race", indexed=False)
    body = fal_result(rid)
    resp = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=int(time.time())))
    assert resp.status_code == 200 and resp.json() == {"status": "accepted"}
    assert _state(job_id)[0] == State.ready


def test_routes_around_the_delivery_fast_path(receiver_stack: LocalStack) -> None:
    """Deliveries bypass FastAPI (worker/webhooks.py DeliveriesFirst); the rest of the app still answers."""
    base = receiver_stack.env["EDITQ_WEBHOOK_BASE_URL"]
    assert httpx.post(f"{base}/webhooks/nope", content=b"{}", timeout=10).json() == {
        "error": "no webhooks for this provider"}
    assert httpx.post(f"{base}/webhooks/nope", content=b"{}", timeout=10).status_code == 404
    unsigned = httpx.post(f"{base}/webhooks/fal", content=b"{}", timeout=10)
    assert unsigned.status_code == 401 and unsigned.json()["error"].startswith("rejected")
    assert httpx.get(f"{base}/webhooks/fal", timeout=10).status_code in (404, 405)  # not a delivery
    assert httpx.post(f"{base}/webhooks/fal/x", content=b"{}", timeout=10).status_code == 404
    assert httpx.get(f"{base}/healthz", timeout=10).json()["status"] == "ok"
    assert "editq_webhook_deliveries_total" in httpx.get(f"{base}/metrics", timeout=10).text


def _claimed(prefix: str, entry: str = "sending") -> tuple[JobStore, str]:
    """A job claimed for its first attempt, as a worker that died mid-submit leaves it: `submitting`, no
    request id, its attempt recorded `sending` (or `sent`), the lease far away."""
    store, job_id = claimed_job(prefix, lease_s=3600)
    store.set_fields(job_id, **{"req.1": json.dumps({"attempt": 1, "provider": "fal", "status": entry, "at": 1.0})})
    return store, job_id


def _error_payload(request_id: str, error_type: str) -> bytes:
    """fal's ERROR delivery for a model error: the error type only inside the failed result's detail."""
    return json.dumps({"request_id": request_id, "gateway_request_id": request_id, "status": "ERROR",
                       "payload": {"detail": [{"loc": ["body", "image_urls", 0], "msg": "Failed to download",
                                               "type": error_type}]},
                       "error": "Invalid status code: 422"}).encode()


def _requests(store: JobStore, job_id: str) -> dict[str, dict]:
    view = store.get(job_id)
    assert view is not None
    return {k: json.loads(v) for k, v in view.fields.items() if k.startswith("req.")}


def test_a_late_failure_for_the_current_attempt_is_applied_not_dropped(receiver_stack: LocalStack) -> None:
    """The worker died after its request was accepted, before recording the id: the request's failure
    arrives by webhook. It must move the job on now (retry: a download failure of our own input is our
    outage), not be dropped as stale while the job waits out its submit lease."""
    receiver_stack.apply_env()
    store, job_id = _claimed("late-fail", "sent")
    rid = unique("req")
    body = _error_payload(rid, "file_download_error")
    resp = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=int(time.time())))
    assert resp.status_code == 200 and resp.json() == {"status": "accepted"}
    view = store.get(job_id)
    assert view is not None and view.state is State.retry_wait  # retryable, taken from the delivery's detail
    assert store.r.zscore(store.k.slots("fal"), job_id) is None  # its provider slot is free again
    entry = _requests(store, job_id)["req.1"]
    assert (entry["status"], entry["request_id"]) == ("failed", rid)
    assert json.loads(view.fields["error"])["kind"] == "retryable"


def test_a_late_failure_for_an_attempt_given_up_changes_nothing(receiver_stack: LocalStack) -> None:
    """With an earlier attempt left `uncertain`, an unrecorded request's failure may be that attempt's:
    the job's current submit goes on untouched."""
    receiver_stack.apply_env()
    store, job_id = _claimed("late-old")
    store.set_fields(job_id, **{"req.0": json.dumps({"attempt": 0, "provider": "fal", "status": "uncertain"})})
    rid = unique("req")
    body = _error_payload(rid, "file_download_error")
    resp = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=int(time.time())))
    assert resp.json() == {"status": "stale-request"}
    assert _state(job_id)[0] == State.submitting


def test_an_adopted_answer_records_its_attempt_accepted(receiver_stack: LocalStack) -> None:
    """A success adopted for the current attempt (its worker lost the answer): the attempt is recorded
    `accepted` with that request id, and the manifest lists no attempt as still `sending`."""
    from editq.worker.manifest import build

    receiver_stack.apply_env()
    store, job_id = _claimed("adopt")
    rid = unique("req")
    body = fal_result(rid)
    resp = _post(receiver_stack, job_id, body, FAL.sign(body, request_id=rid, timestamp=int(time.time())))
    assert resp.json() == {"status": "accepted"}
    assert _state(job_id)[0] == State.ready
    reqs = _requests(store, job_id)
    assert (reqs["req.1"]["status"], reqs["req.1"]["request_id"]) == ("accepted", rid)
    assert reqs[f"req.adopted.{rid}"]["status"] == "adopted"
    view = store.get(job_id)
    assert view is not None
    statuses = [e["status"] for e in build(view, "succeeded", [], None, None).provider_requests]
    assert "sending" not in statuses and "sent" not in statuses
