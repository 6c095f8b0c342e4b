"""The typed results of the Python API (`import editq`): frozen pydantic models.

The rules that compute a status, a job row or a budget live where they always did (producer/api.py,
producer/batches.py, producer/estimate.py); the CLI prints those. This module only gives their results a
type: each model is validated from what those functions return, with `extra="forbid"`, so a field added
there and not here fails loudly (tests/test_python_api.py) instead of being dropped silently.

Models are frozen (hashable, safe to share); `model_dump()` gives the plain JSON-able form back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from editq.schemas.manifest import ErrorInfo, OutputRecord, StateChange
from editq.worker.state import State


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Money(Result):
    """A batch's money: settled cost, what is committed (settled + reservations of jobs in flight), its cap."""

    cost_usd: float
    committed_usd: float
    max_cost_usd: float | None
    on_budget: Literal["wait", "fail"]
    budget_waiting: int = Field(description="Jobs waiting in `budget_wait` for money.")
    budget_reason: str | None = Field(description="Why they wait (the budget that holds them).")


class BatchBudget(Money):
    """`editq.batch_budget` / `editq.set_batch_budget`: the batch's money; `released`: waiting jobs that a
    raised cap sent back to the queue (0 when only read)."""

    batch_id: str
    released: int = 0


class TenantBudget(Result):
    """A tenant's money on one UTC day: spent, committed, its cap (None: no cap) and how many jobs wait for it."""

    tenant: str
    day_utc: str
    cost_usd: float
    committed_usd: float
    max_cost_usd: float | None
    waiting: int
    released: int = 0


class BatchStatus(Money):
    """`editq status BATCH`: counts by state, progress, links to re-runs, money."""

    kind: Literal["batch"] = "batch"
    batch_id: str
    total: int
    done: int
    counts: dict[str, int] = Field(description="Jobs by state (states with none left out).")
    invalid: int = Field(description="Lines refused at enqueue.")
    closed: bool = Field(description="Every line has been read and enqueued.")
    finished: bool
    manifest_key: str | None = Field(description="The batch manifest in S3, once written.")
    created_at: float
    rerun_of: str | None
    reruns: list[str]
    latest: dict[str, int] | None = Field(description="Once re-run: each item's latest outcome, counted.")
    failures: dict[str, int] = Field(description="Failure reasons (ids blanked), counted.")
    providers: dict[str, dict[str, int]] = Field(description="provider -> {state: count}.")
    groups: dict[str, dict[str, int]] | None = Field(None, description="A/B group -> {state: count}.")

    @property
    def settled(self) -> bool:
        """Finished and its manifest written: what `wait` waits for."""
        return self.finished and self.manifest_key is not None


class JobStatus(Result):
    """`editq status JOB`: state, history, outputs (S3 keys, sha256), error, cost and links of one job."""

    kind: Literal["job"] = "job"
    job_id: str
    batch_id: str
    custom_id: str | None
    group: str | None
    variant: str | None
    parent_job_id: str | None
    state: State
    provider: str | None
    request_id: str | None
    attempts: int
    history: list[StateChange]
    outputs: list[OutputRecord]
    error: ErrorInfo | None
    finished: bool
    rerun_of: str | None
    superseded_by: str | None
    cost_usd: float | None
    budget_reason: str | None

    @property
    def settled(self) -> bool:
        return self.finished


Status = BatchStatus | JobStatus


class JobRow(Result):
    """One row of `editq jobs BATCH`: `state` is the job's outcome (succeeded, failed, cancelled, expired,
    moderated, missing) or its active state."""

    job_id: str
    custom_id: str | None
    provider: str | None
    state: str
    error: str | None
    moderation_stage: str | None
    cost_usd: float | None
    attempts: int
    rerun_of: str | None
    superseded_by: str | None


class InvalidLine(Result):
    line: int
    error: str
    custom_id: str | None = None


class CostLine(Result):
    """Jobs, images and cost (USD) of one provider, or of the whole batch."""

    jobs: int
    images: int
    expected_usd: float
    worst_usd: float
    priced: bool = Field(description="False when a provider has no price model: its jobs count, with no cost.")


class Estimate(Result):
    """`editq estimate`: per provider and in total, what the valid lines will cost; the invalid ones."""

    providers: dict[str, CostLine]
    total: CostLine
    invalid: list[InvalidLine]


def status_result(raw: dict[str, Any]) -> Status:
    return BatchStatus.model_validate(raw) if raw["kind"] == "batch" else JobStatus.model_validate(raw)


__all__ = ["BatchBudget", "BatchStatus", "CostLine", "Estimate", "InvalidLine", "JobRow", "JobStatus", "Money",
           "Status", "TenantBudget", "status_result"]
