"""ModelRunner end to end on real parts (Redis, moto S3 over HTTP, the sandbox, the webhook receiver and a Celery
worker as separate processes): the canonical batch through webhooks and through polling, and the receiver's
refusal of forged, stale and replayed deliveries."""

from __future__ import annotations

import base64
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
    manifests_by_cid,
    sandbox_log,
    sandbox_request,
    start,
    undelivered_job,
    using,
    wait_for,
)


@pytest.fixture(scope="module")
def hooked() -> Iterator[LocalStack]:
    yield from start(True, {**WEBHOOKS_ONLY, "EDITQ_MODELRUNNER_CONCURRENCY": "8"})


@pytest.fixture(scope="module")
def polled() -> Iterator[LocalStack]:
    yield from start(False, {**FAST_POLLS, "EDITQ_MODELRUNNER_CONCURRENCY": "8"})


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
    report = submit_batch(canonical_lines("modelrunner"), base_dir=EXAMPLES)
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
    with using(hooked), undelivered_job(hooked, canonical_lines("modelrunner")[3]) as (job_id, rid):
        auth = {"Authorization": "Key test"}

        def done() -> dict[str, Any] | None:
            resp = sandbox_request(hooked, "GET", f"/modelrunner/requests/{rid}", headers=auth)
            return resp.json() if resp.status_code == 200 else None

        result = wait_for(done, what="request completed at the provider")
        secret = sandbox_request(hooked, "GET", "/modelrunner/webhooks/default/secret", headers=auth).json()["key"]
        body = json.dumps({"event": "completed", **result}).encode()
        wrong = "whsec_" + base64.b64encode(b"not-the-secret").decode()
        assert_receiver_refuses_forgeries(hooked, "modelrunner", job_id, body,
                                          body.replace(b'"charged"', b'"partial"'), _sign, secret, wrong,
                                          ("msg_1", "msg_2"))
