"""WaveSpeedAI end to end on real parts (Redis, moto S3 over HTTP, the sandbox, the webhook receiver and a Celery
worker as separate processes): the canonical batch through webhooks and through polling, and the receiver's
refusal of forged, stale and replayed deliveries."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from producer.api import submit_batch, wait
from producer.stack import LocalStack
from tests.e2e import (
    EXAMPLES,
    FAST_POLLS,
    WEBHOOKS_ONLY,
    accepted_webhooks,
    assert_receiver_refuses_forgeries,
    canonical_lines,
    read_manifests,
    sandbox_log,
    sandbox_request,
    start,
    undelivered_job,
    using,
    wait_for,
)

REFUSED = {
    1: ("masked", "wavespeed: mask is not supported by openai/gpt-image-2/edit on WaveSpeed (no mask field is "
                  "documented; the edit would repaint the whole image); allowed values: no mask"),
    3: ("two-images", "wavespeed: num_images=2 is not allowed; allowed values: 1"),
}


@pytest.fixture(scope="module")
def hooked() -> Iterator[LocalStack]:
    yield from start(True, {**WEBHOOKS_ONLY, "EDITQ_WAVESPEED_CONCURRENCY": "8"})


@pytest.fixture(scope="module")
def polled() -> Iterator[LocalStack]:
    yield from start(False, {**FAST_POLLS, "EDITQ_WAVESPEED_CONCURRENCY": "8"})


def _verify_manifests(batch_id: str, job_ids: list[str]) -> list[dict[str, Any]]:
    from worker.storage import get_storage

    storage = get_storage()
    manifests = read_manifests(batch_id)
    assert sorted(m["job_id"] for m in manifests) == sorted(job_ids)
    for m in manifests:
        assert m["state"] == "succeeded" and m["provider"] == "wavespeed" and m["provider_request_id"]
        assert len(m["outputs"]) == 1
        for out in m["outputs"]:
            body = storage.get_bytes(out["key"])
            assert hashlib.sha256(body).hexdigest() == out["sha256"] and len(body) == out["bytes"]
            with Image.open(io.BytesIO(body)) as im:
                assert (im.width, im.height) == (out["width"], out["height"]) == (1024, 1024)
                assert (im.format or "").lower() == out["content_type"].split("/")[1]
    return manifests


def _run_canonical(stack: LocalStack) -> tuple[Any, list[dict[str, Any]]]:
    report = submit_batch(canonical_lines("wavespeed"), base_dir=EXAMPLES)
    assert {e.line: (e.custom_id, e.error) for e in report.invalid} == REFUSED
    assert report.enqueued == 2
    final = wait(report.batch_id, timeout=60, interval=0.1)
    assert final["counts"] == {"succeeded": 2}
    manifests = _verify_manifests(report.batch_id, report.job_ids)
    by_cid = {m["custom_id"]: m for m in manifests}
    assert len(by_cid["three-refs"]["inputs"]) == 3
    assert by_cid["jpeg"]["outputs"][0]["content_type"] == "image/jpeg"
    assert by_cid["three-refs"]["outputs"][0]["content_type"] == "image/png"
    entries = sandbox_log(stack, "wavespeed")
    mine = {m["provider_request_id"] for m in manifests}
    return report, [e for e in entries if e["request_id"] in mine]


def test_canonical_batch_through_webhooks(hooked: LocalStack) -> None:
    with using(hooked):
        accepted = accepted_webhooks(hooked, "wavespeed")
        _, entries = _run_canonical(hooked)
        assert len(entries) == 2
        for entry in entries:
            assert entry["webhook_url"].startswith(hooked.env["EDITQ_WEBHOOK_BASE_URL"] + "/webhooks/wavespeed?job=")
            assert entry["webhook"]["delivered"] == 1 and entry["input"]["resolution"] == "1k"
            assert "mask" not in json.dumps(entry["input"]) and "num_images" not in entry["input"]
        # both jobs were completed by a verified delivery
        assert accepted_webhooks(hooked, "wavespeed") == accepted + 2


def test_canonical_batch_through_polling(polled: LocalStack) -> None:
    with using(polled):
        _, entries = _run_canonical(polled)
        assert len(entries) == 2 and all(e["webhook_url"] is None for e in entries)


def _sign(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = secret.removeprefix("whsec_").encode()
    return "v3," + hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).hexdigest()


def test_receiver_refuses_forged_stale_and_replayed_deliveries(hooked: LocalStack) -> None:
    with using(hooked), undelivered_job(hooked, canonical_lines("wavespeed")[3]) as (job_id, rid):
        auth = {"Authorization": "Bearer test"}

        def done() -> dict[str, Any] | None:
            path = f"/wavespeed/api/v3/predictions/{rid}/result"
            data = sandbox_request(hooked, "GET", path, headers=auth).json()
            return data["data"] if data["data"]["status"] == "completed" else None

        data = wait_for(done, what="task completed at the provider")
        got = sandbox_request(hooked, "GET", "/wavespeed/api/v3/webhook/secret", headers=auth)
        secret = got.json()["data"]["secret"]
        body = json.dumps(data).encode()
        assert_receiver_refuses_forgeries(hooked, "wavespeed", job_id, body, body.replace(b"completed", b"failed"),
                                          _sign, secret, "whsec_not-the-secret", ("m1", "m2"))
