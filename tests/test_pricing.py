"""Every provider's price model against the published figures (tests/data/published_prices.md, verbatim lines
of shared/reference/), and the estimate arithmetic: expected and worst case, auto sizes, overrides."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from editq import providers
from editq.providers.oxen import pricing as oxen_pricing
from editq.providers.pricing import PER_IMAGE_TABLE, TablePrices, dearest, per_image, to_micro
from editq.providers.wavespeed import pricing as wavespeed_pricing
from editq.schemas.job import EditJob, InputRecord
from tests.conftest import ROOT

PUBLISHED = ROOT / "tests" / "data" / "published_prices.md"
REFERENCE = ROOT.parent / "shared" / "reference"
TABLE_PROVIDERS = ("fal", "openai", "replicate", "modelrunner")


def _published() -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """(size -> quality -> USD per image, token prices per 1M) parsed from the published lines."""
    text = PUBLISHED.read_text(encoding="utf-8")
    table: dict[str, dict[str, float]] = {}
    pattern = re.compile(r"(\d{3,4}[x\u00d7]\d{3,4})\D+?\$(\d+\.\d+)\D+?\$(\d+\.\d+)\D+?\$(\d+\.\d+)")
    for size, lo, med, hi in pattern.findall(text):
        row = {"low": float(lo), "medium": float(med), "high": float(hi)}
        key = size.replace("\u00d7", "x")
        assert table.setdefault(key, row) == row, f"the published lines disagree on {key}"
    tokens = re.search(r"Image tokens per 1M: \$(\d+\.\d+) input, \$(\d+\.\d+) cached, \$(\d+\.\d+) output", text)
    text_tokens = re.search(r"Text tokens per 1M: \$(\d+\.\d+) input", text)
    assert tokens and text_tokens
    prices = {"image_in": float(tokens.group(1)), "image_in_cached": float(tokens.group(2)),
              "image_out": float(tokens.group(3)), "text_in": float(text_tokens.group(1))}
    return table, prices


def _job(size: str = "1024x1024", quality: str = "medium", n: int = 1, prompt: str = "p" * 40,
         provider: str = "fal", inputs: int = 1) -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=1024, height=1024, s3_key="x.png")
    return EditJob(job_id="j", batch_id="b", prompt=prompt, images=["a.png"] * inputs, inputs=[rec] * inputs,
                   size=size, quality=quality, num_images=n, provider=provider, idempotency_key="k")


@pytest.fixture
def fresh_models() -> Iterator[None]:
    providers.cache_clear()
    yield
    providers.cache_clear()


def test_the_published_lines_are_still_in_the_reference() -> None:
    """The vendored lines are verbatim from shared/reference/ (checked wherever the reference sits beside the
    repository, as on the machine the project is built on)."""
    lines = [ln for ln in PUBLISHED.read_text(encoding="utf-8").splitlines() if ln.startswith(("|", "-", " "))]
    assert len(lines) >= 8
    if REFERENCE.is_dir():
        corpus = "\n".join(p.read_text(encoding="utf-8") for p in REFERENCE.glob("*.md"))
        missing = [ln for ln in lines if ln not in corpus]
        assert not missing, f"no longer in shared/reference: {missing}"


def test_the_table_holds_every_published_row_and_nothing_else() -> None:
    table, _ = _published()
    assert set(table) == set(PER_IMAGE_TABLE) and len(table) == 6
    assert table == {k: dict(v) for k, v in PER_IMAGE_TABLE.items()}


@pytest.mark.parametrize("provider", TABLE_PROVIDERS)
def test_token_billed_providers_price_each_published_size_and_quality(provider: str, fresh_models: None) -> None:
    table, _ = _published()
    model = providers.price_model_of(provider)
    assert isinstance(model, TablePrices)
    for size, row in table.items():
        w, h = map(int, size.split("x"))
        for quality, usd in row.items():
            assert per_image(model.table, w, h, quality) == usd
            assert per_image(model.table, h, w, quality) == usd  # the other orientation is the same image


def test_openai_batch_is_half_of_openai(fresh_models: None) -> None:
    sync, batch = providers.price_model_of("openai"), providers.price_model_of("openai_batch")
    assert sync is not None and batch is not None
    for size in ("1024x1024", "3840x2160", "auto"):
        for q in ("low", "medium", "high"):
            job = _job(size=size, quality=q, provider="openai")
            assert batch.estimate(job).expected == pytest.approx(sync.estimate(job).expected / 2)
            assert batch.estimate(job).worst == pytest.approx(sync.estimate(job).worst / 2)


def test_token_prices_are_the_published_ones(fresh_models: None) -> None:
    _, prices = _published()
    for name in ("fal", "openai", "openai_batch", "modelrunner"):
        s = providers.settings_of(name)
        assert s.price_text_in == prices["text_in"] and s.price_image_in == prices["image_in"]  # type: ignore[attr-defined]
    oa = providers.settings_of("openai")
    assert oa.price_image_out == prices["image_out"]  # type: ignore[attr-defined]
    assert oa.price_image_in_cached == prices["image_in_cached"]  # type: ignore[attr-defined]
    rep = providers.settings_of("replicate")
    assert rep.price_image_in_per_m == prices["image_in"]  # type: ignore[attr-defined]
    assert rep.price_image_out_per_m == prices["image_out"]  # type: ignore[attr-defined]


def _envelope(table: dict[str, dict[str, float]], w: int, h: int, q: str) -> float:
    """The dearest published row up to the first that holds w*h pixels (computed independently)."""
    rows = sorted(table.items(), key=lambda kv: int(kv[0].split("x")[0]) * int(kv[0].split("x")[1]))
    out = 0.0
    for size, row in rows:
        a, b = map(int, size.split("x"))
        out = max(out, row[q])
        if a * b >= w * h:
            break
    return out


def test_per_run_tables_are_derived_from_the_published_table() -> None:
    table, _ = _published()
    for tier, (w, h) in wavespeed_pricing.TIER_LARGEST.items():
        for q in ("low", "medium", "high"):
            want = max(wavespeed_pricing.MIN_PER_RUN, _envelope(table, w, h, q))
            assert wavespeed_pricing.DEFAULT_PER_RUN[tier][q] == want, (tier, q)
    for tier, (w, h) in oxen_pricing.TIER_LARGEST.items():
        for q in ("low", "medium", "high"):
            assert oxen_pricing.DEFAULT_PER_RUN[tier][q] == _envelope(table, w, h, q), (tier, q)


def test_per_run_providers_price_by_the_tier_the_protocol_sends(fresh_models: None) -> None:
    ws = providers.price_model_of("wavespeed")
    assert ws is not None
    assert ws.estimate(_job("auto", "high", provider="wavespeed")).worst == 0.23  # auto is sent at 1k
    assert ws.estimate(_job("2048x2048", "medium", provider="wavespeed")).expected == 0.11  # 2k
    assert ws.estimate(_job("3840x2160", "low", provider="wavespeed")).worst == 0.06  # 4k, the floor
    ox = providers.price_model_of("oxen")
    assert ox is not None
    assert ox.estimate(_job("auto", "medium", provider="oxen")).worst == 0.06  # EDITQ_OXEN_RESOLUTION=1K
    assert ox.estimate(_job("auto", "auto", provider="oxen")).worst == 0.23  # quality auto priced as high
    assert ox.actual(_job("auto", "low", provider="oxen"), [(1024, 1024)]) == 0.01


def test_estimate_expected_and_worst_case() -> None:
    m = TablePrices(table=PER_IMAGE_TABLE, text_in_per_m=5.0, image_in_per_m=8.0, input_image_tokens=4000)
    inputs_expected = (4000 * 8.0 + 10 * 5.0) / 1e6  # one reference image, 40 characters = 10 tokens
    inputs_worst = (4000 * 8.0 + 40 * 5.0) / 1e6  # one token per character at worst
    e = m.estimate(_job("1024x1024", "medium", n=2))
    assert e.expected == pytest.approx(2 * 0.06 + inputs_expected)
    assert e.worst == pytest.approx(2 * 0.06 + inputs_worst) and e.images == 2
    auto = m.estimate(_job("auto", "low"))
    assert auto.expected == pytest.approx(0.01 + inputs_expected)  # expected at 1024x1024
    assert auto.worst == pytest.approx(0.02 + inputs_worst)  # the model may pick 3840x2160
    assert m.estimate(_job("1024x1024", "auto")).expected == pytest.approx(0.22 + inputs_expected)
    # a size between rows is priced at the dearest row up to the next larger one (never below a row)
    assert per_image(PER_IMAGE_TABLE, 1280, 1280, "medium") == 0.06  # 1.6 MP: up to 1920x1080, 1024x1024's 0.06
    assert per_image(PER_IMAGE_TABLE, 512, 512, "high") == 0.15
    assert dearest(PER_IMAGE_TABLE, "medium") == 0.11
    # what a run cost, from the sizes it produced
    assert m.actual(_job("auto", "high"), [(3840, 2160), (1024, 1024)]) == pytest.approx(0.41 + 0.22 + inputs_expected)


def test_to_micro_rounds_up_and_never_below_zero() -> None:
    assert to_micro(0.06) == 60_000
    assert to_micro(0.0000011) == 2
    assert to_micro(0.41 + 0.22) == 630_000
    assert to_micro(-1) == 0


def test_prices_are_settings(monkeypatch: pytest.MonkeyPatch, fresh_models: None) -> None:
    table = {k: dict(v) for k, v in PER_IMAGE_TABLE.items()}
    table["1024x1024"]["medium"] = 0.5
    monkeypatch.setenv("EDITQ_FAL_PRICE_TABLE", json.dumps(table))
    monkeypatch.setenv("EDITQ_FAL_PRICE_INPUT_IMAGE_TOKENS", "0")
    monkeypatch.setenv("EDITQ_WAVESPEED_PRICE_PER_RUN", json.dumps({t: {"low": 1, "medium": 2, "high": 3}
                                                                  for t in ("1k", "2k", "4k")}))
    providers.cache_clear()
    fal = providers.price_model_of("fal")
    ws = providers.price_model_of("wavespeed")
    assert fal is not None and ws is not None
    assert fal.estimate(_job("1024x1024", "medium", prompt="abcd")).expected == pytest.approx(0.5 + 5.0 / 1e6)
    assert ws.estimate(_job("auto", "medium", provider="wavespeed")).expected == 2
    monkeypatch.setenv("EDITQ_FAL_PRICE_TABLE", json.dumps({"1024x1024": {"low": 1}}))
    providers.cache_clear()
    with pytest.raises(ValueError, match="lacks medium, high"):
        providers.price_model_of("fal")


def test_every_registered_provider_has_a_price_model_with_a_source(fresh_models: None) -> None:
    for name in providers.names():
        model = providers.price_model_of(name)
        assert model is not None, name
        assert re.search(r"20\d\d-\d\d", model.source), f"{name}: a price without a date"
        assert (ROOT / "providers" / name / "pricing.py").is_file()
        text = Path(ROOT / "providers" / name / "pricing.py").read_text(encoding="utf-8")
        assert "reference" in text or "providers/pricing.py" in text, name
