"""ModelRunner's queue API, a fal-like one (facts: shared/reference/provider-fal-and-modelrunner.md §6)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import TablePriceSettings
from editq.providers.spec import ProviderSpec, host_of
from editq.schemas.job import DEFAULT_MODEL


class ModelRunnerSettings(TablePriceSettings):
    """`auth_hosts` always holds `rest_url`'s host: the webhook secret is fetched there with the key."""

    model_config = SettingsConfigDict(env_prefix="EDITQ_MODELRUNNER_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_MODELRUNNER_KEY", "EDITQ_MODELRUNNER_API_KEY", "MODELRUNNER_KEY")
    )
    base_url: str = "https://queue.modelrunner.run"
    rest_url: str = "https://modelrunner.run"  # account API: the webhook secret lives here
    webhook_secret: SecretStr | None = None
    model_path: str = DEFAULT_MODEL  # where the canonical model is served on ModelRunner (unconfirmed)
    field_names: dict[str, str] = Field(default_factory=dict)  # canonical (fal) input name -> ModelRunner name
    concurrency: int = 16

    @model_validator(mode="after")
    def _rest_host_may_receive_the_key(self) -> ModelRunnerSettings:
        rest = host_of(self.rest_url)
        if rest and rest not in {h.lower() for h in self.auth_hosts}:
            self.auth_hosts = [*self.auth_hosts, rest]
        return self


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=ModelRunnerSettings,
    sandbox_key="mr-sandbox-key",
    sandbox_env={"EDITQ_MODELRUNNER_REST_URL": "{sandbox}/modelrunner"},
    auth_scheme="Key",
)
