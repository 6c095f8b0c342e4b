"""openai_batch end to end on real parts: Redis, S3 over HTTP (moto), the sandbox, a Celery worker. Polling only
(OpenAI Batch has no per-job webhooks), so the stack runs with webhooks off.

Jobs are enqueued while no worker runs, then a worker is started: its first dispatch claims them all, so they
share one provider batch (what an overnight run looks like).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from editq.producer.api import BatchReport, status, submit_file, wait
from editq.producer.stack import LocalStack
from editq.worker.storage import get_storage
from tests.conftest import sandbox_requests, sha256, unique, wait_for, write_jsonl
from tests.e2e import configure_sandbox, copy_examples, manifests_by_cid, start, using

WORKER_ENV = {
    "EDITQ_POLL_INTERVAL_S": "0.2",
    "EDITQ_POLL_MAX_S": "0.4",
    "EDITQ_TICK_INTERVAL_S": "0.2",
    "EDITQ_RETRY_BASE_S": "3",
    "EDITQ_OPENAI_BATCH_STATUS_TTL_S": "0.2",
}
SANDBOX_KEY = "sk-sandbox-batch-key"
INPUTS = ("mug.png", "bottle.png", "watch.png", "mask_mug.png")


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from start(False, {}, sandbox_opts={"latency_s": 0.1, "jitter_s": 0.0, "concurrency": 8, "seed": 5},
                     workers=0, worker_concurrency=16)


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    with using(stack):
        yield stack
        for name in [n for n in stack.procs if n.startswith("batchworker")]:
            stack.stop_proc(name)


def _provider_batches(stack: LocalStack) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.env['EDITQ_SANDBOX_URL']}/openai/v1/batches", params={"limit": 100},
                  headers={"Authorization": f"Bearer {SANDBOX_KEY}"}, timeout=10)
    r.raise_for_status()
    return list(r.json()["data"])


def _start_worker(stack: LocalStack, tag: str, **extra: str) -> None:
    stack.start_worker(f"batchworker-{tag}", extra_env={**WORKER_ENV, **extra})


def test_canonical_batch_completes_through_openai_batch(live: LocalStack, tmp_path: Path) -> None:
    tag = unique("oaib")
    copy_examples(tmp_path, INPUTS)
    rows = [
        {"custom_id": f"{tag}-canon", "provider": "openai_batch", "model": "gpt-image-2",
         "prompt": f'{tag}: redesign only the label with the words "FRESH BREW"',
         "images": ["mug.png", "bottle.png", "watch.png"], "mask": "mask_mug.png", "num_images": 2,
         "output_format": "jpeg", "quality": "low"},
        {"custom_id": f"{tag}-plain", "provider": "openai_batch", "prompt": f"{tag}: black and white studio shot",
         "images": ["bottle.png"], "quality": "medium"},
    ]
    report = submit_file(write_jsonl(tmp_path / "batch.jsonl", rows))
    assert report.enqueued == 2 and not report.invalid
    _start_worker(live, "canon")
    final = wait(report.batch_id, timeout=90)
    assert final["counts"] == {"succeeded": 2}

    storage = get_storage()
    manifests = manifests_by_cid(report.batch_id)
    provider_batches = {m["provider_request_id"].split(":")[0] for m in manifests.values()}
    assert len(provider_batches) == 1, "both jobs were claimed by one dispatch and share one provider batch"
    (pbid,) = provider_batches
    assert pbid.startswith("batch_")
    canon = manifests[f"{tag}-canon"]
    assert canon["provider"] == "openai_batch" and canon["provider_request_id"] == f"{pbid}:{canon['job_id']}"
    assert [h["state"] for h in canon["history"]] == ["queued", "submitting", "submitted", "ready", "collecting",
                                                      "succeeded"]
    assert [(r["status"], r.get("request_id")) for r in canon["provider_requests"]] == [
        ("accepted", canon["provider_request_id"])]
    assert len(canon["inputs"]) == 3 and canon["mask"]["format"] == "png"
    assert len(canon["outputs"]) == 2
    for out in canon["outputs"]:
        body = storage.get_bytes(out["key"])
        assert sha256(body) == out["sha256"] and len(body) == out["bytes"]
        with Image.open(io.BytesIO(body)) as im:
            assert (im.format, im.size) == ("JPEG", (512, 512)) == ("JPEG", (out["width"], out["height"]))
        assert out["content_type"] == "image/jpeg" and out["key"].endswith(".jpg")
    # cost: the line's usage priced at 50% of gpt-image-2's sync token prices
    u = canon["usage"]
    assert u["cost_source"] == "tokens" and u["input_image_tokens"] == 3 * (85 + 170)
    sync = (u["input_text_tokens"] * 5 + u["input_image_tokens"] * 8 + u["output_image_tokens"] * 30) / 1e6
    assert u["cost_usd"] == pytest.approx(sync / 2, abs=1e-6)
    # exactly one provider line per job; the decoded outputs were staged once under the provider batch id
    mine = [r for r in sandbox_requests(live, "openai_batch") if tag in json.dumps(r.get("input"))]
    assert sorted(r["input"]["custom_id"] for r in mine) == sorted(m["job_id"] for m in manifests.values())
    line = next(r["input"]["body"] for r in mine if r["input"]["custom_id"] == canon["job_id"])
    urls = [i["image_url"] for i in line["images"]] + [line["mask"]["image_url"]]
    assert len(urls) == 4 and all("X-Amz-Expires=93600" in u for u in urls), "inputs must outlive the 24 h window"
    staged = storage.list_keys(f"staging/openai_batch/{pbid}/")
    assert sorted(k.split("/", 3)[3] for k in staged) == sorted(
        [f"{canon['job_id']}/0.jpg", f"{canon['job_id']}/1.jpg", f"{manifests[f'{tag}-plain']['job_id']}/0.png"])
    assert SANDBOX_KEY not in json.dumps(manifests)


@contextmanager
def _expiring(live: LocalStack, tmp_path: Path, prefix: str, image: str, n: int, expire_after: int,
              **worker_env: str) -> Iterator[tuple[str, BatchReport]]:
    """`n` one-image lines enqueued, then a worker started while the sandbox lets only `expire_after` lines of a
    provider batch run before it expires; on leaving, batches run to the end again."""
    tag = unique(prefix)
    copy_examples(tmp_path, INPUTS)
    rows = [{"custom_id": f"{tag}-{i}", "provider": "openai_batch", "prompt": f"{tag} shot {i}",
             "images": [image], "quality": "low"} for i in range(n)]
    report = submit_file(write_jsonl(tmp_path / f"{prefix}.jsonl", rows))
    assert report.enqueued == n
    configure_sandbox(live, {"openai_batch_expire_after_lines": expire_after})
    try:
        _start_worker(live, prefix, **worker_env)
        yield tag, report
    finally:
        configure_sandbox(live, {"openai_batch_expire_after_lines": -1})  # the retries' window does not run out


def test_partial_expiry_some_succeed_the_rest_are_retried(live: LocalStack, tmp_path: Path) -> None:
    started = time.time() - 1
    with _expiring(live, tmp_path, "oaibx", "mug.png", 5, 2) as (tag, report):
        expired = wait_for(lambda: [b for b in _provider_batches(live) if b["status"] == "expired"
                                    and b["created_at"] >= started and b["request_counts"]["total"] == 5],
                           60, "the first provider batch to expire", interval=0.02)
    first = expired[0]
    assert first["request_counts"] == {"total": 5, "completed": 2, "failed": 3}

    final = wait(report.batch_id, timeout=90)
    assert final["counts"] == {"succeeded": 5}
    manifests = manifests_by_cid(report.batch_id)
    once = [m for m in manifests.values() if m["attempts"] == 1]
    twice = [m for m in manifests.values() if m["attempts"] == 2]
    assert len(once) == 2 and len(twice) == 3
    for m in once:
        assert m["provider_request_id"].startswith(first["id"] + ":")
        assert [r["status"] for r in m["provider_requests"]] == ["accepted"]
    for m in twice:
        first_try, second_try = m["provider_requests"]
        assert first_try["status"] == "failed" and first_try["request_id"] == f"{first['id']}:{m['job_id']}"
        assert first_try["error"].startswith(f"openai_batch: not run: batch_expired in batch {first['id']} "
                                             "(not billed; back to the queue)")
        assert second_try["status"] == "accepted" and not m["provider_request_id"].startswith(first["id"])
        assert "retry_wait" in [h["state"] for h in m["history"]] and len(m["outputs"]) == 1
    mine = [r for r in sandbox_requests(live, "openai_batch") if tag in json.dumps(r.get("input"))]
    assert len(mine) == 5, "the expired lines never ran; each job ran exactly once"


def test_partial_expiry_with_fail_policy_fails_the_unrun_jobs(live: LocalStack, tmp_path: Path) -> None:
    with _expiring(live, tmp_path, "oaibf", "bottle.png", 3, 1, EDITQ_OPENAI_BATCH_UNRUN_POLICY="fail") as (_, report):
        final = wait(report.batch_id, timeout=90)
    assert final["counts"] == {"succeeded": 1, "failed": 2}
    manifests = manifests_by_cid(report.batch_id)
    failed = [m for m in manifests.values() if m["state"] == "failed"]
    assert len(failed) == 2
    for m in failed:
        assert m["attempts"] == 1 and m["outputs"] == []
        assert m["error"]["kind"] == "terminal" and m["error"]["provider_code"] == "batch_expired"
        assert "(not billed; failed by unrun_policy=fail)" in m["error"]["reason"]
    [ok] = [m for m in manifests.values() if m["state"] == "succeeded"]
    assert len(ok["outputs"]) == 1 and ok["usage"]["cost_usd"] > 0
    # their outcome is `expired` (the provider never ran them): `rerun --only expired` runs exactly those again
    from editq.producer.batches import list_jobs, rerun

    assert sorted(r["custom_id"] for r in list_jobs(report.batch_id, ["expired"])) == sorted(
        m["custom_id"] for m in failed)
    again = rerun(report.batch_id, {"expired"})
    assert again.enqueued == 2 and again.by_outcome == {"expired": 2} and again.batch_id
    assert wait(again.batch_id, timeout=90)["counts"] == {"succeeded": 2}
    assert status(report.batch_id)["latest"] == {"succeeded": 3}


def test_batches_are_cut_small_and_only_max_open_batches_run_at_once(live: LocalStack, tmp_path: Path) -> None:
    """The limits set small through settings: 3 lines per provider batch, 2 provider batches open at once. 11 jobs
    make at least 4 batches of at most 3 lines; two run together, never three."""
    from editq.worker.keys import keys
    from editq.worker.redis_client import get_redis

    tag = unique("oaibn")
    copy_examples(tmp_path, INPUTS)
    rows = [{"custom_id": f"{tag}-{i}", "provider": "openai_batch", "prompt": f"{tag} shot {i}",
             "images": ["mug.png"], "quality": "low"} for i in range(11)]
    report = submit_file(write_jsonl(tmp_path / "many.jsonl", rows))
    assert report.enqueued == 11
    configure_sandbox(live, {"latency_s": 1.0})
    r, k = get_redis(), keys()
    seen: list[int] = []
    try:
        _start_worker(live, "many", EDITQ_OPENAI_BATCH_MAX_LINES="3", EDITQ_OPENAI_BATCH_MAX_OPEN_BATCHES="2")

        def done() -> bool:
            seen.append(int(r.zcard(k.oaib_open)))
            return status(report.batch_id)["counts"] == {"succeeded": 11}

        wait_for(done, 120, "the 11 jobs", interval=0.05)
    finally:
        configure_sandbox(live, {"latency_s": 0.1})
    assert max(seen) == 2, "two provider batches ran at once, never more"
    manifests = manifests_by_cid(report.batch_id)
    by_batch: dict[str, int] = {}
    for m in manifests.values():
        assert m["state"] == "succeeded"
        pbid = m["provider_request_id"].split(":")[0]
        by_batch[pbid] = by_batch.get(pbid, 0) + 1
    assert len(by_batch) >= 4 and max(by_batch.values()) <= 3 and sum(by_batch.values()) == 11
    mine = [b for b in _provider_batches(live) if b["id"] in by_batch]
    assert sorted(b["request_counts"]["total"] for b in mine) == sorted(by_batch.values())
