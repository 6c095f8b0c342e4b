"""fal end to end: the canonical batch through verified webhooks, and through polling with webhooks off."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from producer.api import submit_batch, wait
from producer.stack import LocalStack
from tests.e2e import (
    EXAMPLES,
    FAST_POLLS,
    WEBHOOKS_ONLY,
    accepted_webhooks,
    assert_mask_respected,
    canonical_lines,
    sandbox_log,
    start,
    using,
    verify_batch,
)


@pytest.fixture(scope="module")
def hooked() -> Iterator[LocalStack]:
    yield from start(True, WEBHOOKS_ONLY)


@pytest.fixture(scope="module")
def polled() -> Iterator[LocalStack]:
    yield from start(False, FAST_POLLS)


def _run(stack: LocalStack) -> list[dict[str, Any]]:
    report = submit_batch(canonical_lines("fal"), base_dir=EXAMPLES)
    assert report.invalid == [] and report.enqueued == 4
    assert wait(report.batch_id, timeout=90, interval=0.1)["counts"] == {"succeeded": 4}
    manifests = verify_batch(report.batch_id, report.job_ids, "fal")
    assert [o["content_type"] for o in manifests["jpeg"]["outputs"]] == ["image/jpeg"]
    assert len(manifests["two-images"]["outputs"]) == 2 and len(manifests["three-refs"]["inputs"]) == 3
    assert_mask_respected(manifests["masked"]["outputs"][0]["key"], size=(816, 816))  # auto: 512x512 fitted
    key = stack.env["EDITQ_FAL_KEY"]
    assert key not in json.dumps(manifests), "the API key leaked into a manifest"
    assert "editq.dispatch" in stack.log("worker0")  # the worker log has the task lines (ids only)...
    for name in ("worker0", "webhooks", "sandbox"):
        assert key not in stack.log(name), f"the API key leaked into the {name} log"  # ...and never the key
    mine = {m["provider_request_id"] for m in manifests.values()}
    found = [e for e in sandbox_log(stack, "fal") if e["request_id"] in mine]
    assert len(found) == 4  # one provider submission per job
    return found


def test_canonical_batch_through_webhooks(hooked: LocalStack) -> None:
    with using(hooked):
        before = accepted_webhooks(hooked, "fal")
        entries = _run(hooked)
        assert all(e["webhook_url"].startswith(hooked.env["EDITQ_WEBHOOK_BASE_URL"] + "/webhooks/fal?job=")
                   for e in entries)
        assert accepted_webhooks(hooked, "fal") == before + 4  # every job completed by a verified delivery


def test_canonical_batch_through_polling(polled: LocalStack) -> None:
    with using(polled):
        entries = _run(polled)
        assert all(not e["webhook_url"] for e in entries)
