"""Replicate end to end on real parts (Redis, moto S3 over HTTP, the sandbox, the webhook receiver, a Celery
worker, all separate processes): webhook forgeries refused by the receiver, and a route falling back from fal to
replicate. The canonical batch through webhooks and through polling is in tests/test_pipeline_contract.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from editq.producer.api import BatchReport, status, submit_file, wait
from editq.producer.stack import LocalStack
from editq.schemas.settings import get_settings
from editq.worker.keys import Keys
from editq.worker.redis_client import get_redis
from editq.worker.storage import get_storage
from editq.worker.webhook_auth import delivery_url
from tests.e2e import EXAMPLES, configure_sandbox, read_manifests, start, using

TOKEN = "r8_sandbox-token"  # producer.stack.sandbox_provider_env
SANDBOX = {"latency_s": 0.1, "jitter_s": 0.05, "concurrency": 16, "seed": 5}


def submit_rows(tmp_path: Path, rows: list[dict[str, Any]]) -> BatchReport:
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return submit_file(path)


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


def _sign(secret: str, body: bytes, msg_id: str, ts: int) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    sig = "v1," + base64.b64encode(mac).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig,
            "content-type": "application/json"}


def test_receiver_refuses_forged_deliveries_and_accepts_one_valid_once(live: LocalStack, tmp_path: Path) -> None:
    api = live.env["EDITQ_REPLICATE_BASE_URL"]
    configure_sandbox(live, {"webhook_lost_rate": 1.0})
    # the sweep of Replicate's list of predictions (worker/sweep.py) must not collect the job before the forged
    # deliveries are tried: its "swept lately" flag is held for the test (the safety-net poll waits >= 5 s)
    r, sweep_due = get_redis(), Keys(get_settings().key_prefix).sweep_due("replicate")
    r.set(sweep_due, "1", px=120_000)
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
    url = delivery_url(live.env["EDITQ_WEBHOOK_BASE_URL"], "replicate", job_id)
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
    r.delete(sweep_due)
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
