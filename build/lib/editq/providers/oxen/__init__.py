"""Oxen.ai hub AI API, synchronous `POST /api/ai/images/edit` (facts: provider-replicate-wavespeed-oxen.md §6)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import check_table
from editq.providers.spec import ProviderSettings, ProviderSpec


class OxenSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_OXEN_", extra="ignore", populate_by_name=True)

    price_per_run: dict[str, dict[str, float]] = Field(
        default_factory=lambda: _default_per_run(),
        description="USD per run by resolution tier x quality (providers/oxen/pricing.py says where from).",
    )

    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("EDITQ_OXEN_API_KEY", "OXEN_API_KEY"))
    base_url: str = "https://hub.oxen.ai/api/ai"
    model: str = "gpt-image-2"  # Oxen's model id for GPT Image 2 (was gpt-image-2-edit until Jul 2026)
    resolution: Literal["1K", "2K", "4K"] = "1K"  # tier sent for size=auto
    size_mapping: bool = False  # map WxH to (aspect_ratio, tier); off = refuse WxH at enqueue
    response_format: Literal["url", "b64_json"] = "url"
    target_namespace: str | None = None  # user or organisation billed and storing the results
    convert_mask: bool = True  # canonical alpha-0 mask -> Oxen's white-is-edit mask
    concurrency: int = 4
    webhooks: bool = False
    timeout_s: float = 300.0
    connect_timeout_s: float = 10.0

    @field_validator("price_per_run")
    @classmethod
    def _price_per_run(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        check_table(v, rows_are_sizes=False)
        return v


def _default_per_run() -> dict[str, dict[str, float]]:
    from editq.providers.oxen.pricing import DEFAULT_PER_RUN

    return {k: dict(v) for k, v in DEFAULT_PER_RUN.items()}


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=OxenSettings,
    sandbox_path="/oxen/api/ai",
    sandbox_key="oxen-sandbox-key",
    synchronous=True,
    webhooks=False,
)
