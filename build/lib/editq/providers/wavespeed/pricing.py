"""WaveSpeed bills a flat price per run, by resolution tier (1k/2k/4k) x quality; it reports no cost, so a
job's cost is always an `estimate`.

The reference (shared/reference/provider-replicate-wavespeed-oxen.md §5) has no price figures. Defaults
(`DEFAULT_PER_RUN`, USD, overridable with `EDITQ_WAVESPEED_PRICE_PER_RUN`) are derived, on the safe side:
each tier at the dearest row of the gpt-image-2 table (providers/pricing.py) up to the largest size that tier
produces (1k: 2048x1024, 2k: 2560x2048, 4k: 3840x2160 — `protocol.SIZE_TABLE`), and never below the $0.06
"from $0.060/run" WaveSpeed's GPT Image 2 page shows (wavespeed.ai/gpt-image-2-api, read 2026-12-07).
Set your own figures from your WaveSpeed invoice. `size: auto` is sent at 1k, so it is priced at 1k.
"""

from __future__ import annotations

from editq.providers.pricing import RunPrices
from editq.providers.wavespeed import WaveSpeedSettings
from editq.providers.wavespeed.protocol import DEFAULT_RESOLUTION, SIZE_TABLE
from editq.schemas.job import EditJob
from editq.schemas.params import parse_size

MIN_PER_RUN = 0.06  # wavespeed.ai/gpt-image-2-api, "From $0.060/run" (2026-12-07)
TIER_LARGEST = {"1k": (2048, 1024), "2k": (2560, 2048), "4k": (3840, 2160)}
DEFAULT_PER_RUN: dict[str, dict[str, float]] = {
    "1k": {"low": 0.06, "medium": 0.06, "high": 0.23},
    "2k": {"low": 0.06, "medium": 0.11, "high": 0.41},
    "4k": {"low": 0.06, "medium": 0.11, "high": 0.41},
}
SOURCE = "derived from fal's gpt-image-2 table (2026-11) with WaveSpeed's $0.06 floor (2026-12-07); [I]"


def tier_of(job: EditJob) -> str:
    dims = parse_size(job.size)
    return DEFAULT_RESOLUTION if dims is None else SIZE_TABLE[dims][1]


def price_model(settings: WaveSpeedSettings) -> RunPrices:
    return RunPrices(table=settings.price_per_run, tier_of=tier_of, source=SOURCE)
