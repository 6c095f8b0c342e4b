"""ModelRunner: a fal-like queue serving (by assumption, see README) the same gpt-image-2 model, so jobs are
estimated with fal's table (providers/pricing.py, 2026-11) before they run. Its result carries the charged
`totalPrice` (`billingStatus` charged/partial), recorded as the job's cost with source `provider`. Overridable:
`EDITQ_MODELRUNNER_PRICE_TABLE`, `..._PRICE_TEXT_IN`, `..._PRICE_IMAGE_IN`, `..._PRICE_INPUT_IMAGE_TOKENS`."""

from __future__ import annotations

from editq.providers.pricing import TablePrices, TablePriceSettings


def price_model(settings: TablePriceSettings) -> TablePrices:
    return settings.table_prices()
