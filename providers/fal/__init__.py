"""fal.ai's queue API for `openai/gpt-image-2/edit` (facts: shared/reference/provider-fal-and-modelrunner.md)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import TablePriceSettings
from editq.providers.spec import ProviderSpec, host_of


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
    # the sweep (worker/sweep.py): fal's request history on its Platform API finds completions whose webhook
    # was lost; the key is sent there too (its host joins auth_hosts)
    sweep: bool = True
    history_url: str = "https://api.fal.ai/v1"
    history_endpoints: list[str] = Field(default_factory=lambda: ["openai/gpt-image-2/edit"], max_length=50)

    @model_validator(mode="after")
    def _history_host_gets_the_key(self) -> FalSettings:
        host = host_of(self.history_url)
        if self.sweep and host and host not in self.auth_hosts:
            self.auth_hosts = [*self.auth_hosts, host]
        return self


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=FalSettings,
    sandbox_env={"EDITQ_FAL_JWKS_URL": "{sandbox}/fal/.well-known/jwks.json", "EDITQ_FAL_USER_ID": "sandbox-user",
                 "EDITQ_FAL_HISTORY_URL": "{sandbox}/fal-api/v1"},
    auth_scheme="Key",
    default=True,
)
