"""Replicate's HTTP API for the official model `openai/gpt-image-2`
(facts: shared/reference/provider-replicate-wavespeed-oxen.md §1-4)."""

from __future__ import annotations

import re

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from editq.providers.pricing import IMAGE_IN_PER_M, TEXT_IN_PER_M, PerImageTableSettings
from editq.providers.spec import ProviderSpec

_CANCEL_AFTER = re.compile(r"^(?:\d+|(?:\d+h)?(?:\d+m)?(?:\d+s)?)$")
# Replicate serves outputs from replicate.delivery and its subdomains; these get the token (https only)
OUTPUT_HOSTS = [".replicate.delivery"]


class ReplicateSettings(PerImageTableSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_REPLICATE_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("EDITQ_REPLICATE_API_TOKEN", "EDITQ_REPLICATE_API_KEY", "REPLICATE_API_TOKEN"),
    )
    base_url: str = "https://api.replicate.com"  # no /v1: paths carry it, as in the official client
    webhook_secret: SecretStr | None = None  # whsec_...; unset = GET /v1/webhooks/default/secret
    webhook_tolerance_s: float = 300.0
    concurrency: int = 32
    rpm: int = 600  # Replicate's documented create limit per account
    max_num_images: int = Field(default=1, ge=1, le=10)
    cancel_after: str | None = Field(default=None, description="Cancel-After header, e.g. '45m'; unset = none.")
    poll_safety_net_s: float = Field(default=300.0, gt=0, description="Longest gap between polls of one prediction.")
    sweep: bool = Field(default=True, description="List predictions (GET /v1/predictions) to find completions "
                        "whose webhook was lost (worker/sweep.py).")
    auth_hosts: list[str] = Field(
        default_factory=lambda: list(OUTPUT_HOSTS),
        validation_alias=AliasChoices("EDITQ_REPLICATE_AUTH_HOSTS", "EDITQ_REPLICATE_OUTPUT_AUTH_HOSTS", "auth_hosts",
                                      "output_auth_hosts"),
        description="Output hosts that get the Authorization header (exact hosts; https only).",
    )
    price_text_in_per_m: float = TEXT_IN_PER_M
    price_image_in_per_m: float = IMAGE_IN_PER_M
    price_image_out_per_m: float = 30.0

    @field_validator("cancel_after")
    @classmethod
    def _cancel_after(cls, v: str | None) -> str | None:
        if v is not None and (not v or not _CANCEL_AFTER.match(v)):
            raise ValueError("cancel_after must look like 30s, 5m, 1h30m or a number of seconds")
        return v


SPEC = ProviderSpec(
    package=__name__,
    settings_cls=ReplicateSettings,
    sandbox_key="r8_sandbox-token",
    auth_scheme="Bearer",
)

__all__ = ["SPEC", "ReplicateSettings"]
