"""WaveSpeedAI end to end on real parts (Redis, moto S3 over HTTP, the sandbox, the webhook receiver and a Celery
worker as separate processes): the canonical batch through webhooks and through polling, and the receiver's
refusal of forged, stale and replayed deliveries."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from producer.api import status, submit_batch, wait
from producer.stack import LocalStack
from tests.e2e import (
    CANONICAL,
    EXAMPLES,
    FAST_POLLS,
    PROMPT,
    WEBHOOKS_ONLY,
    accepted_webhooks,
    read_manifests,
    sandbox_log,
    sandbox_request,
    start,
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


def _lines(provider: str = "wavespeed") -> list[dict[str, Any]]:
    return [{**row, "provider": provider, "quality": "low"} for row in CANONICAL]


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
    report = submit_batch(_lines(), base_dir=EXAMPLES)
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
    with using(hooked):
        assert sandbox_request(hooked, "PATCH", "/_sandbox/config", json={"webhook_lost_rate": 1.0}).status_code == 200
        try:
            line = {**_lines()[3], "prompt": f"{PROMPT} ({time.time_ns()})"}  # not a duplicate of the batch test's
            report = submit_batch([line], base_dir=EXAMPLES)
            (job_id,) = report.job_ids
            rid = wait_for(lambda: status(job_id)["request_id"], what="request id")
            auth = {"Authorization": "Bearer test"}

            def done() -> dict[str, Any] | None:
                path = f"/wavespeed/api/v3/predictions/{rid}/result"
                data = sandbox_request(hooked, "GET", path, headers=auth).json()
                return data["data"] if data["data"]["status"] == "completed" else None

            data = wait_for(done, what="task completed at the provider")
            got = sandbox_request(hooked, "GET", "/wavespeed/api/v3/webhook/secret", headers=auth)
            secret = got.json()["data"]["secret"]
            body = json.dumps(data).encode()
            url = f"{hooked.env['EDITQ_WEBHOOK_BASE_URL']}/webhooks/wavespeed?job={job_id}"

            def post(msg_id: str, ts: int, sig: str, raw: bytes = body) -> httpx.Response:
                headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
                           "content-type": "application/json"}
                return httpx.post(url, content=raw, headers=headers, timeout=15)

            before = status(job_id)
            assert before["state"] == "submitted"
            now = int(time.time())
            old = now - 400
            forged = [
                post("m1", now, _sign(secret, "m1", now, body), body.replace(b"completed", b"failed")),  # tampered
                post("m1", now, _sign("whsec_not-the-secret", "m1", now, body)),  # wrong key
                post("m1", old, _sign(secret, "m1", old, body)),  # stale (validly signed 400 s ago)
                post("m1", now, _sign(secret, "m1", old, body)),  # that delivery replayed with a fresh timestamp
            ]
            assert [r.status_code for r in forged] == [401, 401, 401, 401]
            assert [r.json()["error"] for r in forged] == [
                "rejected: signature does not match", "rejected: signature does not match",
                "rejected: timestamp outside tolerance", "rejected: signature does not match",
            ]
            after = status(job_id)
            assert (after["state"], after["history"]) == ("submitted", before["history"])

            valid = post("m2", now, _sign(secret, "m2", now, body))
            assert (valid.status_code, valid.json()) == (200, {"status": "accepted"})
            again = post("m2", now, _sign(secret, "m2", now, body))
            assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
            final = wait(job_id, timeout=30, interval=0.1)
            assert final["state"] == "succeeded" and len(final["outputs"]) == 1
            assert [h["state"] for h in final["history"]].count("ready") == 1
        finally:
            sandbox_request(hooked, "PATCH", "/_sandbox/config", json={"webhook_lost_rate": 0.0})
