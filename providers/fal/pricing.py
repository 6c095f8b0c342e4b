"""How fal bills `openai/gpt-image-2/edit`: by tokens, which fal publishes as a per-image table by output
size x quality (providers/pricing.py `PER_IMAGE_TABLE`; source: fal's model page and llms.txt, in
shared/reference/provider-fal-and-modelrunner.md §5, 2026-11), plus the input tokens ($5 text, $8 image per
1M). fal reports no usage or cost in its result, so a job's cost is always an `estimate` from the sizes it
produced. fal bills only successful outputs: failures release their reservation. Overridable:
`EDITQ_FAL_PRICE_TABLE`, `EDITQ_FAL_PRICE_TEXT_IN`, `EDITQ_FAL_PRICE_IMAGE_IN`, `EDITQ_FAL_PRICE_INPUT_IMAGE_TOKENS`."""

from __future__ import annotations

from editq.providers.pricing import TablePrices, TablePriceSettings


def price_model(settings: TablePriceSettings) -> TablePrices:
    return settings.table_prices()
