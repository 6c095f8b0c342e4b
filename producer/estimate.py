"""What a batch will cost before it runs: per provider and in total, jobs, images, expected and worst case.

`estimate_batch` validates every line through the same `Enqueuer.prepare` that `submit` uses, in its dry
mode: inputs are read (local files, URLs, s3://) and checked, nothing is written to S3 and Redis is never
touched. The figures come from each provider's price model (`providers/<name>/pricing.py`).

A job is counted under the first provider of its route (where it runs unless it falls back); its worst case
is the dearest provider of its route, since a fallback may run it there. A provider without a price model
counts its jobs and images with no cost (`priced: false`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from editq import providers as registry
from editq.producer.api import Line, LineError
from editq.providers.pricing import Estimate, to_micro
from editq.schemas.job import EditJob


def route_estimates(job: EditJob) -> dict[str, Estimate | None]:
    """The job's estimate on each provider of its route (None: that provider has no price model)."""
    out: dict[str, Estimate | None] = {}
    for name in job.route:
        model = registry.price_model_of(name)
        out[name] = model.estimate(job) if model is not None else None
    return out


def worst_case_micro(job: EditJob) -> dict[str, int]:
    """What a claim reserves for the job on each provider of its route (micro-USD, rounded up); a provider
    without a price model is left out (it reserves nothing)."""
    return {name: to_micro(e.worst) for name, e in route_estimates(job).items() if e is not None}


@dataclass
class ProviderTotal:
    jobs: int = 0
    images: int = 0
    expected_usd: float = 0.0
    worst_usd: float = 0.0
    priced: bool = True

    def add(self, job: EditJob, estimates: dict[str, Estimate | None]) -> None:
        first = estimates[job.route[0]]
        self.jobs += 1
        self.images += job.num_images
        if first is None:
            self.priced = False
            return
        self.expected_usd += first.expected
        self.worst_usd += max(e.worst for e in estimates.values() if e is not None)


@dataclass
class EstimateReport:
    providers: dict[str, ProviderTotal] = field(default_factory=dict)
    invalid: list[LineError] = field(default_factory=list)

    @property
    def total(self) -> ProviderTotal:
        t = ProviderTotal()
        for p in self.providers.values():
            t.jobs += p.jobs
            t.images += p.images
            t.expected_usd += p.expected_usd
            t.worst_usd += p.worst_usd
            t.priced = t.priced and p.priced
        return t

    def add(self, job: EditJob) -> None:
        self.providers.setdefault(job.route[0], ProviderTotal()).add(job, route_estimates(job))

    def as_json(self) -> dict[str, Any]:
        def money(t: ProviderTotal) -> dict[str, Any]:
            d = asdict(t)
            d["expected_usd"] = round(t.expected_usd, 4)
            d["worst_usd"] = round(t.worst_usd, 4)
            return d

        return {
            "providers": {name: money(t) for name, t in sorted(self.providers.items())},
            "total": money(self.total),
            "invalid": [asdict(e) for e in self.invalid],
        }


def estimate_batch(
    lines: Iterable[Line],
    *,
    base_dir: Path | str = ".",
    defaults: dict[str, Any] | None = None,
    seeds: int | None = None,
) -> EstimateReport:
    """Validate every line as `submit` does (variants expanded into their jobs, `seeds` as
    `submit --variants`) and add up what the valid ones will cost."""
    from editq.producer.api import Enqueuer, _custom_id, _numbered, check_defaults

    check_defaults(defaults)  # an unknown --provider is said once (UnknownProvider), as submit does
    enq = Enqueuer("estimate", Path(base_dir), dry=True)
    report = EstimateReport()
    for n, raw in _numbered(lines):
        try:
            jobs = enq.prepare_line(raw, defaults, seeds)
        except ValueError as exc:
            report.invalid.append(LineError(n, str(exc), _custom_id(raw)))
            continue
        for job in jobs:
            report.add(job)
    return report


def estimate_file(path: Path | str, *, defaults: dict[str, Any] | None = None,
                  seeds: int | None = None) -> EstimateReport:
    path = Path(path)

    def lines() -> Iterator[bytes]:
        with path.open("rb") as fh:  # as submit_file reads it: a line that is not UTF-8 is that line's error
            yield from fh

    return estimate_batch(lines(), base_dir=path.parent, defaults=defaults, seeds=seeds)


def render(report: EstimateReport, emit: Callable[[str], None]) -> None:
    """The human-readable table (one row per provider, then the total)."""
    emit(f"{'provider':<14} {'jobs':>9} {'images':>9} {'expected':>12} {'worst case':>12}")
    rows = [*sorted(report.providers.items()), ("total", report.total)]
    for name, t in rows:
        exp = f"${t.expected_usd:,.2f}" if t.priced else "unpriced"
        worst = f"${t.worst_usd:,.2f}" if t.priced else "unpriced"
        emit(f"{name:<14} {t.jobs:>9,} {t.images:>9,} {exp:>12} {worst:>12}")


def dumps(report: EstimateReport) -> str:
    return json.dumps(report.as_json())
