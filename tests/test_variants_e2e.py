"""A/B variants end to end on real Redis, S3 and the sandbox: expansion, manifests, group counts, continue."""

from __future__ import annotations

import json

from editq.producer.api import status, submit_batch, wait
from editq.producer.follow_submit import continue_batch
from editq.producer.review_log import ReviewLog
from editq.producer.review_state import Decision
from editq.producer.stack import LocalStack
from tests.conftest import EXAMPLES
from tests.e2e import read_manifests


def test_variants_expand_into_grouped_jobs_with_labels_in_the_manifest(live: LocalStack, variant_batch: str) -> None:
    entries = read_manifests(variant_batch)
    got = [(m["group"], m["variant"], m["provider"], m["custom_id"], m["state"]) for m in entries]
    assert got == [
        ("mug", "lemon", "fal", "mug-lemon", "succeeded"), ("mug", "berry", "fal", "mug-berry", "succeeded"),
        ("bottle", "A", "fal", "bottle-A-fal", "succeeded"),
        ("bottle", "A", "replicate", "bottle-A-replicate", "succeeded"),
        ("bottle", "A", "openai", "bottle-A-openai", "succeeded"),
        ("sneaker", "s1", "fal", "sneaker-s1", "succeeded"), ("sneaker", "s2", "fal", "sneaker-s2", "succeeded"),
        ("watch", "ok", "fal", "watch-ok", "succeeded"), ("watch", "blocked", "openai", "watch-blocked", "failed"),
    ]
    by_cid = {m["custom_id"]: m for m in entries}
    assert by_cid["mug-berry"]["job"]["quality"] == "medium" and by_cid["mug-lemon"]["job"]["quality"] == "low"
    assert by_cid["mug-berry"]["job"]["prompt"] == "A berry on the label." and by_cid["mug-lemon"]["mask"]
    assert by_cid["watch-blocked"]["error"]["provider_code"] == "moderation_blocked"
    # two samples of one request are two jobs (two provider requests), not one job deduplicated
    assert by_cid["sneaker-s1"]["provider_request_id"] != by_cid["sneaker-s2"]["provider_request_id"]
    assert all(len(m["outputs"]) == 1 for m in entries if m["state"] == "succeeded")


def test_status_counts_per_group(live: LocalStack, variant_batch: str) -> None:
    st = status(variant_batch, groups=True)
    assert st["counts"] == {"succeeded": 8, "failed": 1}
    assert st["groups"] == {"mug": {"succeeded": 2}, "bottle": {"succeeded": 3}, "sneaker": {"succeeded": 2},
                            "watch": {"succeeded": 1, "failed": 1}}


def test_a_bad_variant_refuses_its_whole_line_and_names_the_variant(live: LocalStack) -> None:
    lines = [{"custom_id": "bag", "prompt": "On a hook.", "images": ["backpack.png"], "quality": "low",
              "variants": [{"label": "ok"}, {"label": "masked", "provider": "replicate", "quality": "low"}],
              "mask": "mask_mug.png"},
             {"prompt": "Fine.", "images": ["mug.png"], "quality": "low", "variants": [{}, {"size": "1000x1000"}]}]
    report = submit_batch(lines, base_dir=EXAMPLES)
    assert report.enqueued == 0 and [e.line for e in report.invalid] == [1, 2]
    assert report.invalid[0].error.startswith("variant masked: ") and "replicate" in report.invalid[0].error
    assert report.invalid[1].error.startswith("variant B: size")


def test_continue_submits_follow_ups_for_picked_variants(live: LocalStack, variant_batch: str) -> None:
    from editq.worker.storage import get_storage

    storage = get_storage()
    entries = {m["custom_id"]: m for m in read_manifests(variant_batch)}
    log = ReviewLog(storage, variant_batch)
    log.load()
    # the session's batch may carry picks of other tests (the review app's): clear them, then pick three
    clears = [Decision(action="clear", job_id=jid, group=group, at=1.0, by="test@ci")
              for group, jid in log.state().picked.items()]
    picks = [entries["mug-berry"], entries["bottle-A-openai"], entries["watch-blocked"]]
    log.append(clears + [Decision(action="pick", job_id=m["job_id"], group=m["group"], at=1.0, by="test@ci",
                                  label=m["variant"], provider=m["provider"]) for m in picks])
    assert sorted(log.state().picked) == ["bottle", "mug", "watch"]
    result = continue_batch(variant_batch, sets=["quality=high", "size=1536x1024"])
    assert result.skipped == [entries["watch-blocked"]["job_id"]]  # a failed pick has nothing to follow up
    report = result.report
    assert report is not None and (report.enqueued, report.invalid) == (2, [])
    wait(report.batch_id, timeout=120, interval=0.2)
    follow = {m["parent_job_id"]: m for m in read_manifests(report.batch_id)}
    assert set(follow) == {entries["mug-berry"]["job_id"], entries["bottle-A-openai"]["job_id"]}
    mug = follow[entries["mug-berry"]["job_id"]]
    assert (mug["state"], mug["group"], mug["variant"], mug["provider"]) == ("succeeded", "mug", "berry", "fal")
    assert (mug["job"]["quality"], mug["job"]["size"], mug["job"]["prompt"]) == ("high", "1536x1024",
                                                                                   "A berry on the label.")
    assert mug["mask"]["sha256"] == entries["mug-berry"]["mask"]["sha256"]  # same input and mask, by content
    assert mug["inputs"][0]["sha256"] == entries["mug-berry"]["inputs"][0]["sha256"]
    assert (mug["outputs"][0]["width"], mug["outputs"][0]["height"]) == (1536, 1024)
    bottle = follow[entries["bottle-A-openai"]["job_id"]]
    assert (bottle["provider"], bottle["job"]["metadata"]["parent_batch_id"]) == ("openai", variant_batch)
    # the follow-ups were estimated as `editq estimate` would: the high-quality renders, on their providers
    est = result.estimate
    assert est is not None and est.invalid == [] and sorted(est.providers) == ["fal", "openai"]
    assert est.total.jobs == 2 and est.total.priced and 0 < est.total.expected_usd <= est.total.worst_usd
    # continuing twice runs nothing twice (same requests, same idempotency keys)
    again = continue_batch(variant_batch, sets=["quality=high", "size=1536x1024"]).report
    assert again is not None and again.enqueued == 0 and len(again.duplicates) == 2
    assert json.loads(storage.get_bytes(log.key).decode().splitlines()[-1])["by"] == "test@ci"


def test_continue_runs_under_the_budget_rules_of_any_batch(live: LocalStack, variant_batch: str) -> None:
    from editq.worker.storage import get_storage

    entries = {m["custom_id"]: m for m in read_manifests(variant_batch)}
    mug = entries["mug-lemon"]
    ReviewLog(get_storage(), variant_batch).append([Decision(action="pick", job_id=mug["job_id"], group="mug", at=2.0,
                                                             by="test@ci", label="lemon")])
    # a budget of nothing, and jobs that do not fit fail: the follow-ups are refused before any provider is paid
    result = continue_batch(variant_batch, sets=["quality=medium", "size=1024x1024"], max_cost=0.0, on_budget="fail")
    assert result.report is not None and result.report.enqueued >= 1
    wait(result.report.batch_id, timeout=120, interval=0.2)
    follow = read_manifests(result.report.batch_id)
    assert follow and all(m["state"] == "failed" and m["error"]["provider_code"] == "budget_exceeded"
                          and m["provider_request_id"] is None for m in follow)
    assert mug["job_id"] in {m["parent_job_id"] for m in follow}
