"""A worker SIGKILLed while its synchronous OpenAI request is in flight: the request may have been billed, so the
job's manifest must show it as `uncertain`; the job is then redone by another worker and stored exactly once.

The sandbox holds each edit 5 s; the claim lease is `EDITQ_OPENAI_TIMEOUT_S + EDITQ_SYNC_LEASE_MARGIN_S` = 4 s,
so the tick of the new worker recovers the lost claim quickly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from editq.producer.api import submit_file, wait
from editq.producer.stack import LocalStack
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, sandbox_requests, sha256, unique, wait_for, write_jsonl
from tests.e2e import configure_sandbox, start, using


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    # kept in the stack's env: the replacement worker started mid-test needs the same timeouts
    yield from start(False, {"EDITQ_OPENAI_TIMEOUT_S": "3", "EDITQ_SYNC_LEASE_MARGIN_S": "1"}, keep_env=True,
                     sandbox_opts={"latency_s": 5.0, "jitter_s": 0.0}, worker_concurrency=2)


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    with using(stack):
        yield stack


def test_worker_killed_mid_request_leaves_an_uncertain_entry_and_one_result(live: LocalStack,
                                                                            tmp_path: Path) -> None:
    stack = live
    (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())
    tag = unique("crash")
    report = submit_file(write_jsonl(tmp_path / "b.jsonl", [
        {"custom_id": tag, "provider": "openai", "prompt": f"{tag}: sepia", "images": ["mug.png"], "quality": "low"},
    ]))
    assert report.enqueued == 1
    job_id = report.job_ids[0]

    def in_flight() -> list[dict]:  # type: ignore[type-arg]
        return [r for r in sandbox_requests(stack, "openai")
                if tag in json.dumps(r["input"]) and r["status"] == "IN_PROGRESS"]

    first = wait_for(in_flight, 30, "the first request to reach the sandbox")[0]
    stack.kill("worker0")  # SIGKILL mid-request: the answer is lost, the request was received
    configure_sandbox(stack, {"latency_s": 0.1})
    stack.start_worker("worker1")

    final = wait(job_id, timeout=45)
    assert final["state"] == "succeeded", final
    storage = get_storage()
    manifest = json.loads(storage.get_bytes(storage.manifest_key(report.batch_id, job_id)))
    reqs = sorted(manifest["provider_requests"], key=lambda p: p["attempt"])
    assert [(p["attempt"], p["status"]) for p in reqs] == [(1, "uncertain"), (2, "accepted")]
    assert "may have been billed" in reqs[0]["error"]
    assert reqs[1]["request_id"] == manifest["provider_request_id"] != first["request_id"]

    # the sandbox saw two requests for this job; the orphaned first one still ran to completion (billed)
    def both_done() -> list[dict]:  # type: ignore[type-arg]
        mine = [r for r in sandbox_requests(stack, "openai") if tag in json.dumps(r["input"])]
        return mine if len(mine) == 2 and all(r["status"] == "COMPLETED" for r in mine) else []

    mine = {r["request_id"]: r for r in wait_for(both_done, 30, "the orphaned request to finish")}
    assert set(mine) == {first["request_id"], manifest["provider_request_id"]}
    assert all(r["outcome"] == "ok" for r in mine.values())

    # exactly one stored result
    keys = storage.list_keys(f"{storage.settings.s3_prefix}/{report.batch_id}/{job_id}/")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["0.png", "manifest.json"]
    out = manifest["outputs"][0]
    assert sha256(storage.get_bytes(out["key"])) == out["sha256"]
    assert manifest["attempts"] == 2
