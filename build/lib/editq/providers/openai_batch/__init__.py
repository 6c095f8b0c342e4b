"""OpenAI Batch API for gpt-image-2 edits (facts: shared/reference/provider-openai.md §2-§4)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from editq.providers.openai.common import OpenAIPriceSettings
from editq.providers.spec import ProviderSpec


class OpenAIBatchSettings(OpenAIPriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_OPENAI_BATCH_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("EDITQ_OPENAI_BATCH_API_KEY", "EDITQ_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    base_url: str = "https://api.openai.com/v1"
    organization: str | None = Field(None, description="OpenAI-Organization header.")
    project: str | None = Field(None, description="OpenAI-Project header.")
    concurrency: int = Field(1_000_000, description="Jobs in flight in provider batches (the pipeline's slot cap; "
                             "the number of batches is bounded by max_open_batches).")
    rpm: int = Field(0, description="Keep 0: the pipeline counts claimed jobs, and one dispatch is one batch.")
    webhooks: bool = False
    timeout_s: float = 60.0
    claim_size: int = Field(50_000, ge=1, description="Jobs one dispatch claims at most (-> one or more provider "
                            "batches; also bounded by max_open_batches x max_lines).")
    max_open_batches: int = Field(20, ge=1, description="Provider batches in flight at once, across all workers "
                                  "(created and not yet read back).")
    max_lines: int = Field(50_000, ge=1, le=50_000, description="Lines per provider batch (OpenAI: 50,000).")
    max_file_bytes: int = Field(190 * 1024 * 1024, ge=1024, description="JSONL bytes per batch (OpenAI: 200 MB).")
    upload_timeout_s: float = Field(90.0, description="Keep below the pipeline's submit_lease_s (120 s).")
    deadline_s: float = Field(26 * 3600.0, description="How long the pipeline lets a job sit in a batch.")
    status_ttl_s: float = Field(30.0, gt=0, description="One GET /batches/{id} answer serves all pollers this long.")
    ingest_lock_s: float = Field(120.0, gt=0, description="Lock lease of the worker reading a batch's files.")
    ingest_budget_s: float = Field(600.0, gt=0, description="One poll task reads files this long, then yields.")
    ingest_concurrency: int = Field(8, ge=1, description="Staged S3 uploads in flight while reading output.")
    staging_prefix: str = Field("staging/openai_batch", description="S3 prefix of decoded outputs before collect.")
    results_ttl_s: int = Field(14 * 86400, description="Redis keeps per-batch results this long.")
    discount: float = Field(0.5, ge=0, le=1, description="Batch price multiplier applied to the token prices.")
    unrun_policy: Literal["retry", "fail"] = Field(
        "retry", description="Lines a batch never ran (expired/cancelled/failed): back to the queue, or fail."
    )
    input_url_ttl_s: int = Field(
        26 * 3600, ge=0, le=7 * 86400,
        description="Lifetime of the presigned input URLs written into batch lines (a line may run up to 24 h "
        "after the upload); 0 keeps the pipeline's URLs (they last EDITQ_PRESIGN_TTL_S).",
    )
    output_expires_after_s: int | None = Field(
        None, ge=3600, le=2_592_000, description="output_expires_after.seconds for the output/error files."
    )


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=OpenAIBatchSettings,
    sandbox_path="/openai/v1",
    sandbox_key="sk-sandbox-batch-key",
    webhooks=False,
    batches=True,
)
