"""OpenAI bills gpt-image-2 by tokens ($5 text in, $8 image in, $30 image out per 1M; provider-openai.md §4,
2026-11). Before a job runs it is estimated with the per-image table those prices come to (fal publishes it and
says its price matches OpenAI's; providers/pricing.py). Every answer carries `usage`: the job's cost is those
tokens at the configured prices, source `provider`. Overridable: `EDITQ_OPENAI_PRICE_*`."""

from __future__ import annotations

from editq.providers.pricing import TablePrices, TablePriceSettings


def price_model(settings: TablePriceSettings) -> TablePrices:
    return settings.table_prices()
