"""A/B variants, pure parts: line expansion, review decisions, the report's grid, follow-up lines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from editq.producer.follow import follow_up_lines, parse_sets
from editq.producer.groups import count_groups, format_groups
from editq.producer.report_model import build, latency
from editq.producer.review_state import Decision, parse_log, replay
from editq.schemas.job import JobRequest, content_key
from editq.schemas.variants import MAX_JOBS_PER_LINE, expand, parse_line

BASE = {"custom_id": "mug", "prompt": "On oak", "images": ["mug.png"], "quality": "low", "metadata": {"sku": "M1"}}


def test_list_of_overrides_expands_into_one_group_with_labels() -> None:
    jobs = expand({**BASE, "variants": [{"prompt": "On marble"}, {"label": "hq", "quality": "high",
                                                                   "metadata": {"v": 2}}, {}]})
    assert [(j["group"], j["variant"], j["custom_id"]) for j in jobs] == [
        ("mug", "A", "mug-A"), ("mug", "hq", "mug-hq"), ("mug", "C", "mug-C")]
    assert [j["prompt"] for j in jobs] == ["On marble", "On oak", "On oak"]
    assert [j["quality"] for j in jobs] == ["low", "high", "low"]
    assert jobs[1]["metadata"] == {"sku": "M1", "v": 2} and jobs[0]["metadata"] == {"sku": "M1"}
    assert all("variants" not in j and "compare" not in j for j in jobs)


def test_compare_runs_each_variant_on_each_provider() -> None:
    jobs = expand({**BASE, "variants": [{"prompt": "x"}, {"prompt": "y"}], "compare": ["fal", "replicate", "openai"]})
    assert [(j["variant"], j["provider"], j["custom_id"]) for j in jobs] == [
        ("A", "fal", "mug-A-fal"), ("A", "replicate", "mug-A-replicate"), ("A", "openai", "mug-A-openai"),
        ("B", "fal", "mug-B-fal"), ("B", "replicate", "mug-B-replicate"), ("B", "openai", "mug-B-openai")]
    only = expand({**BASE, "compare": "fal,openai"})
    assert [(j["variant"], j["provider"]) for j in only] == [("A", "fal"), ("A", "openai")]


def test_seeds_from_the_line_or_the_command_line() -> None:
    assert [j["variant"] for j in expand({**BASE, "variants": 3})] == ["s1", "s2", "s3"]
    assert [j["variant"] for j in parse_line(json.dumps(BASE), seeds=2)] == ["s1", "s2"]
    # a line with its own variants keeps them; seeds of 1 change nothing; a plain line stays one plain job
    assert [j["variant"] for j in parse_line({**BASE, "variants": [{}, {}]}, seeds=5)] == ["A", "B"]
    assert parse_line(BASE, seeds=1) == [BASE]
    assert parse_line(BASE) == [BASE]


def test_group_without_custom_id_is_a_hash_of_the_base_request() -> None:
    line = {k: v for k, v in BASE.items() if k != "custom_id"}
    a = expand({**line, "variants": 2})
    b = expand({**line, "variants": 2})
    other = expand({**line, "prompt": "else", "variants": 2})
    assert a[0]["group"] == a[1]["group"] == b[0]["group"] != other[0]["group"]
    assert a[0]["group"].startswith("g-") and "custom_id" not in a[0]
    assert expand({**BASE, "group": "hero-shots", "variants": 2})[0]["group"] == "hero-shots"


def test_variants_have_distinct_idempotency_keys_and_plain_keys_do_not_change() -> None:
    jobs = [JobRequest.model_validate(j) for j in expand({**BASE, "variants": 2})]
    keys = {content_key(j, ["0" * 64], None) for j in jobs}
    assert len(keys) == 2
    # a line without variants hashes as before the variant fields existed (no re-run of old batches)
    plain = JobRequest.model_validate(BASE)
    params = plain.model_dump(mode="json", exclude={"custom_id", "images", "mask", "metadata", "idempotency_key",
                                                     "priority", "group", "variant", "parent_job_id", "tenant"})
    import hashlib
    blob = json.dumps({"params": params, "inputs": ["0" * 64], "mask": None, "custom_id": "mug"}, sort_keys=True,
                      separators=(",", ":"))
    assert content_key(plain, ["0" * 64], None) == hashlib.sha256(blob.encode()).hexdigest()
    with_key = expand({**BASE, "idempotency_key": "K", "variants": 2, "compare": ["fal", "openai"]})
    assert [j["idempotency_key"] for j in with_key] == ["K:s1:fal", "K:s1:openai", "K:s2:fal", "K:s2:openai"]


@pytest.mark.parametrize(("line", "message"), [
    ({"variants": "two"}, "variants: must be a list of overrides or a number of samples"),
    ({"variants": []}, "variants: must not be empty"),
    ({"variants": 0}, f"variants: a number of samples must be 1-{MAX_JOBS_PER_LINE}"),
    ({"variants": [1]}, "variants[0]: must be an object of field overrides"),
    ({"variants": [{"images": ["x.png"]}]}, "variants[0]: images cannot vary within a group"),
    ({"variants": [{"label": "a b"}]}, "variants[0].label: 'a b' must be 1-40 letters"),
    ({"variants": [{"label": "x"}, {"label": "x"}]}, "variants: label 'x' is used twice"),
    ({"compare": []}, "compare: must be a non-empty list of provider names"),
    ({"compare": ["fal", "fal"]}, "compare: a provider appears twice"),
    ({"compare": ["fal"], "variants": [{"provider": "openai"}]}, "may not set provider when the line has compare"),
    ({"variants": 40, "compare": ["fal", "openai"]}, "expands to 80 jobs; at most 64 per line"),
])
def test_bad_variants_are_refused_with_the_field(line: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        expand({**BASE, **line})
    assert message in str(info.value)


def _decision(action: str, job: str, group: str = "g", at: float = 1.0) -> Decision:
    return Decision(action=action, job_id=job, group=group, at=at, by="ann@host")


def test_review_state_replays_decisions_in_order() -> None:
    state = replay([_decision("approve", "j1"), _decision("reject", "j2"), _decision("pick", "j3"),
                    _decision("pick", "j1"), _decision("clear", "j2"), _decision("pick", "k1", "h"),
                    _decision("reject", "k1", "h")])
    assert state.status == {"j1": "approved", "j3": "approved", "k1": "rejected"}
    assert state.picked == {"g": "j1"}  # the later pick replaced j3; rejecting k1 removed its pick
    assert state.summary() == {"approved": 2, "rejected": 1, "picked": 1, "decisions": 7}
    text = "".join(d.to_json() + "\n" for d in [_decision("pick", "j9")]) + "not json\n{\"action\": \"eat\"}\n"
    assert [d.job_id for d in parse_log(text)] == ["j9"]


def entry(job_id: str, group: str, label: str, provider: str = "fal", state: str = "succeeded",
          cost: float | None = 0.01, **job: Any) -> dict[str, Any]:
    t0 = 1000.0
    return {
        "job_id": job_id, "batch_id": "b1", "custom_id": f"{group}-{label}", "group": group, "variant": label,
        "state": state, "provider": provider,
        "job": {"prompt": f"prompt {label}", "size": "auto", "quality": "low", "provider": provider,
                "images": ["mug.png"], "group": group, "variant": label, "metadata": {"sku": "M"}, **job},
        "inputs": [{"ref": "mug.png", "sha256": "a" * 64, "bytes": 1, "format": "png", "width": 512, "height": 512,
                    "s3_key": "inputs/aaa.png"}],
        "mask": None,
        "history": [{"state": "queued", "at": t0}, {"state": "submitting", "at": t0 + 1},
                    {"state": "submitted", "at": t0 + 1.5}, {"state": "ready", "at": t0 + 4},
                    {"state": state, "at": t0 + 5}],
        "outputs": [] if state != "succeeded" else [
            {"index": 0, "key": f"outputs/b1/{job_id}/0.png", "sha256": job_id.ljust(64, "0"), "bytes": 1,
             "content_type": "image/png", "width": 512, "height": 512}],
        "usage": {"cost_usd": cost} if cost is not None else None,
        "error": None if state == "succeeded" else {"kind": "terminal", "reason": "moderation_blocked"},
    }


def test_report_grid_rows_summary_and_decisions() -> None:
    entries = [entry("j1", "mug", "A"), {**entry("j2", "mug", "B", provider="openai", cost=None), "cost_usd": 0.02},
               entry("j3", "mug", "C", state="failed", cost=None), entry("j4", "bottle", "A"),
               {"job_id": "j5", "batch_id": "b1", "custom_id": "plain", "state": "succeeded", "job": {}, "outputs": []}]
    state = replay([_decision("pick", "j2", "mug"), _decision("reject", "j3", "mug")])
    report = build("b1", entries, state)
    assert [(r.group, r.labels) for r in report.rows] == [("mug", ["A", "B", "C"]), ("bottle", ["A"]),
                                                          ("plain", ["plain"])]
    mug = report.rows[0]
    assert mug.picked == "j2" and [c.picked for c in mug.cells] == [False, True, False]
    assert [c.decision for c in mug.cells] == [None, "approved", "rejected"]
    assert mug.cells[1].decided_by == "ann@host at 1970-01-01 00:00:01 UTC" and mug.cells[0].decided_by is None
    assert mug.cells[2].failed and mug.cells[2].error == "moderation_blocked" and not mug.cells[2].outputs
    assert mug.cells[0].latency_s == 3.0 and latency(entries[0]) == 3.0
    s = report.summary
    assert (s.jobs, s.groups, s.counts) == (5, 3, {"succeeded": 4, "failed": 1})
    assert (round(s.cost_usd, 4), s.cost_known, s.wall_s) == (0.04, 3, 5.0)
    assert {p.provider: (p.jobs, p.succeeded, p.failed) for p in s.providers} == {
        "fal": (3, 2, 1), "openai": (1, 1, 0), "-": (1, 1, 0)}
    assert s.review == {"approved": 1, "rejected": 1, "picked": 1, "decisions": 2}
    # each thumbnail once: the shared input, then each output
    assert len(report.thumbs()) == 1 + 3


def test_follow_up_lines_for_picked_variants() -> None:
    entries = [entry("j1", "mug", "A"), entry("j2", "mug", "B", provider="openai"),
               entry("j3", "bottle", "A", state="failed")]
    state = replay([_decision("pick", "j2", "mug"), _decision("pick", "j3", "bottle")])
    lines, skipped = follow_up_lines(entries, state, "bkt", overrides=parse_sets(["quality=high size=3840x2160"]))
    assert skipped == ["j3"]
    (line,) = lines
    assert line["images"] == ["s3://bkt/inputs/aaa.png"] and "mask" not in line
    assert (line["provider"], line["parent_job_id"], line["group"], line["variant"]) == ("openai", "j2", "mug", "B")
    assert (line["quality"], line["size"], line["prompt"]) == ("high", "3840x2160", "prompt B")
    assert line["metadata"] == {"sku": "M", "parent_batch_id": "b1"}
    JobRequest.model_validate(line)  # a valid request as it stands
    approved, _ = follow_up_lines(entries, replay([_decision("approve", "j1", "mug")]), "bkt", which="approved")
    assert [x["parent_job_id"] for x in approved] == ["j1"]
    assert parse_sets(["num_images=2", "metadata={\"a\":1}"]) == {"num_images": 2, "metadata": {"a": 1}}
    for bad in (["images=x"], ["quality"], ["parent_job_id=j"]):
        with pytest.raises(ValueError):
            parse_sets(bad)


def test_group_counts_and_their_lines() -> None:
    counts = count_groups([("mug", "succeeded"), ("mug", "failed"), ("mug", "succeeded"), (None, "queued")])
    assert counts == {"mug": {"succeeded": 2, "failed": 1}, "": {"queued": 1}}
    assert format_groups({"mug": counts["mug"]}) == ["  mug: 3 variants (failed 1, succeeded 2)"]
    many = format_groups({f"g{i:02d}": {"queued": 1} for i in range(35)}, limit=30)
    assert len(many) == 31 and many[-1] == "  … and 5 more groups (--json shows all)"
