"""ModelRunner end to end on real parts (Redis, moto S3 over HTTP, the sandbox, the webhook receiver and a Celery
worker as separate processes): the canonical batch through webhooks and through polling, and the receiver's
refusal of forged, stale and replayed deliveries."""

from __future__ import annotations

import base64
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
    manifests_by_cid,
    sandbox_log,
    sandbox_request,
    start,
    using,
    wait_for,
)


@pytest.fixture(scope="module")
def hooked() -> Iterator[LocalStack]:
    yield from start(True, {**WEBHOOKS_ONLY, "EDITQ_MODELRUNNER_CONCURRENCY": "8"})


@pytest.fixture(scope="module")
def polled() -> Iterator[LocalStack]:
    yield from start(False, {**FAST_POLLS, "EDITQ_MODELRUNNER_CONCURRENCY": "8"})


def _lines() -> list[dict[str, Any]]:
    return [{**row, "provider": "modelrunner", "quality": "low"} for row in CANONICAL]


def _verify_manifests(batch_id: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    from worker.storage import get_storage

    storage = get_storage()
    manifests = manifests_by_cid(batch_id)
    assert sorted(m["job_id"] for m in manifests.values()) == sorted(job_ids)
    expect = {"masked": (1, "png", (512, 512)), "three-refs": (1, "png", (512, 512)),
              "two-images": (2, "png", (768, 512)), "jpeg": (1, "jpeg", (512, 512))}
    for cid, (count, fmt, size) in expect.items():
        m = manifests[cid]
        assert m["state"] == "succeeded" and m["provider"] == "modelrunner" and m["provider_request_id"]
        assert len(m["outputs"]) == count and m["usage"]["cost_source"] == "provider"
        assert m["usage"]["cost_usd"] == 0.01 * count
        for out in m["outputs"]:
            body = storage.get_bytes(out["key"])
            assert hashlib.sha256(body).hexdigest() == out["sha256"] and len(body) == out["bytes"]
            assert out["content_type"] == f"image/{fmt}"
            with Image.open(io.BytesIO(body)) as im:
                assert (im.width, im.height) == (out["width"], out["height"]) == size
                assert (im.format or "").lower() == fmt
    # the masked edit kept every pixel outside the mask's transparent area byte-identical
    out = Image.open(io.BytesIO(storage.get_bytes(manifests["masked"]["outputs"][0]["key"]))).convert("RGB")
    src = Image.open(EXAMPLES / "mug.png").convert("RGB")
    alpha = Image.open(EXAMPLES / "mask_mug.png").getchannel("A")
    keep = [(x, y) for x in range(0, 512, 4) for y in range(0, 512, 4) if alpha.getpixel((x, y)) != 0]
    assert keep and all(out.getpixel(p) == src.getpixel(p) for p in keep)
    changed = [(x, y) for x in range(0, 512, 4) for y in range(0, 512, 4) if alpha.getpixel((x, y)) == 0]
    assert sum(out.getpixel(p) != src.getpixel(p) for p in changed) > len(changed) // 2
    assert len(manifests["three-refs"]["inputs"]) == 3 and manifests["masked"]["mask"]
    return manifests


def _run_canonical(stack: LocalStack) -> list[dict[str, Any]]:
    report = submit_batch(_lines(), base_dir=EXAMPLES)
    assert report.invalid == [] and report.enqueued == 4
    final = wait(report.batch_id, timeout=60, interval=0.1)
    assert final["counts"] == {"succeeded": 4}
    manifests = _verify_manifests(report.batch_id, report.job_ids)
    entries = sandbox_log(stack, "modelrunner")
    mine = {m["provider_request_id"] for m in manifests.values()}
    found = [e for e in entries if e["request_id"] in mine]
    assert len(found) == 4
    for e in found:
        assert e["headers"]["x-modelrunner-queue-priority"] == "low" and e["model"] == "openai/gpt-image-2/edit"
    return found


def test_canonical_batch_through_webhooks(hooked: LocalStack) -> None:
    with using(hooked):
        accepted = accepted_webhooks(hooked, "modelrunner")
        entries = _run_canonical(hooked)
        for entry in entries:
            assert entry["webhook_url"].startswith(hooked.env["EDITQ_WEBHOOK_BASE_URL"] + "/webhooks/modelrunner?job=")
            assert entry["webhook"]["delivered"] == 1
            answered = entry["webhook"]["history"][-1]  # the sandbox notes when the receiver answered
            assert answered["status"] == 200 and answered["answered_at"] >= answered["at"]
        # every job was completed by a verified delivery
        assert accepted_webhooks(hooked, "modelrunner") == accepted + 4


def test_canonical_batch_through_polling(polled: LocalStack) -> None:
    with using(polled):
        entries = _run_canonical(polled)
        assert all(e["webhook_url"] is None for e in entries)


def _sign(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def test_receiver_refuses_forged_stale_and_replayed_deliveries(hooked: LocalStack) -> None:
    with using(hooked):
        assert sandbox_request(hooked, "PATCH", "/_sandbox/config", json={"webhook_lost_rate": 1.0}).status_code == 200
        try:
            line = {**_lines()[3], "prompt": f"{PROMPT} ({time.time_ns()})"}  # not a duplicate of the batch test's
            report = submit_batch([line], base_dir=EXAMPLES)
            (job_id,) = report.job_ids
            rid = wait_for(lambda: status(job_id)["request_id"], what="request id")
            auth = {"Authorization": "Key test"}

            def done() -> dict[str, Any] | None:
                resp = sandbox_request(hooked, "GET", f"/modelrunner/requests/{rid}", headers=auth)
                return resp.json() if resp.status_code == 200 else None

            result = wait_for(done, what="request completed at the provider")
            secret = sandbox_request(hooked, "GET", "/modelrunner/webhooks/default/secret", headers=auth).json()["key"]
            body = json.dumps({"event": "completed", **result}).encode()
            url = f"{hooked.env['EDITQ_WEBHOOK_BASE_URL']}/webhooks/modelrunner?job={job_id}"

            def post(msg_id: str, ts: int, sig: str, raw: bytes = body) -> httpx.Response:
                headers = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
                           "content-type": "application/json"}
                return httpx.post(url, content=raw, headers=headers, timeout=15)

            before = status(job_id)
            assert before["state"] == "submitted"
            now = int(time.time())
            old = now - 400
            wrong = "whsec_" + base64.b64encode(b"not-the-secret").decode()
            forged = [
                post("msg_1", now, _sign(secret, "msg_1", now, body), body.replace(b'"charged"', b'"partial"')),
                post("msg_1", now, _sign(wrong, "msg_1", now, body)),
                post("msg_1", old, _sign(secret, "msg_1", old, body)),  # stale (validly signed 400 s ago)
                post("msg_1", now, _sign(secret, "msg_1", old, body)),  # replayed with a fresh timestamp
            ]
            assert [r.status_code for r in forged] == [401, 401, 401, 401]
            assert [r.json()["error"] for r in forged] == [
                "rejected: signature does not match", "rejected: signature does not match",
                "rejected: timestamp outside tolerance", "rejected: signature does not match",
            ]
            after = status(job_id)
            assert (after["state"], after["history"]) == ("submitted", before["history"])

            valid = post("msg_2", now, _sign(secret, "msg_2", now, body))
            assert (valid.status_code, valid.json()) == (200, {"status": "accepted"})
            again = post("msg_2", now, _sign(secret, "msg_2", now, body))
            assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
            final = wait(job_id, timeout=30, interval=0.1)
            assert final["state"] == "succeeded" and len(final["outputs"]) == 1
            assert [h["state"] for h in final["history"]].count("ready") == 1
        finally:
            sandbox_request(hooked, "PATCH", "/_sandbox/config", json={"webhook_lost_rate": 0.0})
