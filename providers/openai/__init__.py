"""OpenAI Images API, synchronous `POST /v1/images/edits` (facts: shared/reference/provider-openai.md §1, §3-§5)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from editq.providers.openai.common import OpenAIPriceSettings
from editq.providers.spec import ProviderSpec


class OpenAISettings(OpenAIPriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_OPENAI_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("EDITQ_OPENAI_API_KEY", "OPENAI_API_KEY"))
    base_url: str = Field(
        "https://api.openai.com/v1", validation_alias=AliasChoices("EDITQ_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    organization: str | None = None  # OpenAI-Organization header
    project: str | None = None  # OpenAI-Project header
    concurrency: int = 4  # requests in flight at once (each holds a connection for up to minutes)
    webhooks: bool = False  # the synchronous API has none
    timeout_s: float = 300.0  # read timeout of one edit call (edits can take ~170 s)
    connect_timeout_s: float = 10.0


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=OpenAISettings,
    sandbox_path="/openai/v1",
    sandbox_key="sk-sandbox-key",
    synchronous=True,
    webhooks=False,
)
