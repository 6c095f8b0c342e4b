"""What editq writes next to the outputs: one manifest per job, one JSONL line per job per batch."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from editq.schemas.job import InputRecord

MANIFEST_VERSION = 1


class StateChange(BaseModel):
    state: str
    at: float = Field(description="Unix time, seconds.")
    note: str | None = None


class OutputRecord(BaseModel):
    index: int
    key: str = Field(description="S3 key of the stored image.")
    sha256: str
    bytes: int
    content_type: str
    width: int
    height: int
    source_url: str | None = Field(None, description="Where the provider served it (query string removed).")


class Usage(BaseModel):
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    input_image_tokens: int | None = None
    input_text_tokens: int | None = None
    output_image_tokens: int | None = None
    cost_usd: float | None = Field(None, description="Reported by the provider, or computed from tokens.")
    cost_source: str | None = Field(None, description="'provider', 'tokens' or 'estimate'.")


class ErrorInfo(BaseModel):
    kind: str = Field(description="'retryable', 'terminal' or 'unknown'.")
    reason: str
    status_code: int | None = None
    provider_code: str | None = None
    attempt: int | None = None
    moderation_stage: str | None = Field(
        default=None, description="Set for a moderation block: 'input' or 'output' where the provider says which, "
        "else 'unknown'."
    )


class JobManifest(BaseModel):
    manifest_version: int = MANIFEST_VERSION
    job_id: str
    batch_id: str
    custom_id: str | None
    group: str | None = Field(None, description="A/B group (schemas/variants.py); None for a job outside any.")
    variant: str | None = Field(None, description="The variant's label within its group.")
    parent_job_id: str | None = Field(None, description="The job this one follows up (`editq continue`).")
    state: str
    job: dict[str, Any] = Field(description="The job as submitted (the user's request, no secrets).")
    inputs: list[InputRecord]
    mask: InputRecord | None = None
    provider: str | None
    model: str
    provider_request_id: str | None
    provider_requests: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Every request sent to a provider: attempt, provider, request id, outcome; "
        "'uncertain' marks a request that may have been billed without editq learning its id.",
    )
    attempts: int
    history: list[StateChange]
    outputs: list[OutputRecord]
    usage: Usage | None = None
    cost_usd: float | None = Field(
        None, description="What the job cost, USD: the provider's figure, or editq's estimate from what it produced; "
        "for a failed or cancelled job, what attempts that may have been billed keep committed (0 if none).",
    )
    cost_source: str | None = Field(None, description="'provider' (reported by the provider) or 'estimate'.")
    error: ErrorInfo | None = None
    rerun_of: str | None = Field(
        default=None, description="The job this one re-runs (`editq rerun`), in batch `rerun_of_batch`."
    )
    rerun_of_batch: str | None = None
    written_at: float
