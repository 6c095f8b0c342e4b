"""WaveSpeedAI API v3 for `openai/gpt-image-2/edit` (facts: provider-replicate-wavespeed-oxen.md §5)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import PerRunPriceSettings, per_run_prices
from editq.providers.spec import ProviderSpec

OUTPUT_FORMATS = ("png", "jpeg", "webp")


class WaveSpeedSettings(PerRunPriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_WAVESPEED_", extra="ignore", populate_by_name=True)

    price_per_run: dict[str, dict[str, float]] = per_run_prices("editq.providers.wavespeed.pricing")

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_WAVESPEED_API_KEY", "WAVESPEED_API_KEY")
    )
    base_url: str = "https://api.wavespeed.ai"
    webhook_secret: SecretStr | None = None  # whsec_...; fetched from /api/v3/webhook/secret when unset
    concurrency: int = 2  # Bronze tier; Silver 300, Gold 3,000, Ultra 10,000 (tasks over it wait at WaveSpeed)
    output_formats: str = ",".join(OUTPUT_FORMATS)  # narrow if WaveSpeed refuses one

    def allowed_formats(self) -> list[str]:
        return [f.strip() for f in self.output_formats.split(",") if f.strip()]


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=WaveSpeedSettings,
    sandbox_key="ws-sandbox-key",
)
