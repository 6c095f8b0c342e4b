"""`echo` bills a flat (made-up) price per run, so its jobs carry a cost like every provider's: a plugin's
price model is one more module in its folder."""

from __future__ import annotations

from editq.providers.pricing import RunPrices
from editq.providers.spec import ProviderSettings

PER_RUN = {"any": {"low": 0.01, "medium": 0.02, "high": 0.04}}


def price_model(settings: ProviderSettings) -> RunPrices:
    return RunPrices(table=PER_RUN, tier_of=lambda job: "any", source="tests/plugins/echo (test-only price)")
