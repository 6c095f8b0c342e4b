"""What a job costs: pure price models, one per provider (built from the provider's settings).

Each provider's folder says how it bills (`pricing.py` next to its spec, `SPEC.pricing`); this module
holds the shapes they share and the published gpt-image-2 figures, written once:

* `PER_IMAGE_TABLE`: fal's per-image table for gpt-image-2 by output size x quality (USD, rounded to the
  cent as fal publishes them). Source: fal's gpt-image-2 model page and llms.txt, as transcribed in
  shared/reference/provider-openai.md §4 and provider-fal-and-modelrunner.md §5 (compiled 2026-11).
  fal says its price matches OpenAI's token prices; the table is what those tokens come to.
* `TablePrices`: token-billed providers (fal, OpenAI, OpenAI Batch at 50 %, Replicate, ModelRunner):
  the output images from the table, plus the inputs (reference images and prompt) at the input token rates.
* `RunPrices`: providers that bill a flat price per run by resolution tier x quality (WaveSpeed, Oxen).

Every model answers two questions about a job, before it runs (`estimate`: expected and worst case) and
after (`actual`: from what it produced, when the provider reports no cost itself). All figures are USD.
Budgets work in integer micro-dollars (`to_micro`), rounded up so a reservation is never short.

Choices where the sources are silent (safe for the user's money):
* A size between two table rows is priced at the dearest row up to the next larger one (the table is not
  monotone: 1024x1536 medium is cheaper than 1024x1024 medium), so an estimate never undershoots a row.
* `size: auto` is expected at 1024x1024 and, at worst, priced at the dearest row (3840x2160): the model
  picks the size. `quality: auto` is priced as `high` (the provider picks; high is the dearest).
* Input images: no published token count for gpt-image-2 (provider-openai.md §4 [G]); each reference image
  is estimated at `input_image_tokens` (a setting) at the image-input rate. The prompt at one token per
  4 characters expected, one per character at worst.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import Field, field_validator

from editq.providers.spec import ProviderSettings
from editq.schemas.job import EditJob
from editq.schemas.params import parse_size

QUALITIES = ("low", "medium", "high")

# USD per output image, gpt-image-2 (fal's published table; see the module docstring for the source)
PER_IMAGE_TABLE: Mapping[str, Mapping[str, float]] = {
    "1024x768": {"low": 0.01, "medium": 0.04, "high": 0.15},
    "1024x1024": {"low": 0.01, "medium": 0.06, "high": 0.22},
    "1024x1536": {"low": 0.01, "medium": 0.05, "high": 0.17},
    "1920x1080": {"low": 0.01, "medium": 0.04, "high": 0.16},
    "2560x1440": {"low": 0.01, "medium": 0.06, "high": 0.23},
    "3840x2160": {"low": 0.02, "medium": 0.11, "high": 0.41},
}
TABLE_SOURCE = "fal gpt-image-2 model page + llms.txt (shared/reference/provider-openai.md §4), as of 2026-11"
TEXT_IN_PER_M = 5.0  # gpt-image-2 token prices, USD per 1M (same sources); OpenAI's TokenPrices uses these
IMAGE_IN_PER_M = 8.0
AUTO_EXPECTED_SIZE = "1024x1024"
DEFAULT_INPUT_IMAGE_TOKENS = 4_000  # an assumption (no published figure); a setting of each provider


@dataclass(frozen=True)
class Estimate:
    """A job's cost before it runs: `expected` and `worst` (an upper bound for what editq commits)."""

    expected: float
    worst: float
    images: int


class PriceModel(Protocol):
    source: str

    def estimate(self, job: EditJob) -> Estimate: ...

    def actual(self, job: EditJob, outputs: list[tuple[int, int]]) -> float:
        """The cost of a run that produced `outputs` (width, height each), when the provider reports none."""
        ...


def to_micro(usd: float) -> int:
    """USD -> integer micro-dollars, rounded up (a reservation is never short by a rounding)."""
    return max(0, math.ceil(round(usd * 1_000_000, 3)))


def quality_for_price(quality: str) -> str:
    return "high" if quality not in QUALITIES else quality


def _rows(table: Mapping[str, Mapping[str, float]]) -> list[tuple[int, str]]:
    out = []
    for name in table:
        dims = parse_size(name)
        if dims is None:
            raise ValueError(f"price table row {name!r} is not WxH")
        out.append((dims[0] * dims[1], name))
    return sorted(out)


def per_image(table: Mapping[str, Mapping[str, float]], width: int, height: int, quality: str) -> float:
    """USD for one output image of `width` x `height` at `quality` from a size x quality table: the row
    itself for a size in the table (either orientation), else the dearest row at or below the first row
    that holds this many pixels (the largest row beyond the table)."""
    q = quality_for_price(quality)
    for name in (f"{width}x{height}", f"{height}x{width}"):
        if name in table:
            return float(table[name][q])
    rows = _rows(table)
    pixels = width * height
    upto = next((i for i, (p, _) in enumerate(rows) if p >= pixels), len(rows) - 1)
    return max(float(table[name][q]) for _, name in rows[: upto + 1])


def dearest(table: Mapping[str, Mapping[str, float]], quality: str) -> float:
    q = quality_for_price(quality)
    return max(float(row[q]) for row in table.values())


@dataclass(frozen=True)
class TablePrices:
    """Token-billed gpt-image-2: outputs from the size x quality table, inputs at the input token rates
    (USD per 1M tokens), everything times `multiplier` (OpenAI Batch: 0.5)."""

    table: Mapping[str, Mapping[str, float]]
    text_in_per_m: float
    image_in_per_m: float
    input_image_tokens: int = DEFAULT_INPUT_IMAGE_TOKENS
    multiplier: float = 1.0
    source: str = TABLE_SOURCE
    # estimates by what they read of the job (a batch has a few distinct ones: enqueue prices every line)
    _memo: dict[tuple[str, str, int, int, int], Estimate] = field(default_factory=dict, compare=False, repr=False)

    def _inputs(self, job: EditJob, chars_per_token: float) -> float:
        return self._inputs_of(len(job.inputs) or len(job.images), len(job.prompt), chars_per_token)

    def _inputs_of(self, images: int, prompt_chars: int, chars_per_token: float) -> float:
        tokens_text = math.ceil(prompt_chars / chars_per_token)
        return (images * self.input_image_tokens * self.image_in_per_m + tokens_text * self.text_in_per_m) / 1e6

    def estimate(self, job: EditJob) -> Estimate:
        what = (job.size, job.quality.value, job.num_images, len(job.inputs) or len(job.images), len(job.prompt))
        got = self._memo.get(what)
        if got is None:
            if len(self._memo) >= 4096:
                self._memo.clear()
            got = self._memo[what] = self._estimate(*what)
        return got

    def _estimate(self, size: str, q: str, n: int, images: int, prompt_chars: int) -> Estimate:
        """The estimate from exactly what it depends on (`estimate` keys its memo by these)."""
        dims = parse_size(size)
        if dims is None:
            w, h = parse_size(AUTO_EXPECTED_SIZE) or (1024, 1024)
            exp_img, worst_img = per_image(self.table, w, h, q), dearest(self.table, q)
        else:
            exp_img = worst_img = per_image(self.table, dims[0], dims[1], q)
        m = self.multiplier
        return Estimate(expected=m * (n * exp_img + self._inputs_of(images, prompt_chars, 4.0)),
                        worst=m * (n * worst_img + self._inputs_of(images, prompt_chars, 1.0)), images=n)

    def actual(self, job: EditJob, outputs: list[tuple[int, int]]) -> float:
        out = sum(per_image(self.table, w, h, job.quality.value) for w, h in outputs)
        return self.multiplier * (out + self._inputs(job, 4.0))


@dataclass(frozen=True)
class RunPrices:
    """A flat price per run by resolution tier x quality (USD); `tier_of(job)` names the job's tier the way
    the provider's protocol resolves it."""

    table: Mapping[str, Mapping[str, float]]
    tier_of: Callable[[EditJob], str]
    source: str

    def per_run(self, job: EditJob) -> float:
        return float(self.table[self.tier_of(job)][quality_for_price(job.quality.value)])

    def estimate(self, job: EditJob) -> Estimate:
        cost = self.per_run(job) * job.num_images
        return Estimate(expected=cost, worst=cost, images=job.num_images)

    def actual(self, job: EditJob, outputs: list[tuple[int, int]]) -> float:
        return self.per_run(job) * max(1, len(outputs))


def check_table(table: Mapping[str, Mapping[str, float]], rows_are_sizes: bool) -> None:
    """Refuse a price table (a setting) that misses a quality or holds a negative price."""
    for name, row in table.items():
        if rows_are_sizes and parse_size(name) is None:
            raise ValueError(f"price table row {name!r} must be WIDTHxHEIGHT")
        missing = [q for q in QUALITIES if q not in row]
        if missing:
            raise ValueError(f"price table row {name!r} lacks {', '.join(missing)}")
        if any(float(v) < 0 for v in row.values()):
            raise ValueError(f"price table row {name!r} has a negative price")


def _table_copy(table: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {k: dict(v) for k, v in table.items()}


class PerImageTableSettings(ProviderSettings):
    """`EDITQ_<P>_PRICE_TABLE` (JSON {"WxH": {"low": .., "medium": .., "high": ..}}, USD per output image) and
    `EDITQ_<P>_PRICE_INPUT_IMAGE_TOKENS` (tokens one reference image is estimated at)."""

    price_table: dict[str, dict[str, float]] = Field(default_factory=lambda: _table_copy(PER_IMAGE_TABLE))
    price_input_image_tokens: int = Field(default=DEFAULT_INPUT_IMAGE_TOKENS, ge=0)

    @field_validator("price_table")
    @classmethod
    def _table(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        check_table(v, rows_are_sizes=True)
        return v


class TablePriceSettings(PerImageTableSettings):
    """The table plus the input token rates (USD per 1M): `EDITQ_<P>_PRICE_TEXT_IN`, `..._PRICE_IMAGE_IN`."""

    price_text_in: float = TEXT_IN_PER_M
    price_image_in: float = IMAGE_IN_PER_M

    def table_prices(self, multiplier: float = 1.0) -> TablePrices:
        return TablePrices(table=self.price_table, text_in_per_m=self.price_text_in,
                           image_in_per_m=self.price_image_in, input_image_tokens=self.price_input_image_tokens,
                           multiplier=multiplier)



class PerRunPriceSettings(ProviderSettings):
    """`EDITQ_<P>_PRICE_PER_RUN` (JSON {"tier": {"low": .., "medium": .., "high": ..}}, USD per run) for the
    providers that bill by run (`RunPrices`). A subclass gives its defaults with `per_run_prices(module)`."""

    price_per_run: dict[str, dict[str, float]]

    @field_validator("price_per_run")
    @classmethod
    def _per_run(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        check_table(v, rows_are_sizes=False)
        return v


def per_run_prices(module: str) -> Any:
    """The `price_per_run` field of a `PerRunPriceSettings`: defaults to a copy of `DEFAULT_PER_RUN` of the
    provider's `pricing` module (named, and imported on first use: that module imports the settings class)."""
    return Field(
        default_factory=lambda: _table_copy(importlib.import_module(module).DEFAULT_PER_RUN),
        description=f"USD per run by resolution tier x quality ({module.replace('.', '/')}.py says where from).",
    )
