"""fal.ai's queue API for `openai/gpt-image-2/edit` (facts: shared/reference/provider-fal-and-modelrunner.md)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import TablePriceSettings
from editq.providers.spec import ProviderSpec


class FalSettings(TablePriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_FAL_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_FAL_KEY", "EDITQ_FAL_API_KEY", "FAL_KEY")
    )
    base_url: str = "https://queue.fal.run"
    jwks_url: str = "https://rest.fal.ai/.well-known/jwks.json"
    # fal signs every account's deliveries with one key set: deliveries for another fal user are refused, and
    # with webhooks on it is required (the worker and the receiver refuse to start without it)
    user_id: str | None = None
    concurrency: int = 40
    request_timeout_s: float | None = None  # X-Fal-Request-Timeout: deadline for the job to start


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=FalSettings,
    sandbox_env={"EDITQ_FAL_JWKS_URL": "{sandbox}/fal/.well-known/jwks.json", "EDITQ_FAL_USER_ID": "sandbox-user"},
    auth_scheme="Key",
    default=True,
)
