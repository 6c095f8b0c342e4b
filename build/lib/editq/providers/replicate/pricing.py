"""Replicate runs the official `openai/gpt-image-2` and bills OpenAI's token prices (the settings
`EDITQ_REPLICATE_PRICE_*_PER_M`; the reference has no Replicate price page, so these are OpenAI's, [I]).
Estimates use the per-image table those prices come to (providers/pricing.py, 2026-11); when a prediction
reports token counts (metrics or logs) the job's cost is computed from them (source `provider`)."""

from __future__ import annotations

from editq.providers.pricing import TablePrices
from editq.providers.replicate import ReplicateSettings


def price_model(settings: ReplicateSettings) -> TablePrices:
    return TablePrices(table=settings.price_table, text_in_per_m=settings.price_text_in_per_m,
                       image_in_per_m=settings.price_image_in_per_m,
                       input_image_tokens=settings.price_input_image_tokens)
