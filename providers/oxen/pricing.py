"""Oxen.ai bills per run by resolution tier (1K/2K/4K; "QHD+ billed at a higher tier",
shared/reference/provider-replicate-wavespeed-oxen.md §6.2) x quality, and reports no cost: a job's cost is
always an `estimate`. The reference gives no figures, so the defaults (`DEFAULT_PER_RUN`, USD, overridable
with `EDITQ_OXEN_PRICE_PER_RUN`) are derived on the safe side: each tier at the dearest row of the gpt-image-2
table (providers/pricing.py, fal 2026-11) up to the largest image of that tier (longest edge 1536 / 2560 /
3840, as `protocol.aspect_and_tier` maps them). `size: auto` is priced at `EDITQ_OXEN_RESOLUTION`."""

from __future__ import annotations

from editq.providers.oxen import OxenSettings
from editq.providers.oxen.protocol import aspect_and_tier
from editq.providers.pricing import RunPrices
from editq.schemas.job import EditJob
from editq.schemas.params import parse_size

TIER_LARGEST = {"1K": (1536, 1536), "2K": (2560, 2560), "4K": (3840, 2160)}
DEFAULT_PER_RUN: dict[str, dict[str, float]] = {
    "1K": {"low": 0.01, "medium": 0.06, "high": 0.23},
    "2K": {"low": 0.02, "medium": 0.11, "high": 0.41},
    "4K": {"low": 0.02, "medium": 0.11, "high": 0.41},
}
SOURCE = "derived from fal's gpt-image-2 table (2026-11) by Oxen's resolution tiers; [I]"


def price_model(settings: OxenSettings) -> RunPrices:
    def tier_of(job: EditJob) -> str:
        dims = parse_size(job.size)
        mapped = aspect_and_tier(*dims) if dims is not None else None
        return mapped[1] if mapped is not None else settings.resolution

    return RunPrices(table=settings.price_per_run, tier_of=tier_of, source=SOURCE)
