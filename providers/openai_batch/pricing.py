"""OpenAI Batch: OpenAI's token prices at 50 % (the Batch discount, `EDITQ_OPENAI_BATCH_DISCOUNT`;
shared/reference/provider-openai.md §2 and §4 - that image batches get the same 50 % is [I] there).
Estimates are the OpenAI table times the discount; a finished line's `usage` gives the real cost
(source `provider`)."""

from __future__ import annotations

from editq.providers.openai_batch import OpenAIBatchSettings
from editq.providers.pricing import TablePrices


def price_model(settings: OpenAIBatchSettings) -> TablePrices:
    return settings.table_prices(multiplier=settings.discount)
