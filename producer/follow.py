"""`editq continue BATCH --picked`: follow-up jobs for the picked (or approved) variants of a review.

Pure part: from the batch's manifests and its review state, the request lines of the follow-up batch.
Each line is the picked job's own request, on the provider that ran it, with its inputs referenced by
their content-addressed S3 keys (the original files need not be at hand), its group and label kept,
`parent_job_id` set to the original, and the `--set` overrides applied. The lines then go through the
ordinary submit (validation, idempotency, cost estimate and budget), as any batch does.
"""

from __future__ import annotations

import json
from typing import Any

from editq.producer.review_state import ReviewState

FIXED = frozenset({"images", "mask", "group", "variant", "parent_job_id", "custom_id", "idempotency_key"})


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`quality=high size=3840x2160` (one or several per item) -> {"quality": "high", "size": "3840x2160"}.
    A value that reads as JSON is taken as such (`num_images=2`, `metadata={"x":1}`), else as a string."""
    out: dict[str, Any] = {}
    for item in items:
        for part in item.split():
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError(f"--set {part!r}: expected field=value")
            if name in FIXED:
                raise ValueError(f"--set {name}: cannot change it in a follow-up (it links the job to its original)")
            try:
                out[name] = json.loads(value)
            except ValueError:
                out[name] = value
    return out


def selected(state: ReviewState, which: str) -> set[str]:
    if which == "picked":
        return set(state.picked.values())
    if which == "approved":
        return {jid for jid, status in state.status.items() if status == "approved"}
    raise ValueError(f"unknown selection {which!r}")


def follow_up_lines(entries: list[dict[str, Any]], state: ReviewState, bucket: str, *, which: str = "picked",
                    overrides: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """(request lines, skipped job ids): one line per selected job that succeeded, in the batch's order."""
    chosen = selected(state, which)
    lines: list[dict[str, Any]] = []
    skipped: list[str] = []
    for entry in entries:
        jid = entry.get("job_id")
        if jid not in chosen:
            continue
        if entry.get("state") != "succeeded" or not entry.get("inputs"):
            skipped.append(str(jid))
            continue
        job = {k: v for k, v in (entry.get("job") or {}).items() if k not in ("idempotency_key",)}
        job["images"] = [f"s3://{bucket}/{i['s3_key']}" for i in entry["inputs"]]
        if entry.get("mask"):
            job["mask"] = f"s3://{bucket}/{entry['mask']['s3_key']}"
        else:
            job.pop("mask", None)
        if entry.get("provider"):
            job["provider"] = entry["provider"]
        job["group"] = entry.get("group") or job.get("group") or entry.get("custom_id") or jid
        if entry.get("variant") or job.get("variant"):
            job["variant"] = entry.get("variant") or job.get("variant")
        job["parent_job_id"] = jid
        job["metadata"] = {**(job.get("metadata") or {}), "parent_batch_id": entry.get("batch_id")}
        job.update(overrides or {})
        lines.append(job)
    return lines, skipped
