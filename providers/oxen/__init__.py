"""Oxen.ai hub AI API, synchronous `POST /api/ai/images/edit` (facts: provider-replicate-wavespeed-oxen.md §6)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import PerRunPriceSettings, per_run_prices
from editq.providers.spec import ProviderSpec


class OxenSettings(PerRunPriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_OXEN_", extra="ignore", populate_by_name=True)

    price_per_run: dict[str, dict[str, float]] = per_run_prices("editq.providers.oxen.pricing")

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


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=OxenSettings,
    sandbox_path="/oxen/api/ai",
    sandbox_key="oxen-sandbox-key",
    synchronous=True,
    webhooks=False,
)
