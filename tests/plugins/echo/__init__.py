"""`echo`: a test-only ninth provider, defined in this one folder and registered as a plugin
(`EDITQ_PROVIDER_MODULES=tests.plugins.echo`): a small queue API (submit, poll, cancel) whose
emulator really edits the image. It proves that a provider needs no edit anywhere else."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from editq.providers.spec import ProviderSettings, ProviderSpec


class EchoSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_ECHO_", extra="ignore")

    base_url: str = "https://echo.invalid"
    concurrency: int = 4


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=EchoSettings,
    webhooks=False,
)
