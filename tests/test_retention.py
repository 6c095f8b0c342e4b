"""Retention (issue 13): a finished job keeps a compact record in Redis (its manifest lives in S3), bounded in
bytes, and the commands that read finished jobs still read it. Real Redis, S3 over HTTP, sandbox, workers."""

from __future__ import annotations

import json

from editq.producer.api import status, submit_batch, wait
from editq.producer.batches import list_jobs, rerun
from editq.producer.stack import LocalStack
from editq.worker.state import JobStore, State
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, unique

# What one finished job may keep, in bytes of MEMORY USAGE: its hash, its idempotency key and its provider
# request key (today ~470 + 168 + 136; it was ~5,700 + 168 + 136 before compaction, docs/operations.md).
BOUND = 1024


def test_a_finished_job_keeps_a_compact_record_that_status_jobs_and_rerun_read(live: LocalStack) -> None:
    tag = unique("keep")
    rows = [{"custom_id": f"{tag}-{i}", "prompt": f"Put it on a shelf {tag} {i}", "images": [str(EXAMPLES / "mug.png")],
             "quality": "low", "provider": "fal", "group": f"g-{tag}", "variant": f"v{i}"} for i in range(3)]
    report = submit_batch(rows)
    assert report.enqueued == 3
    wait(report.batch_id, timeout=90, interval=0.1)
    store, storage = JobStore(), get_storage()
    r, k = store.r, store.k
    raw = storage.get_bytes(storage.batch_manifest_key(report.batch_id))
    batch_manifest = [json.loads(x) for x in raw.splitlines()]
    by_job = {m["job_id"]: m for m in batch_manifest}
    assert sorted(by_job) == sorted(report.job_ids) and {m["state"] for m in batch_manifest} == {"succeeded"}
    assert not r.exists(k.batch_manifests(report.batch_id))  # staged manifests are gone once the batch's is written

    for jid in report.job_ids:
        m = by_job[jid]
        fields = r.hgetall(k.job(jid))
        assert "spec" not in fields and "manifest" not in fields and "h" not in fields
        assert r.object("encoding", k.job(jid)) == "listpack"
        assert r.ttl(k.job(jid)) > 0
        owned = [k.job(jid), k.idem(m["job"]["idempotency_key"]), k.request("fal", m["provider_request_id"])]
        assert all(r.exists(key) for key in owned)
        kept = sum(int(r.memory_usage(key, samples=0) or 0) for key in owned)
        assert kept <= BOUND, (kept, fields)

        # status: the compact record, with history and outputs from the manifest in S3
        st = status(jid)
        assert st["state"] == "succeeded" and st["custom_id"] == m["custom_id"] and st["group"] == f"g-{tag}"
        assert st["variant"] == m["variant"] and st["batch_id"] == report.batch_id
        assert [h["state"] for h in st["history"]] == [h["state"] for h in m["history"]]
        assert [h["state"] for h in st["history"]][-1] == "succeeded"
        assert st["outputs"] == m["outputs"] and st["cost_usd"] == m["cost_usd"]
        # the compact record alone rebuilds the output records (key, sha256, size) that `jobs` checks in S3
        view = store.get(jid)
        assert view is not None and view.compact and view.state is State.succeeded
        assert [(o["key"], o["sha256"], o["bytes"], o["width"], o["height"]) for o in view.outputs()] == [
            (o["key"], o["sha256"], o["bytes"], o["width"], o["height"]) for o in m["outputs"]]

    rows_out = {row["job_id"]: row for row in list_jobs(report.batch_id, ["succeeded", "missing"])}
    assert {j: (row["custom_id"], row["state"], row["cost_usd"]) for j, row in rows_out.items()} == {
        j: (by_job[j]["custom_id"], "succeeded", by_job[j]["cost_usd"]) for j in report.job_ids}
    assert status(report.batch_id, groups=True)["groups"] == {f"g-{tag}": {"succeeded": 3}}

    # rerun reads the job as enqueued back from its manifest: an output lost from S3 is run again, same inputs
    lost = report.job_ids[1]
    storage.client.delete_object(Bucket=storage.bucket, Key=by_job[lost]["outputs"][0]["key"])
    again = rerun(report.batch_id, {"missing"})
    assert (again.enqueued, again.skipped) == (1, []) and again.batch_id
    wait(again.batch_id, timeout=90, interval=0.1)
    (redo,) = list(list_jobs(again.batch_id))
    assert redo["custom_id"] == by_job[lost]["custom_id"] and redo["rerun_of"] == lost
    redo_m = json.loads(storage.get_bytes(storage.manifest_key(again.batch_id, redo["job_id"])))
    assert redo_m["inputs"] == by_job[lost]["inputs"] and redo_m["job"]["prompt"] == by_job[lost]["job"]["prompt"]
    assert status(lost)["superseded_by"] == redo["job_id"]
