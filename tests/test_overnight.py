"""Overnight runs (issue 11): re-run what failed, cancel what is not needed, the overnight retry policy and
moderation, on real Redis, S3 over HTTP and the sandbox over HTTP (one stack for the module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from editq.producer.api import status, submit_batch, wait
from editq.producer.batches import cancel_batch, list_jobs, rerun
from editq.producer.stack import LocalStack
from editq.worker.manifest import full_job
from editq.worker.state import JobStore
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, wait_for
from tests.e2e import configure_sandbox, sandbox_log, start, using

ENV = {"EDITQ_RETRY_BASE_S": "0.2", "EDITQ_RETRY_MAX_S": "1", "EDITQ_POLL_INTERVAL_S": "0.2",
       "EDITQ_POLL_MAX_S": "0.5", "EDITQ_MAX_ATTEMPTS": "3"}
CALM: dict[str, Any] = {"job_failure_rate": 0.0, "submit_5xx_rate": 0.0, "submit_429_rate": 0.0,
                        "provider_faults": {}, "latency_s": 0.1, "jitter_s": 0.0}


@pytest.fixture(scope="module")
def night() -> Iterator[LocalStack]:
    yield from start(True, ENV, keep_env=True,
                     sandbox_opts={"latency_s": 0.1, "jitter_s": 0.0, "concurrency": 16, "seed": 11})


@pytest.fixture
def stack(night: LocalStack) -> Iterator[LocalStack]:
    configure_sandbox(night, CALM)
    with using(night):
        yield night
    configure_sandbox(night, CALM)


def line(cid: str, provider: str = "fal", prompt: str = "Place it on an oak table", **kw: Any) -> dict[str, Any]:
    return {"custom_id": cid, "provider": provider, "prompt": prompt, "images": [str(EXAMPLES / "mug.png")],
            "quality": "low", **kw}


def finished(batch_id: str) -> dict[str, Any]:
    return wait(batch_id, timeout=90, interval=0.1)


def by_cid(batch_id: str) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r for r in list_jobs(batch_id)}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "editq", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_failed_lines_are_not_duplicates_when_submitted_again(stack: LocalStack, tmp_path: Path) -> None:
    configure_sandbox(stack, {"job_failure_rate": 1.0})
    rows = [line(f"again-{i}", prompt=f"Resubmitted edit {tmp_path.name} {i}") for i in range(2)]
    first = submit_batch(rows)
    assert finished(first.batch_id)["counts"] == {"failed": 2}
    configure_sandbox(stack, {"job_failure_rate": 0.0})
    second = submit_batch(rows)
    assert (second.enqueued, second.duplicates) == (2, [])  # failed jobs do not hold their key
    assert finished(second.batch_id)["counts"] == {"succeeded": 2}
    third = submit_batch(rows)  # a success does
    assert third.enqueued == 0 and sorted(j for _, j in third.duplicates) == sorted(second.job_ids)
    store = JobStore()
    assert [store.r.hget(store.k.job(j), "superseded_by") for j in first.job_ids] == second.job_ids


def test_rerun_holds_exactly_the_items_that_did_not_succeed_and_links_both_ways(stack: LocalStack) -> None:
    configure_sandbox(stack, {"provider_faults": {"fal": {"job_failure_rate": 1.0}}})
    rows = [line("bad-1", prompt="Rerun me one"), line("ok-1", "replicate", prompt="Keep me"),
            line("bad-2", prompt="Rerun me two"), line("ok-2", "replicate", prompt="Lose my output")]
    orig = submit_batch(rows)
    assert finished(orig.batch_id)["counts"] == {"failed": 2, "succeeded": 2}
    configure_sandbox(stack, {"provider_faults": {}})
    jobs = by_cid(orig.batch_id)
    assert {c: r["state"] for c, r in jobs.items()} == {"bad-1": "failed", "ok-1": "succeeded", "bad-2": "failed",
                                                        "ok-2": "succeeded"}
    assert "fal" in jobs["bad-1"]["error"] and jobs["bad-1"]["provider"] == "fal"
    # an output lost from S3 although the job says succeeded
    storage = get_storage()
    lost = status(jobs["ok-2"]["job_id"])["outputs"][0]["key"]
    storage.client.delete_object(Bucket=storage.bucket, Key=lost)
    assert [r["custom_id"] for r in list_jobs(orig.batch_id, ["missing"])] == ["ok-2"]
    fal_before, rep_before = len(sandbox_log(stack, "fal")), len(sandbox_log(stack, "replicate"))

    first = rerun(orig.batch_id, {"failed"})
    assert first.enqueued == 2 and first.by_outcome == {"failed": 2} and first.batch_id
    done = finished(first.batch_id)
    assert done["counts"] == {"succeeded": 2} and done["rerun_of"] == orig.batch_id
    assert len(sandbox_log(stack, "fal")) == fal_before + 2 and len(sandbox_log(stack, "replicate")) == rep_before

    second = rerun(orig.batch_id, {"missing"})
    assert second.enqueued == 1 and second.batch_id
    assert finished(second.batch_id)["counts"] == {"succeeded": 1}
    assert len(sandbox_log(stack, "replicate")) == rep_before + 1  # only the lost one; `ok-1` never again
    redo = next(iter(list_jobs(second.batch_id)))
    assert redo["custom_id"] == "ok-2" and redo["rerun_of"] == jobs["ok-2"]["job_id"]
    assert all(storage.exists(o["key"]) for o in status(redo["job_id"])["outputs"])

    # nothing left: no batch is made
    assert rerun(orig.batch_id).batch_id is None
    # both ways: the batches, the jobs, the manifests
    st = status(orig.batch_id)
    assert st["reruns"] == [first.batch_id, second.batch_id]
    assert st["latest"] == {"succeeded": 4} and st["counts"] == {"failed": 2, "succeeded": 2}
    reruns = json.loads(storage.get_bytes(f"outputs/{orig.batch_id}/reruns.json"))
    assert [r["batch_id"] for r in reruns["reruns"]] == [first.batch_id, second.batch_id]
    assert reruns["reruns"][0]["only"] == ["failed"] and reruns["reruns"][0]["jobs"] == 2
    manifest = [json.loads(x) for x in storage.get_bytes(f"outputs/{first.batch_id}/manifest.jsonl").splitlines()]
    assert {(m["custom_id"], m["rerun_of"], m["rerun_of_batch"]) for m in manifest} == {
        ("bad-1", jobs["bad-1"]["job_id"], orig.batch_id), ("bad-2", jobs["bad-2"]["job_id"], orig.batch_id)}
    latest = {r["custom_id"]: r for r in list_jobs(orig.batch_id, latest=True)}
    assert {c: r["state"] for c, r in latest.items()} == dict.fromkeys(("bad-1", "ok-1", "bad-2", "ok-2"), "succeeded")
    # the CLI says the same, and finds a job by its custom_id within a batch
    shown = cli("status", orig.batch_id)
    assert shown.returncode == 0, shown.stderr
    assert f"re-run by {first.batch_id}, {second.batch_id}; latest outcome per item: succeeded 4" in shown.stdout
    one = cli("status", "bad-1", "--batch", first.batch_id)
    assert one.returncode == 0 and json.loads(one.stdout)["rerun_of"] == jobs["bad-1"]["job_id"]


def test_rerun_with_a_changed_parameter_makes_a_new_job(stack: LocalStack) -> None:
    configure_sandbox(stack, {"job_failure_rate": 1.0})
    orig = submit_batch([line("param-1", prompt="Change my quality")], max_cost=5.0, on_budget="fail")
    assert finished(orig.batch_id)["counts"] == {"failed": 1}
    configure_sandbox(stack, {"job_failure_rate": 0.0})
    bad = rerun(orig.batch_id, overrides={"size": "13x13"})  # refused with the reason; nothing is made
    assert bad.batch_id is None and "size" in bad.skipped[0][2]
    rep = rerun(orig.batch_id, overrides={"quality": "medium", "provider": "replicate"})
    assert rep.enqueued == 1 and rep.batch_id
    done = finished(rep.batch_id)
    assert done["counts"] == {"succeeded": 1}
    # a re-run of a capped batch is capped at what is left of the original's budget, with its choice
    spent = status(orig.batch_id)["cost_usd"] or 0.0
    assert done["max_cost_usd"] == pytest.approx(5.0 - spent) and done["on_budget"] == "fail"
    store, storage = JobStore(), get_storage()
    old, new = store.get(orig.job_ids[0]), store.get(next(iter(list_jobs(rep.batch_id)))["job_id"])
    assert old and new and new.provider == "replicate"
    old_job, new_job = full_job(store, storage, old), full_job(store, storage, new)  # finished: from the manifests
    assert new_job.quality.value == "medium" and new_job.idempotency_key != old_job.idempotency_key


def test_moderation_is_terminal_recorded_with_its_stage_and_listed(stack: LocalStack) -> None:
    orig = submit_batch([line("[/i]blocked", "openai", prompt="A label sandbox:moderation please"),
                         line("fine", "openai", prompt="A plain label")])
    assert finished(orig.batch_id)["counts"] == {"failed": 1, "succeeded": 1}
    (row,) = list_jobs(orig.batch_id, ["moderated"])
    assert (row["custom_id"], row["state"], row["moderation_stage"], row["attempts"]) == ("[/i]blocked", "moderated",
                                                                                          "input", 1)
    assert list(list_jobs(orig.batch_id, ["failed"])) == []  # moderated is its own outcome
    manifest = json.loads(get_storage().get_bytes(f"outputs/{orig.batch_id}/{row['job_id']}/manifest.json"))
    assert manifest["error"]["moderation_stage"] == "input" and manifest["error"]["kind"] == "terminal"
    # never sent to the same provider again with the same prompt; elsewhere it may go
    same = rerun(orig.batch_id, {"moderated"})
    assert same.batch_id is None and "moderated by openai" in same.skipped[0][2]
    said = cli("rerun", orig.batch_id, "--only", "moderated")  # the custom_id is printed as written, not as markup
    assert said.returncode == 1 and "Traceback" not in said.stderr, said.stderr
    assert f"skipped {row['job_id']} ([/i]blocked): moderated by openai" in said.stderr, said.stderr
    listed = cli("jobs", orig.batch_id, "--state", "moderated")
    assert listed.returncode == 0 and "blocked" in listed.stdout and "moderated at input" in listed.stdout
    elsewhere = rerun(orig.batch_id, {"moderated"}, {"provider": "fal"})
    assert elsewhere.enqueued == 1 and elsewhere.batch_id
    assert finished(elsewhere.batch_id)["counts"] == {"succeeded": 1}


def test_cancel_batch_cancels_every_unfinished_job_at_the_provider_too(stack: LocalStack) -> None:
    configure_sandbox(stack, {"latency_s": 60.0})
    rows = [line(f"slow-{i}", prompt=f"Take your time {i}") for i in range(3)]
    orig = submit_batch(rows)
    store = JobStore()
    wait_for(lambda: all((v is not None and v.request_id) for v in store.get_many(orig.job_ids)), 30,
             "every job held by the provider")
    before = {r["request_id"] for r in sandbox_log(stack, "fal")}
    out = cli("cancel", orig.batch_id)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cancelled 3 job(s)") and "(3 at the provider)" in out.stdout
    st = finished(orig.batch_id)
    assert st["counts"] == {"cancelled": 3}
    ids = {v.request_id for v in store.get_many(orig.job_ids) if v}
    assert ids <= before
    wait_for(lambda: {r["request_id"] for r in sandbox_log(stack, "fal") if r["outcome"] == "cancelled"} >= ids, 30,
             "the provider to cancel every request")
    storage = get_storage()
    for jid in orig.job_ids:
        wait_for(lambda jid=jid: storage.exists(f"outputs/{orig.batch_id}/{jid}/manifest.json"), 30, "manifest")
        assert json.loads(storage.get_bytes(f"outputs/{orig.batch_id}/{jid}/manifest.json"))["state"] == "cancelled"
    assert cancel_batch(orig.batch_id).cancelled == 0  # twice: nothing more
    one = cli("cancel", "slow-0", "--batch", orig.batch_id)  # a job by its custom_id within the batch
    assert one.returncode == 1 and one.stdout.strip() == "not cancellable (it has finished)"
    # cancelled items are re-runnable and not duplicates
    configure_sandbox(stack, {"latency_s": 0.1})
    rep = rerun(orig.batch_id, {"cancelled"})
    assert rep.enqueued == 3 and rep.batch_id and finished(rep.batch_id)["counts"] == {"succeeded": 3}


def test_an_outage_with_no_fallback_ends_with_the_jobs_done(stack: LocalStack) -> None:
    configure_sandbox(stack, {"submit_5xx_rate": 1.0})
    orig = submit_batch([line(f"outage-{i}", prompt=f"Through the outage {i}") for i in range(2)])
    store = JobStore()
    # past the attempts that used to fail them, still waiting
    wait_for(lambda: all(v is not None and v.attempts >= 5 for v in store.get_many(orig.job_ids)), 60,
             "five failed attempts each")
    assert status(orig.batch_id)["counts"].get("failed", 0) == 0
    configure_sandbox(stack, {"submit_5xx_rate": 0.0})
    assert finished(orig.batch_id)["counts"] == {"succeeded": 2}


def test_rate_limit_waits_do_not_use_up_attempts(stack: LocalStack) -> None:
    """With no give-up horizon, only counted attempts can keep a job alive: four 429s (more than
    EDITQ_MAX_ATTEMPTS) and the job still succeeds."""
    stack.stop_proc("worker0")
    stack.start_worker("worker-429", {"EDITQ_RETRY_GIVE_UP_S": "0"})
    try:
        configure_sandbox(stack, {"submit_429_rate": 1.0, "retry_after_s": 0.2})
        job = submit_batch([line("limited", prompt="Wait your turn")]).job_ids[0]
        store = JobStore()
        wait_for(lambda: (v := store.get(job)) is not None and v.attempts >= 4, 60, "four rate-limited attempts")
        configure_sandbox(stack, {"submit_429_rate": 0.0})
        final = wait(job, timeout=60, interval=0.1)
        view = store.get(job)
        assert final["state"] == "succeeded" and view is not None
        assert view.attempts >= 5 and int(view.fields["free_attempts"]) >= 4
    finally:
        stack.stop_proc("worker-429")
        stack.start_worker("worker0")
