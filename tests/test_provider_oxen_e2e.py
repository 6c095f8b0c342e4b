"""Oxen.ai end to end: Redis, moto S3 over HTTP, the sandbox, a Celery worker, all real processes. Oxen has no
webhooks (and nothing to poll), so one stack with webhooks off. What Oxen's gpt-image-2 cannot do
(num_images > 1, pixel sizes) is refused at enqueue with a precise message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer.api import submit_file, wait
from producer.stack import LocalStack
from tests.conftest import sandbox_requests, sha256, unique, write_jsonl
from tests.e2e import assert_mask_respected, copy_examples, manifests_by_cid, start, using
from worker.storage import get_storage


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from start(False, {}, sandbox_opts={"latency_s": 0.1, "jitter_s": 0.0}, worker_concurrency=4)


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    with using(stack):
        yield stack


def test_canonical_batch_on_oxen(live: LocalStack, tmp_path: Path) -> None:
    stack = live
    copy_examples(tmp_path)
    tag = unique("oxen")
    rows: list[dict | str] = [  # type: ignore[type-arg]
        {"custom_id": f"{tag}-masked", "provider": "oxen", "prompt": f"{tag}: a lemon label", "images": ["mug.png"],
         "mask": "mask_mug.png", "quality": "low"},
        {"custom_id": f"{tag}-refs", "provider": "oxen", "prompt": f"{tag}: flat-lay of all three",
         "images": ["mug.png", "bottle.png", "backpack.png"], "output_format": "jpeg", "quality": "low"},
        {"custom_id": f"{tag}-two", "provider": "oxen", "prompt": "two variants", "images": ["mug.png"],
         "num_images": 2, "quality": "low"},
        {"custom_id": f"{tag}-sized", "provider": "oxen", "prompt": "sized", "images": ["mug.png"],
         "size": "1536x1024", "quality": "low"},
    ]
    report = submit_file(write_jsonl(tmp_path / "batch.jsonl", rows))
    assert report.enqueued == 2, report.invalid
    assert [(e.line, e.error) for e in report.invalid] == [
        (3, "oxen: num_images=2 is not allowed; allowed values: 1"),
        (4, "oxen: size=1536x1024 is not allowed; allowed values: auto (Oxen's gpt-image-2 takes an aspect ratio and "
            "a 1K/2K/4K tier, not pixels; EDITQ_OXEN_SIZE_MAPPING=1 maps WxH sizes whose ratio is one of Oxen's)"),
    ]
    final = wait(report.batch_id, timeout=60)
    assert final["counts"] == {"succeeded": 2}

    storage = get_storage()
    manifests = manifests_by_cid(report.batch_id)
    sent = [r for r in sandbox_requests(stack, "oxen") if tag in json.dumps(r["input"])]
    assert len(sent) == 2 and all(r["outcome"] == "ok" for r in sent)
    for m in manifests.values():
        assert m["state"] == "succeeded" and m["provider"] == "oxen" and m["provider_request_id"].startswith("oxen-")
        assert [(p["attempt"], p["status"]) for p in m["provider_requests"]] == [(1, "accepted")]
        assert len(m["outputs"]) == 1
        out = m["outputs"][0]
        body = storage.get_bytes(out["key"])
        assert sha256(body) == out["sha256"] and len(body) == out["bytes"]
        assert out["source_url"].startswith(stack.env["EDITQ_SANDBOX_URL"] + "/files/")
        assert (out["width"], out["height"]) == (1024, 1024)  # aspect auto on 512x512 inputs, tier 1K
    key = stack.env["EDITQ_OXEN_API_KEY"]
    assert key not in json.dumps(manifests) and key not in stack.log("worker0")
    refs = manifests[f"{tag}-refs"]
    assert refs["outputs"][0]["content_type"] == "image/jpeg"
    body_sent = next(r["input"] for r in sent if f"{tag}: flat-lay" in r["input"]["prompt"])
    assert len(body_sent["input_image"]) == 3 and body_sent["resolution"] == "1K" and "mask_url" not in body_sent

    # the mask went out converted to Oxen's convention (white = edit), and only the masked area changed
    masked = manifests[f"{tag}-masked"]
    mask_sent = next(r["input"]["mask_url"] for r in sent if "mask_url" in r["input"])
    assert "/inputs/" in mask_sent and mask_sent != masked["mask"]["s3_key"]
    assert_mask_respected(masked["outputs"][0]["key"], size=(1024, 1024))
