"""Forged, misdirected and oversized deliveries change nothing (README "Security" > "Webhooks").

A receiver and the sandbox (for fal's JWKS and the Standard Webhooks secrets), no worker: only the
deliveries move jobs. Every delivery here is validly signed unless the test says otherwise, as a provider
account other than ours (or a leaked signing key) could sign it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from editq.producer.stack import LocalStack
from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner, StandardWebhookSigner
from editq.worker.state import JobStore, JobView, State
from editq.worker.webhook_auth import delivery_url, job_token
from tests.conftest import SANDBOX_SEED, unique
from tests.deliveries import FAL, claimed_job, fal_result, queued_job, submitted_job

REPLICATE = StandardWebhookSigner(SANDBOX_SEED, "replicate")


@pytest.fixture(scope="module")
def hooks() -> Iterator[LocalStack]:
    with LocalStack(workers=0, sandbox_opts={"seed": SANDBOX_SEED}) as s:
        yield s


@pytest.fixture
def base(hooks: LocalStack) -> str:
    hooks.apply_env()
    return hooks.env["EDITQ_WEBHOOK_BASE_URL"]


def _job(provider: str = "fal") -> str:
    return queued_job("sec", provider)


def _submitted(provider: str = "fal") -> tuple[str, str]:
    return submitted_job("sec", provider)


def _fal_body(rid: str) -> bytes:
    return fal_result(rid, url="http://127.0.0.1:1/chosen-by-sender.png")


def _post(url: str, body: bytes, headers: dict[str, str], **kw: Any) -> httpx.Response:
    return httpx.post(url, content=body, headers={**headers, "content-type": "application/json"}, timeout=30, **kw)


def _fal(base: str, job_id: str, rid: str, body: bytes | None = None, **kw: Any) -> httpx.Response:
    body = _fal_body(rid) if body is None else body
    return _post(delivery_url(base, "fal", job_id), body, FAL.sign(body, request_id=rid, timestamp=int(time.time())),
                 **kw)


def _view(job_id: str) -> JobView:
    view = JobStore().get(job_id)
    assert view is not None
    return view


def _snapshot(job_id: str) -> dict[str, str]:
    return dict(JobStore().r.hgetall(JobStore().k.job(job_id)))


# ---- adoption: only a job that may have a request whose id we lost ---------------------------------------------
def test_signed_delivery_for_a_request_we_never_sent_changes_a_queued_job_nothing(base: str) -> None:
    job_id = _job()
    before = _snapshot(job_id)
    resp = _fal(base, job_id, unique("never-sent"))
    assert resp.status_code == 200 and resp.json() == {"status": "unknown-request"}
    assert _snapshot(job_id) == before
    assert _view(job_id).state is State.queued


def test_signed_delivery_for_another_request_leaves_a_submitted_job_alone(base: str) -> None:
    job_id, _ = _submitted()
    before = _snapshot(job_id)
    resp = _fal(base, job_id, unique("never-sent"))
    assert resp.status_code == 200 and resp.json()["status"] in ("unknown-request", "stale-request")
    assert _snapshot(job_id) == before


def test_a_job_being_submitted_adopts_its_early_completion(base: str) -> None:
    """The provider answered the webhook before our submit call returned: still adopted."""
    _, job_id = claimed_job("sec")
    rid = unique("early")
    resp = _fal(base, job_id, rid)
    assert resp.json() == {"status": "accepted"}
    view = _view(job_id)
    assert view.state is State.ready and view.request_id == rid


def test_a_job_with_an_uncertain_attempt_adopts_the_late_answer(base: str) -> None:
    store = JobStore()
    job_id = _job()
    store.set_fields(job_id, **{"req.1": json.dumps({"attempt": 1, "provider": "fal", "status": "uncertain"})})
    resp = _fal(base, job_id, unique("late"))
    assert resp.json() == {"status": "accepted"}
    assert _view(job_id).state is State.ready


def test_a_request_of_another_job_is_not_applied_through_this_jobs_url(base: str) -> None:
    mine, _ = _submitted()
    theirs, their_rid = _submitted()
    before = (_snapshot(mine), _snapshot(theirs))
    resp = _fal(base, mine, their_rid)
    assert resp.status_code == 200 and resp.json() == {"status": "other-job"}
    assert (_snapshot(mine), _snapshot(theirs)) == before


# ---- the per-job token, checked first ------------------------------------------------------------------------
def test_deliveries_without_the_jobs_token_are_refused_before_anything_else(base: str) -> None:
    job_id, rid = _submitted()
    other, _ = _submitted()
    body = _fal_body(rid)
    headers = FAL.sign(body, request_id=rid, timestamp=int(time.time()))
    url = f"{base}/webhooks/fal"
    attempts = {
        "no token": _post(url, body, headers, params={"job": job_id}),
        "wrong token": _post(url, body, headers, params={"job": job_id, "token": "x" * 43}),
        "another job's token": _post(url, body, headers, params={"job": job_id, "token": job_token(other)}),
        "no job": _post(url, body, headers, params={"token": job_token(job_id)}),
        # checked before the body is read or the signature is looked at
        "wrong token, huge body": _post(url, b"x" * 7_000_000, {}, params={"job": job_id, "token": "y"}),
        "wrong token, unsigned": _post(url, body, {}, params={"job": job_id, "token": "y"}),
    }
    for what, resp in attempts.items():
        assert resp.status_code == 401, what
        assert "token" in resp.json()["error"], what
    assert _view(job_id).state is State.submitted
    assert _fal(base, job_id, rid).json() == {"status": "accepted"}  # the real one still goes through


# ---- what is refused, and how -----------------------------------------------------------------------------------
def test_oversized_bodies_get_413_before_they_are_read(base: str) -> None:
    job_id, rid = _submitted()
    url = delivery_url(base, "fal", job_id)
    big = b"{" + b" " * 6_000_000 + b"}"
    declared = _post(url, big, FAL.sign(big, request_id=rid, timestamp=int(time.time())))
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
        for _ in range(7):
            yield b" " * 1_000_000

    chunked = httpx.post(url, content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert chunked.status_code == 413
    assert _view(job_id).state is State.submitted


@pytest.mark.parametrize("provider", ["nope", "openai", "oxen", "openai_batch"])
def test_unknown_and_webhookless_providers_get_404(base: str, provider: str) -> None:
    job_id = _job()
    resp = httpx.post(delivery_url(base, provider, job_id), content=b"{}", timeout=10)
    assert resp.status_code == 404, resp.text
    assert resp.json() == {"error": "no webhooks for this provider"}


@pytest.mark.parametrize("body", [b"[]", b"null", b"42", b'"text"', b"not json"])
def test_signed_fal_bodies_that_are_not_a_json_object_get_400(base: str, body: bytes) -> None:
    job_id, rid = _submitted()
    before = _snapshot(job_id)
    resp = _fal(base, job_id, rid, body)
    assert resp.status_code == 400, resp.text  # authentic but unreadable: not a 401 (that says "not authentic")
    assert _snapshot(job_id) == before


@pytest.mark.parametrize("body", [b"[]", b"null", b'"text"', b'{"id": 7}', b"{}"])
def test_signed_replicate_bodies_that_are_not_a_prediction_get_400(base: str, body: bytes) -> None:
    job_id, rid = _submitted("replicate")
    before = _snapshot(job_id)
    headers = REPLICATE.sign(body, request_id=rid, timestamp=int(time.time()))
    resp = _post(delivery_url(base, "replicate", job_id), body, headers)
    assert resp.status_code == 400, resp.text
    assert _snapshot(job_id) == before


def test_fal_deliveries_for_another_fal_user_are_refused(base: str) -> None:
    job_id, rid = _submitted()
    body = _fal_body(rid)
    other = FalWebhookSigner(Ed25519KeyRing(SANDBOX_SEED), "another-fal-user")
    resp = _post(delivery_url(base, "fal", job_id), body, other.sign(body, request_id=rid, timestamp=int(time.time())))
    assert resp.status_code == 401 and "another fal user" in resp.json()["error"]
    assert _view(job_id).state is State.submitted
