"""The Python API behind `import editq`: the functions a user calls, with typed results (producer/results.py).

Each function is the CLI command of the same name without the printing: it calls the one function that
holds the rule (producer/api.py, producer/batches.py, producer/estimate.py, producer/download.py, ...) and
gives its result a type. Configuration comes from the environment (`EDITQ_*`, AWS_*), as for the CLI and
the workers: one process talks to one editq deployment. The async variant is `editq.aio`.

Errors: `editq.UnknownId` (a KeyError) for an id that names no batch or job, `ValueError` for a bad argument
or (in `submit`) a refused request, `TimeoutError` from `wait`; Redis and S3 failures as redis / botocore raise
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from editq.producer import api, batches
from editq.producer.api import BatchReport, Line
from editq.producer.batches import CancelReport, RerunReport, UnknownId
from editq.producer.download import DownloadReport
from editq.producer.follow_submit import Continued
from editq.producer.report import ReportFiles
from editq.producer.results import (
    BatchBudget,
    BatchStatus,
    Estimate,
    JobRow,
    JobStatus,
    Status,
    TenantBudget,
    status_result,
)
from editq.schemas.job import JobRequest
from editq.worker.outcomes import RERUNNABLE

OnBudget = Literal["wait", "fail"]


# ------------------------------------------------------------------------------------------------ submit
def submit(job: JobRequest | dict[str, Any], *, base_dir: Path | str = ".", batch_id: str | None = None) -> str:
    """Enqueue one job (a batch of one); its job id (the existing one if the same job was enqueued before).
    Raises ValueError with the reason when the request is refused."""
    return api.submit(job, base_dir=base_dir, batch_id=batch_id)


def submit_batch(
    lines: Iterable[Line] | Callable[[], Iterable[Line]],
    *,
    batch_id: str | None = None,
    base_dir: Path | str = ".",
    strict: bool = False,
    defaults: dict[str, Any] | None = None,
    keep_ids: bool = True,
    seeds: int | None = None,
    max_cost: float | None = None,
    on_budget: OnBudget = "wait",
    on_progress: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Enqueue request lines (dicts, JSON text or bytes), as `editq submit` does a file: a bad line is reported
    in `report.invalid` with its number, the rest enqueued (`strict`: nothing is, if any line is bad).
    `max_cost`: the batch's budget in USD; `on_budget`: a job that does not fit waits, or fails."""
    return api.submit_batch(lines, batch_id=batch_id, base_dir=base_dir, strict=strict, defaults=defaults,
                            keep_ids=keep_ids, seeds=seeds, max_cost=max_cost, on_budget=on_budget,
                            on_progress=on_progress)


def submit_file(
    path: Path | str,
    *,
    batch_id: str | None = None,
    strict: bool = False,
    defaults: dict[str, Any] | None = None,
    keep_ids: bool = True,
    seeds: int | None = None,
    max_cost: float | None = None,
    on_budget: OnBudget = "wait",
    procs: int = 1,
) -> BatchReport:
    """Enqueue a JSONL file, streamed (never the whole file in memory); relative image paths are read from
    the file's folder. `procs`: producer processes, each on a byte range of the file (0: one per CPU for a
    large file; `editq submit` uses `EDITQ_SUBMIT_PROCS`). They are started with multiprocessing's spawn, so a
    script asking for more than one must call this under `if __name__ == "__main__":`."""
    return api.submit_file(path, batch_id=batch_id, strict=strict, defaults=defaults, keep_ids=keep_ids,
                           seeds=seeds, max_cost=max_cost, on_budget=on_budget, procs=procs)


def estimate_file(path: Path | str, *, defaults: dict[str, Any] | None = None, seeds: int | None = None) -> Estimate:
    """What a JSONL file will cost, every line validated as `submit_file` would (inputs read, nothing
    written, Redis untouched): per provider and in total, jobs, images, expected and worst-case USD."""
    from editq.producer.estimate import estimate_file as run

    return Estimate.model_validate(run(path, defaults=defaults, seeds=seeds).as_json())


def estimate_batch(lines: Iterable[Line], *, base_dir: Path | str = ".", defaults: dict[str, Any] | None = None,
                   seeds: int | None = None) -> Estimate:
    """`estimate_file` for request lines held in memory."""
    from editq.producer.estimate import estimate_batch as run

    return Estimate.model_validate(run(lines, base_dir=base_dir, defaults=defaults, seeds=seeds).as_json())


# ------------------------------------------------------------------------------------------------ status
def status(ident: str, *, batch_id: str | None = None, groups: bool = False, latest: bool = True) -> Status:
    """A batch's status (`BatchStatus`) or a job's (`JobStatus`): `ident` is a batch id, a job id, or with
    `batch_id` a custom_id within that batch. `groups`: A/B group counts too; `latest`: for a re-run batch,
    each item's latest outcome. Use `batch_status` / `job_status` when you know which one you hold."""
    return status_result(api.status(ident, groups=groups, batch_id=batch_id, latest=latest))


def batch_status(batch_id: str, *, groups: bool = False, latest: bool = True) -> BatchStatus:
    st = status(batch_id, groups=groups, latest=latest)
    if not isinstance(st, BatchStatus):
        raise UnknownId(f"no batch with id {batch_id!r} ({batch_id} is a job)")
    return st


def job_status(ident: str, *, batch_id: str | None = None) -> JobStatus:
    """One job, by job id or (with `batch_id`) by custom_id."""
    st = status(batches.resolve(ident, batch_id))
    assert isinstance(st, JobStatus)  # resolve() named a job
    return st


def wait(ident: str, *, timeout: float = 600.0, interval: float = 0.5) -> Status:
    """Block until the batch or job is finished (a batch: and its manifest written); its final status.
    Raises TimeoutError."""
    return status_result(api.wait(ident, timeout=timeout, interval=interval))


def wait_batch(batch_id: str, *, timeout: float = 600.0, interval: float = 0.5) -> BatchStatus:
    batch_status(batch_id)  # an unknown id or a job id fails now, not at the timeout
    st = wait(batch_id, timeout=timeout, interval=interval)
    assert isinstance(st, BatchStatus)
    return st


def wait_job(ident: str, *, batch_id: str | None = None, timeout: float = 600.0, interval: float = 0.5) -> JobStatus:
    st = wait(batches.resolve(ident, batch_id), timeout=timeout, interval=interval)
    assert isinstance(st, JobStatus)
    return st


def list_jobs(batch_id: str, states: Iterable[str] | None = None, *, latest: bool = False) -> Iterator[JobRow]:
    """The batch's jobs in enqueue order, one `JobRow` each (streamed), whose outcome is in `states` (all if
    None): succeeded, failed, cancelled, expired, moderated, missing (outputs checked in S3) or an active
    state. `latest`: each item's last re-run instead of the job first enqueued."""
    for row in batches.list_jobs(batch_id, states, latest=latest):
        yield JobRow.model_validate(row)


# ------------------------------------------------------------------------------------------ after a batch
def rerun(batch_id: str, only: Iterable[str] = RERUNNABLE, overrides: dict[str, Any] | None = None, *,
          new_batch_id: str | None = None, max_cost: float | None = None,
          on_budget: OnBudget | None = None) -> RerunReport:
    """A new batch, linked to `batch_id`, with exactly its items whose latest outcome is in `only` (failed,
    cancelled, expired, moderated, missing); successes never run again. `overrides` change parameters (a
    changed parameter makes a new job). The budget defaults to what is left of the original's."""
    return batches.rerun(batch_id, batches.parse_only(",".join(only)), overrides, new_batch_id=new_batch_id,
                         max_cost=max_cost, on_budget=on_budget)


def cancel(ident: str, *, batch_id: str | None = None) -> bool:
    """Cancel one job (by job id, or custom_id within `batch_id`), at the provider too where it holds the
    request. False when it had finished."""
    return api.cancel(batches.resolve(ident, batch_id))


def cancel_batch(batch_id: str) -> CancelReport:
    """Cancel every job of the batch the provider has not finished, at the provider too."""
    return batches.cancel_batch(batch_id)


def batch_budget(batch_id: str) -> BatchBudget:
    """The batch's money: spent, committed, its cap, jobs waiting for budget and why."""
    return BatchBudget.model_validate({**api.batch_budget(batch_id), "batch_id": batch_id})


def set_batch_budget(batch_id: str, max_cost: float | None) -> BatchBudget:
    """Set (None: remove) the batch's cap; jobs waiting for it that now fit go back to the queue (`released`)."""
    return BatchBudget.model_validate({**api.set_batch_budget(batch_id, max_cost), "batch_id": batch_id})


def tenant_budget(tenant: str) -> TenantBudget:
    """The tenant's money today (UTC)."""
    return TenantBudget.model_validate(api.tenant_money(tenant))


def set_tenant_budget(tenant: str, max_cost: float | None) -> TenantBudget:
    """Set the tenant's daily cap (None: back to EDITQ_TENANT_BUDGETS); waiting jobs that now fit are released."""
    return TenantBudget.model_validate(api.set_tenant_budget(tenant, max_cost))


def download(batch_id: str, dest: Path | str = "out", *, name: Literal["job", "custom_id"] = "job",
             parallel: int = 8) -> DownloadReport:
    """Copy the batch's outputs (each checked against its manifest's sha256) and manifests to
    `dest/batch_id/`; files already there with the same sha256 are skipped."""
    from editq.producer.download import download_batch

    return download_batch(batch_id, Path(dest), name=name, workers=parallel)


def continue_batch(batch_id: str, *, which: Literal["picked", "approved"] = "picked", sets: list[str] | None = None,
                   new_batch_id: str | None = None, dry_run: bool = False, max_cost: float | None = None,
                   on_budget: OnBudget = "wait") -> Continued:
    """`editq continue`: follow-up jobs for the picked (or approved) variants of a reviewed batch, linked to
    their originals, estimated (`.estimate`) and, unless `dry_run`, submitted (`.report`)."""
    from editq.producer.follow_submit import continue_batch as run

    return run(batch_id, which=which, sets=sets, batch_id_out=new_batch_id, dry_run=dry_run, max_cost=max_cost,
               on_budget=on_budget)


def report(batch_id: str, dest: Path | str = "report") -> ReportFiles:
    """`editq report`: the static A/B report (index.html, thumbnails, contact sheets) of a batch under `dest`."""
    from editq.producer.report import write_report

    return write_report(batch_id, Path(dest))


__all__ = ["batch_budget", "batch_status", "cancel", "cancel_batch", "continue_batch", "download", "estimate_batch",
           "estimate_file", "job_status", "list_jobs", "report", "rerun", "set_batch_budget", "set_tenant_budget",
           "status", "submit", "submit_batch", "submit_file", "tenant_budget", "wait", "wait_batch", "wait_job"]
