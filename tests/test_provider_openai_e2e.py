"""OpenAI (synchronous images/edits) end to end: Redis, moto S3 over HTTP, the sandbox, a Celery worker,
all real processes. The API has no webhooks (and nothing to poll), so one stack with webhooks off."""

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
    yield from start(False, {}, sandbox_opts={"latency_s": 0.1, "jitter_s": 0.0, "concurrency": 8},
                     worker_concurrency=4)


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    with using(stack):
        yield stack


def test_canonical_batch_on_openai(live: LocalStack, tmp_path: Path) -> None:
    stack = live
    copy_examples(tmp_path)
    tag = unique("oai")
    rows: list[dict | str] = [  # type: ignore[type-arg]
        {"custom_id": f"{tag}-masked", "provider": "openai", "prompt": f"{tag}: a lemon label", "images": ["mug.png"],
         "mask": "mask_mug.png", "quality": "low"},
        {"custom_id": f"{tag}-refs", "provider": "openai", "prompt": f"{tag}: flat-lay of all three",
         "images": ["mug.png", "bottle.png", "backpack.png"], "num_images": 2, "output_format": "jpeg",
         "quality": "low"},
        {"custom_id": f"{tag}-transparent", "provider": "openai", "prompt": "cut out", "images": ["mug.png"],
         "background": "transparent"},
    ]
    report = submit_file(write_jsonl(tmp_path / "batch.jsonl", rows))
    assert report.enqueued == 2, report.invalid
    assert [(e.line, e.error) for e in report.invalid] == [(3, (
        "openai: background=transparent is not allowed for gpt-image-2 (OpenAI rejected it at launch and lists it "
        "only as a preview since 2026-08); allowed values: auto, opaque"))]
    final = wait(report.batch_id, timeout=60)
    assert final["counts"] == {"succeeded": 2}

    storage = get_storage()
    manifests = manifests_by_cid(report.batch_id)
    sent = {r["request_id"]: r for r in sandbox_requests(stack, "openai") if tag in json.dumps(r["input"])}
    assert len(sent) == 2  # exactly one request per job
    for m in manifests.values():
        assert m["state"] == "succeeded" and m["provider"] == "openai"
        assert m["provider_request_id"] in sent
        assert [(p["attempt"], p["status"], p.get("request_id")) for p in m["provider_requests"]] == [
            (1, "accepted", m["provider_request_id"])]
        usage = m["usage"]
        assert usage["cost_source"] == "tokens" and usage["cost_usd"] > 0 and usage["output_image_tokens"] > 0
        assert len(m["outputs"]) == m["job"]["num_images"]
        for out in m["outputs"]:
            body = storage.get_bytes(out["key"])
            assert sha256(body) == out["sha256"] and len(body) == out["bytes"]
            assert out["source_url"] is None  # inline base64, nothing to fetch
        keys = storage.list_keys(f"{storage.settings.s3_prefix}/{report.batch_id}/{m['job_id']}/")
        assert len(keys) == len(m["outputs"]) + 1

    key = stack.env["EDITQ_OPENAI_API_KEY"]
    assert key not in json.dumps(manifests) and key not in stack.log("worker0")

    refs = manifests[f"{tag}-refs"]
    assert [o["content_type"] for o in refs["outputs"]] == ["image/jpeg", "image/jpeg"]
    assert len(refs["inputs"]) == 3
    entry = sent[refs["provider_request_id"]]["input"]
    assert [(i["field"], i["content_type"]) for i in entry["image"]] == [("image[]", "image/png")] * 3
    assert entry["n"] == "2" and entry["output_format"] == "jpeg" and "mask" not in entry
    assert refs["usage"]["input_image_tokens"] == 3 * (85 + 170)

    # the masked edit: OpenAI's convention (alpha 0 = edit); every pixel outside the mask is unchanged
    masked = manifests[f"{tag}-masked"]
    assert sent[masked["provider_request_id"]]["input"]["mask"]["content_type"] == "image/png"
    assert_mask_respected(masked["outputs"][0]["key"], same_size=True)
