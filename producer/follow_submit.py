"""`editq continue`: read a batch's manifests and review, submit the follow-up batch (I/O around producer/follow.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from editq.producer.api import BatchReport, submit_batch
from editq.producer.estimate import EstimateReport, estimate_batch
from editq.producer.follow import follow_up_lines, parse_sets
from editq.producer.report import load_entries
from editq.producer.review_log import ReviewLog
from editq.worker.storage import get_storage


@dataclass(frozen=True)
class Continued:
    lines: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    report: BatchReport | None = None
    estimate: EstimateReport | None = None


def continue_batch(batch_id: str, *, which: str = "picked", sets: list[str] | None = None,
                   batch_id_out: str | None = None, dry_run: bool = False, **submit_opts: Any) -> Continued:
    """The follow-up batch of `batch_id`'s picked (or approved) variants, estimated (`result.estimate`) and
    submitted like any batch (`submit_opts` go to submit_batch: `max_cost`, `on_budget`...). Raises ValueError
    when nothing is selected."""
    storage = get_storage()
    overrides = parse_sets(sets or [])
    log = ReviewLog(storage, batch_id)
    log.load()
    lines, skipped = follow_up_lines(load_entries(batch_id, storage), log.state(), storage.bucket, which=which,
                                     overrides=overrides)
    if not lines:
        raise ValueError(f"no {which} variant that succeeded in batch {batch_id} (review it first: editq review)")
    estimate = estimate_batch(lines)  # what `editq estimate` would say of these lines
    report = None if dry_run else submit_batch(lines, batch_id=batch_id_out, source=f"continue:{batch_id}:{which}",
                                               **submit_opts)
    return Continued(lines=lines, skipped=skipped, report=report, estimate=estimate)
