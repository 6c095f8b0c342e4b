"""Replicate end to end on real parts (Redis, moto S3 over HTTP, the sandbox, the webhook receiver, a Celery
worker, all separate processes): the canonical batch through webhooks, webhook forgeries refused by the receiver,
and the same batch by polling alone with webhooks off."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from producer.api import BatchReport, status, submit_file, wait
from producer.stack import LocalStack
from tests.e2e import EXAMPLES, configure_sandbox, read_manifests, start, using
from worker.storage import get_storage

TOKEN = "r8_sandbox-token"  # producer.stack.sandbox_provider_env
SANDBOX = {"latency_s": 0.1, "jitter_s": 0.05, "concurrency": 16, "seed": 5}

MASK_MSG = ("replicate: mask is not supported: openai/gpt-image-2 on Replicate has no mask input; "
            "remove the mask or route the job to a provider that accepts masks (e.g. fal)")
NUM_MSG = "replicate: num_images=2 is not allowed; allowed values: 1"


def canonical_rows(tag: str) -> list[dict[str, Any]]:
    """The canonical batch: a masked edit, three reference images, num_images=2, jpeg output (+ one auto png)."""
    ex = {n: str(EXAMPLES / n) for n in ("mug.png", "mask_mug.png", "bottle.png", "backpack.png", "sneaker.jpg")}
    common = {"provider": "replicate", "quality": "low"}
    return [
        {**common, "custom_id": f"{tag}-mask", "prompt": f'{tag} new label "FRESH"', "images": [ex["mug.png"]],
         "mask": ex["mask_mug.png"]},
        {**common, "custom_id": f"{tag}-three", "prompt": f"{tag} flat-lay of the three products",
         "images": [ex["mug.png"], ex["bottle.png"], ex["backpack.png"]], "size": "1536x1024"},
        {**common, "custom_id": f"{tag}-two", "prompt": f"{tag} two variants", "images": [ex["sneaker.jpg"]],
         "num_images": 2},
        {**common, "custom_id": f"{tag}-jpeg", "prompt": f"{tag} on a wet street", "images": [ex["sneaker.jpg"]],
         "output_format": "jpeg"},
        {**common, "custom_id": f"{tag}-webp", "prompt": f"{tag} sepia", "images": [ex["bottle.png"]],
         "size": "1024x1024", "output_format": "webp", "background": "opaque"},
    ]


def submit_rows(tmp_path: Path, rows: list[dict[str, Any]]) -> BatchReport:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return submit_file(path)


def check_canonical(stack: LocalStack, report: BatchReport, tag: str) -> dict[str, dict[str, Any]]:
    """Refusals are exact; the three allowed jobs succeed on replicate with manifest sha256 == S3 bytes."""
    assert [(e.line, e.custom_id, e.error) for e in report.invalid] == [
        (1, f"{tag}-mask", MASK_MSG), (3, f"{tag}-two", NUM_MSG)]
    assert report.enqueued == 3
    final = wait(report.batch_id, timeout=60)
    assert final["counts"] == {"succeeded": 3}, final
    storage = get_storage()
    by_cid = {m["custom_id"]: m for m in read_manifests(report.batch_id)}
    assert set(by_cid) == {f"{tag}-three", f"{tag}-jpeg", f"{tag}-webp"}
    expected = {f"{tag}-three": ("image/png", (1536, 1024)), f"{tag}-jpeg": ("image/jpeg", (768, 512)),
                f"{tag}-webp": ("image/webp", (1024, 1024))}
    for cid, m in by_cid.items():
        assert m["state"] == "succeeded" and m["provider"] == "replicate" and m["provider_request_id"]
        assert m["usage"]["cost_source"] == "tokens" and m["usage"]["output_tokens"] > 0
        (out,) = m["outputs"]
        body = storage.get_bytes(out["key"])
        assert hashlib.sha256(body).hexdigest() == out["sha256"] and len(body) == out["bytes"]
        with Image.open(io.BytesIO(body)) as im:
            assert (out["content_type"], im.size) == expected[cid]
        assert out["source_url"].startswith(stack.env["EDITQ_REPLICATE_BASE_URL"] + "/delivery/")
    three = by_cid[f"{tag}-three"]
    assert len(three["inputs"]) == 3
    sent = httpx.get(f"{stack.env['EDITQ_SANDBOX_URL']}/_sandbox/requests/{three['provider_request_id']}").json()
    assert sent["input"]["input"]["aspect_ratio"] == "3:2" and len(sent["input"]["input"]["input_images"]) == 3
    # the token never lands in manifests or process logs
    blob = json.dumps(list(by_cid.values()))
    assert TOKEN not in blob
    for name in ("worker0", "webhooks"):
        assert TOKEN not in stack.log(name)
    return by_cid


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # quick retries for the fallback test
    yield from start(True, {"EDITQ_RETRY_BASE_S": "0.2"}, sandbox_opts=SANDBOX, keep_env=True)


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    with using(stack):
        configure_sandbox(stack, {"webhook_lost_rate": 0.0, "latency_s": 0.1})
        yield stack
        configure_sandbox(stack, {"webhook_lost_rate": 0.0, "latency_s": 0.1})


def test_canonical_batch_through_webhooks(live: LocalStack, tmp_path: Path) -> None:
    tag = f"rwh{os.getpid()}{int(time.time() * 1000) % 100000}"
    report = submit_rows(tmp_path, canonical_rows(tag))
    by_cid = check_canonical(live, report, tag)
    entries = [httpx.get(f"{live.env['EDITQ_SANDBOX_URL']}/_sandbox/requests/{m['provider_request_id']}").json()
               for m in by_cid.values()]
    for e in entries:  # each prediction asked for the completed event only, and it was delivered
        assert e["input"]["webhook_events_filter"] == ["completed"]
        assert e["input"]["webhook"].startswith(live.env["EDITQ_WEBHOOK_BASE_URL"] + "/webhooks/replicate?job=")
        assert e["webhook"]["delivered"] >= 1


def _sign(secret: str, body: bytes, msg_id: str, ts: int) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    sig = "v1," + base64.b64encode(mac).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
            "content-type": "application/json"}


def test_receiver_refuses_forged_deliveries_and_accepts_one_valid_once(live: LocalStack, tmp_path: Path) -> None:
    api = live.env["EDITQ_REPLICATE_BASE_URL"]
    configure_sandbox(live, {"webhook_lost_rate": 1.0})
    tag = f"rforge{int(time.time() * 1000) % 100000}"
    report = submit_rows(tmp_path, [{"custom_id": tag, "prompt": tag, "images": [str(EXAMPLES / "mug.png")],
                                     "provider": "replicate", "quality": "low"}])
    (job_id,) = report.job_ids
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def finished_upstream() -> dict[str, Any] | None:
        st = status(job_id)
        if st["state"] != "submitted" or not st["request_id"]:
            return None
        pred = httpx.get(f"{api}/v1/predictions/{st['request_id']}", headers=auth).json()
        return pred if pred["status"] == "succeeded" else None

    deadline = time.monotonic() + 30
    pred = None
    while pred is None and time.monotonic() < deadline:
        pred = finished_upstream()
        time.sleep(0.05)
    assert pred is not None, status(job_id)
    secret = httpx.get(f"{api}/v1/webhooks/default/secret", headers=auth).json()["key"]
    url = f"{live.env['EDITQ_WEBHOOK_BASE_URL']}/webhooks/replicate?job={job_id}"
    body = json.dumps(pred).encode()
    msg_id, now = f"msg_{pred['id']}", int(time.time())
    forged = dict(pred, output=["https://evil.example/x.png"])
    attempts = {
        "tampered body": (json.dumps(forged).encode(), _sign(secret, body, msg_id, now)),
        "wrong key": (body, _sign("whsec_" + base64.b64encode(b"not-the-secret-key").decode(), body, msg_id, now)),
        "stale timestamp": (body, _sign(secret, body, msg_id, now - 600)),
        "no signature": (body, {k: v for k, v in _sign(secret, body, msg_id, now).items()
                                if k != "webhook-signature"}),
    }
    for what, (sent, headers) in attempts.items():
        resp = httpx.post(url, content=sent, headers=headers)
        assert resp.status_code == 401, what
    assert status(job_id)["state"] == "submitted"  # nothing moved

    valid = _sign(secret, body, msg_id, now)
    first = httpx.post(url, content=body, headers=valid)
    assert (first.status_code, first.json()) == (200, {"status": "accepted"})
    done = wait(job_id, timeout=30)
    assert done["state"] == "succeeded"
    history = [h["state"] for h in done["history"]]
    again = httpx.post(url, content=body, headers=valid)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    replay = httpx.post(url, content=body, headers=_sign(secret, body, msg_id, now - 3600))
    assert replay.status_code == 401
    after = status(job_id)
    assert after["state"] == "succeeded" and [h["state"] for h in after["history"]] == history
    assert history == ["queued", "submitting", "submitted", "ready", "collecting", "succeeded"]


def test_route_falls_back_from_failing_fal_to_replicate(live: LocalStack, tmp_path: Path) -> None:
    """`provider: "fal,replicate"`: every fal submit answers 503 (a sandbox fault that replicate is exempt
    from through the per-provider override), so after its attempts the job runs on replicate."""
    sandbox = live.env["EDITQ_SANDBOX_URL"]
    configure_sandbox(live, {"submit_5xx_rate": 1.0, "provider_faults": {"replicate": {"submit_5xx_rate": 0.0}}})
    try:
        before = httpx.get(f"{sandbox}/_sandbox/stats").json()["providers"]
        tag = f"rfall{int(time.time() * 1000) % 100000}"
        report = submit_rows(tmp_path, [{"custom_id": tag, "prompt": tag, "images": [str(EXAMPLES / "mug.png")],
                                         "provider": "fal,replicate", "quality": "low"}])
        assert report.enqueued == 1, report.invalid
        final = wait(report.batch_id, timeout=60)
        assert final["counts"] == {"succeeded": 1}
        after = httpx.get(f"{sandbox}/_sandbox/stats").json()["providers"]
    finally:
        httpx.patch(f"{sandbox}/_sandbox/config", json={"submit_5xx_rate": 0.0, "provider_faults": {}})
    (m,) = read_manifests(report.batch_id)
    assert m["provider"] == "replicate" and m["state"] == "succeeded"
    tried = [(r["provider"], r["status"]) for r in m["provider_requests"]]
    assert tried[-1] == ("replicate", "accepted") and ("fal", "failed") in tried
    assert all(p == "fal" for p, _ in tried[:-1])
    fal_503 = after["fal"]["rejected"].get("5xx", 0) - before["fal"]["rejected"].get("5xx", 0)
    assert fal_503 == len(tried) - 1 >= 1
    assert after["fal"]["accepted"] == before["fal"]["accepted"]
    assert after["replicate"]["accepted"] == before["replicate"]["accepted"] + 1
    assert [h["state"] for h in m["history"]].count("queued") >= 2  # re-queued for the next provider
    (out,) = m["outputs"]
    assert hashlib.sha256(get_storage().get_bytes(out["key"])).hexdigest() == out["sha256"]


@pytest.fixture(scope="module")
def poll_stack() -> Iterator[LocalStack]:
    """Webhooks off (no receiver, no webhook URL anywhere); the poller alone completes jobs."""
    yield from start(False, {"EDITQ_POLL_INTERVAL_S": "0.2", "EDITQ_POLL_MAX_S": "1"}, sandbox_opts=SANDBOX,
                     keep_env=True)


def test_canonical_batch_by_polling_with_webhooks_off(poll_stack: LocalStack, tmp_path: Path) -> None:
    with using(poll_stack):
        assert "EDITQ_WEBHOOK_BASE_URL" not in poll_stack.env
        tag = f"rpoll{int(time.time() * 1000) % 100000}"
        report = submit_rows(tmp_path, canonical_rows(tag))
        by_cid = check_canonical(poll_stack, report, tag)
        for m in by_cid.values():
            e = httpx.get(f"{poll_stack.env['EDITQ_SANDBOX_URL']}/_sandbox/requests/{m['provider_request_id']}").json()
            assert e["webhook_url"] is None and "webhook" not in e["input"] and e["webhook"] is None
