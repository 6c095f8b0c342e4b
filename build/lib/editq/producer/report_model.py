"""The report's grid (pure): batch manifest entries + review decisions -> rows of variants and a summary.

One row per A/B group (a job outside any group is a row of its own), in enqueue order; one cell per
job. Thumbnails are named here from content hashes (the I/O that makes them is producer/report.py), so
the static report, the review app and the contact sheet show the same files.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from editq.producer.review_state import ReviewState

THUMB_EXT = "jpg"


def output_thumb(sha256: str) -> str:
    return f"thumbs/o-{sha256[:32]}.{THUMB_EXT}"


def input_thumb(image_sha: str, mask_sha: str | None) -> str:
    return f"thumbs/i-{image_sha[:24]}" + (f"-m{mask_sha[:12]}" if mask_sha else "") + f".{THUMB_EXT}"


@dataclass
class Thumb:
    path: str  # relative to the report folder
    key: str  # the S3 key it is made from
    width: int
    height: int
    mask_key: str | None = None  # for an input: its mask, drawn over it


@dataclass
class Cell:
    job_id: str
    group: str
    label: str
    provider: str
    prompt: str
    size: str
    quality: str
    state: str
    custom_id: str | None
    cost_usd: float | None
    latency_s: float | None
    error: str | None
    outputs: list[Thumb]
    decision: str | None = None
    decided_by: str | None = None
    picked: bool = False
    parent_job_id: str | None = None

    @property
    def failed(self) -> bool:
        return self.state != "succeeded"


@dataclass
class Row:
    group: str
    input: Thumb | None
    input_ref: str
    cells: list[Cell] = field(default_factory=list)
    picked: str | None = None

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.cells]


@dataclass
class ProviderSummary:
    provider: str
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    cost_usd: float = 0.0
    cost_known: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def p50_latency_s(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None


@dataclass
class Summary:
    jobs: int
    groups: int
    counts: dict[str, int]
    cost_usd: float
    cost_known: int
    wall_s: float | None
    providers: list[ProviderSummary]
    review: dict[str, int]
    labels: list[str]


@dataclass
class Report:
    batch_id: str
    rows: list[Row]
    summary: Summary

    def thumbs(self) -> list[Thumb]:
        """Every thumbnail the grid shows, each once."""
        seen: dict[str, Thumb] = {}
        for row in self.rows:
            if row.input is not None:
                seen.setdefault(row.input.path, row.input)
            for cell in row.cells:
                for t in cell.outputs:
                    seen.setdefault(t.path, t)
        return list(seen.values())


def _times(entry: dict[str, Any]) -> dict[str, float]:
    """The first time each state was entered, and the last time for the terminal and ready states."""
    out: dict[str, float] = {}
    for h in entry.get("history") or []:
        state, at = h.get("state"), h.get("at")
        if state is None or at is None:
            continue
        if state in ("ready", "succeeded", "failed", "cancelled") or state not in out:
            out[state] = float(at)
    return out


def latency(entry: dict[str, Any]) -> float | None:
    """Provider latency: first submit to the last `ready` (else to the end state)."""
    t = _times(entry)
    start = t.get("submitting", t.get("submitted"))
    end = t.get("ready", t.get(entry.get("state", ""), None))
    if start is None or end is None or end < start:
        return None
    return round(end - start, 3)


def _error(entry: dict[str, Any]) -> str | None:
    err = entry.get("error")
    if isinstance(err, dict):
        return str(err.get("reason") or err.get("kind") or "failed")
    if entry.get("state") not in (None, "succeeded"):
        return str(entry.get("state"))
    return None


def cell_of(entry: dict[str, Any]) -> Cell:
    job = entry.get("job") or {}
    outputs = [
        Thumb(output_thumb(o["sha256"]), o["key"], int(o.get("width", 0)), int(o.get("height", 0)))
        for o in entry.get("outputs") or [] if o.get("sha256") and o.get("key")
    ]
    usage = entry.get("usage") or {}
    provider = entry.get("provider") or str(job.get("provider", "")).split(",")[0]
    return Cell(
        job_id=entry["job_id"],
        group=group_of(entry),
        label=entry.get("variant") or job.get("variant") or entry.get("custom_id") or entry["job_id"][-6:],
        provider=provider,
        prompt=str(job.get("prompt", "")),
        size=str(job.get("size", "auto")),
        quality=str(job.get("quality", "")),
        state=str(entry.get("state", "unknown")),
        custom_id=entry.get("custom_id"),
        cost_usd=entry["cost_usd"] if entry.get("cost_usd") is not None else usage.get("cost_usd"),
        latency_s=latency(entry),
        error=_error(entry),
        outputs=outputs,
        parent_job_id=entry.get("parent_job_id") or job.get("parent_job_id"),
    )


def group_of(entry: dict[str, Any]) -> str:
    job = entry.get("job") or {}
    return str(entry.get("group") or job.get("group") or entry.get("custom_id") or entry["job_id"])


def _input_thumb(entry: dict[str, Any]) -> tuple[Thumb | None, str]:
    inputs = entry.get("inputs") or []
    if not inputs:
        return None, ""
    first, mask = inputs[0], entry.get("mask")
    thumb = Thumb(input_thumb(first["sha256"], mask["sha256"] if mask else None), first["s3_key"],
                  int(first.get("width", 0)), int(first.get("height", 0)), mask["s3_key"] if mask else None)
    extra = f" (+{len(inputs) - 1} references)" if len(inputs) > 1 else ""
    return thumb, str(first.get("ref", "")) + extra


def build(batch_id: str, entries: list[dict[str, Any]], review: ReviewState | None = None) -> Report:
    review = review or ReviewState()
    rows: dict[str, Row] = {}
    counts: dict[str, int] = {}
    providers: dict[str, ProviderSummary] = {}
    cost, cost_known = 0.0, 0
    starts: list[float] = []
    ends: list[float] = []
    labels: list[str] = []
    for entry in entries:
        if "job_id" not in entry:
            continue
        cell = cell_of(entry)
        cell.decision = review.of(cell.job_id)
        last = review.last.get(cell.job_id)
        if last is not None:
            cell.decided_by = f"{last.by} at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(last.at))} UTC"
        row = rows.get(cell.group)
        if row is None:
            thumb, ref = _input_thumb(entry)
            row = rows[cell.group] = Row(group=cell.group, input=thumb, input_ref=ref)
        row.cells.append(cell)
        if cell.label not in labels:
            labels.append(cell.label)
        counts[cell.state] = counts.get(cell.state, 0) + 1
        ps = providers.setdefault(cell.provider or "-", ProviderSummary(cell.provider or "-"))
        ps.jobs += 1
        ps.succeeded += cell.state == "succeeded"
        ps.failed += cell.state != "succeeded"
        if cell.cost_usd is not None:
            cost += cell.cost_usd
            cost_known += 1
            ps.cost_usd += cell.cost_usd
            ps.cost_known += 1
        if cell.latency_s is not None:
            ps.latencies.append(cell.latency_s)
        t = _times(entry)
        if t:
            starts.append(min(t.values()))
            ends.append(max(t.values()))
    for group, job_id in review.picked.items():
        row = rows.get(group)
        if row is None:
            continue
        for cell in row.cells:
            cell.picked = cell.job_id == job_id
        row.picked = job_id
    summary = Summary(
        jobs=sum(counts.values()), groups=len(rows), counts=counts, cost_usd=round(cost, 6), cost_known=cost_known,
        wall_s=round(max(ends) - min(starts), 3) if starts else None,
        providers=sorted(providers.values(), key=lambda p: p.provider), review=review.summary(), labels=labels,
    )
    return Report(batch_id=batch_id, rows=list(rows.values()), summary=summary)
