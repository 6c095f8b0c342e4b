"""The bundled sample batch: images match their generator, batch.jsonl is what the demo expects."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image, ImageChops

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BATCH = EXAMPLES / "batch.jsonl"

QUALITIES = {"low", "medium", "high", "auto"}
OUTPUT_FORMATS = {"png", "jpeg", "webp"}
BACKGROUNDS = {"auto", "opaque", "transparent"}
PRIORITIES = {"interactive", "bulk"}
KNOWN_FIELDS = {
    "custom_id",
    "prompt",
    "images",
    "mask",
    "size",
    "quality",
    "num_images",
    "output_format",
    "background",
    "priority",
    "metadata",
    "provider",
    "model",
    "variants",
    "compare",
}
COMPARED = {"fal", "replicate", "openai"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


def _load_make_samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("editq_examples_make_samples", EXAMPLES / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_samples = _load_make_samples()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_samples.generate(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="module")
def lines(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return jobs


@pytest.fixture(scope="module")
def jobs() -> list[dict[str, Any]]:
    lines = BATCH.read_text(encoding="utf-8").splitlines()
    assert all(line.strip() for line in lines), "batch.jsonl must not contain blank lines"
    parsed = []
    for i, line in enumerate(lines, 1):
        try:
            job = json.loads(line)
        except json.JSONDecodeError as exc:  # pragma: no cover - failure path
            pytest.fail(f"line {i} is not JSON: {exc}")
        assert isinstance(job, dict), f"line {i} must be a JSON object"
        parsed.append(job)
    return parsed


def job_problems(job: dict[str, Any], base: Path = EXAMPLES) -> list[str]:
    """Structural validation of one canonical job line (independent of the editq package)."""
    problems: list[str] = []
    unknown = set(job) - KNOWN_FIELDS
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    cid = job.get("custom_id")
    if not isinstance(cid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", cid):
        problems.append(f"bad custom_id {cid!r}")
    prompt = job.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("empty prompt")
    images = job.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        problems.append("images must be a non-empty list of paths")
        images = []
    for rel in [*images, *([job["mask"]] if "mask" in job else [])]:
        path = base / rel
        if Path(rel).is_absolute() or not path.is_file():
            problems.append(f"missing file {rel!r}")
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            problems.append(f"not an image: {rel!r}")
    size = job.get("size", "auto")
    if size != "auto":
        m = re.fullmatch(r"([1-9][0-9]*)x([1-9][0-9]*)", str(size))
        if not m:
            problems.append(f"size {size!r} is not 'auto' or WxH")
        elif int(m.group(1)) % 16 or int(m.group(2)) % 16:
            problems.append(f"size {size!r} is not a multiple of 16")
    if job.get("quality", "auto") not in QUALITIES:
        problems.append(f"bad quality {job.get('quality')!r}")
    n = job.get("num_images", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        problems.append(f"bad num_images {n!r}")
    if job.get("output_format", "png") not in OUTPUT_FORMATS:
        problems.append(f"bad output_format {job.get('output_format')!r}")
    if job.get("background", "auto") not in BACKGROUNDS:
        problems.append(f"bad background {job.get('background')!r}")
    if job.get("priority", "bulk") not in PRIORITIES:
        problems.append(f"bad priority {job.get('priority')!r}")
    metadata = job.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        problems.append("metadata must be an object")
    for field in ("provider", "model"):
        if field in job and (not isinstance(job[field], str) or not job[field]):
            problems.append(f"{field} must be a non-empty string when given")
    return problems


def expanded(line: dict[str, Any]) -> list[dict[str, Any]]:
    """A line's jobs, expanded here without the editq package: each override applied to the line, N copies for a
    number of samples, one job per provider under `compare`."""
    base = {k: v for k, v in line.items() if k not in ("variants", "compare")}
    spec = line.get("variants")
    overrides = [{}] * spec if isinstance(spec, int) else [
        {k: v for k, v in o.items() if k != "label"} for o in (spec or [{}])]
    return [{**base, **o, **({"provider": p} if p else {})} for o in overrides for p in line.get("compare") or [None]]


def line_problems(line: dict[str, Any]) -> list[str]:
    return sorted({p for job in expanded(line) for p in job_problems(job)})


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------


def test_committed_images_equal_a_fresh_generate(fresh: list[Path]) -> None:
    names = [p.name for p in fresh]
    assert len(names) == len(set(names))
    committed = {p.name for p in EXAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    assert committed == set(names), "examples/ images and make_samples.generate() disagree on the file list"
    stale = [
        name for name in names if (EXAMPLES / name).read_bytes() != (fresh[names.index(name)]).read_bytes()
    ]
    assert not stale, f"regenerate with `python examples/make_samples.py`: {stale} differ from the generator"


def test_committed_pixels_equal_a_fresh_generate(fresh: list[Path]) -> None:
    # Separate from the byte test so an encoder-only difference is easy to tell apart.
    for path in fresh:
        with Image.open(path) as new, Image.open(EXAMPLES / path.name) as old:
            assert (new.size, new.mode) == (old.size, old.mode), path.name
            assert ImageChops.difference(new, old).getbbox() is None, f"{path.name}: pixels differ"


def test_generate_is_deterministic(fresh: list[Path], tmp_path: Path) -> None:
    again = make_samples.generate(tmp_path)
    assert [p.name for p in again] == [p.name for p in fresh]
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in fresh]


def test_sample_photos() -> None:
    photos = [
        p for p in EXAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("mask_")
    ]
    assert 4 <= len(photos) <= 5
    for path in photos:
        with Image.open(path) as img:
            assert img.format in ("PNG", "JPEG"), path.name
            assert img.size in ((512, 512), (768, 512)), f"{path.name} is {img.size}"
            assert img.mode == "RGB", path.name
            # not a flat fill: a drawn product on a backdrop has many colours
            assert len(img.getcolors(maxcolors=1 << 20) or []) > 500, f"{path.name} looks blank"
        assert path.stat().st_size < 200_000, f"{path.name} should stay small"
    with Image.open(EXAMPLES / "sneaker.jpg") as jpeg:
        assert (jpeg.format, jpeg.size) == ("JPEG", (768, 512))


def test_mug_mask_follows_openai_convention() -> None:
    with Image.open(EXAMPLES / "mug.png") as photo, Image.open(EXAMPLES / "mask_mug.png") as mask:
        assert mask.format == "PNG" and mask.mode == "RGBA"
        assert mask.size == photo.size
        histogram = mask.getchannel("A").histogram()
        assert histogram[0] > 0 and histogram[255] > 0, "alpha needs 0 (edit) and 255 (keep) areas"
        assert sum(histogram[1:255]) == 0, "alpha must be strictly 0 or 255"
        # the editable area covers the label, and most of the photo is kept
        x0, y0, x1, y1 = make_samples.MUG_LABEL_BOX
        assert mask.getchannel("A").crop((x0, y0, x1 + 1, y1 + 1)).getextrema() == (0, 0)
        assert histogram[255] > histogram[0]


def test_make_samples_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_samples.main(["--dest", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(p.name for p in tmp_path.iterdir())


# --------------------------------------------------------------------------
# batch.jsonl
# --------------------------------------------------------------------------


def test_batch_has_enough_jobs(jobs: list[dict[str, Any]]) -> None:
    assert len(jobs) >= 12 and sum(len(expanded(line)) for line in jobs) >= 24


def test_exactly_one_deliberately_invalid_line_in_the_middle(jobs: list[dict[str, Any]]) -> None:
    invalid = {i: line_problems(job) for i, job in enumerate(jobs, 1) if line_problems(job)}
    assert len(invalid) == 1, f"expected exactly one invalid line, got {invalid}"
    ((line, problems),) = invalid.items()
    assert 1 < line < len(jobs), f"the invalid line ({line}) must be neither first nor last"
    assert all(p == "empty prompt" or p.endswith("is not a multiple of 16") for p in problems), problems


def test_custom_ids_unique(jobs: list[dict[str, Any]]) -> None:
    ids = [job["custom_id"] for job in jobs]
    assert len(ids) == len(set(ids))


def test_mask_line(jobs: list[dict[str, Any]]) -> None:
    masked = [job for job in jobs if "mask" in job]
    assert len(masked) == 1
    job = masked[0]
    assert "compare" not in job  # Replicate and WaveSpeed take no mask
    assert job["size"] == "auto" and job["output_format"] == "png"
    assert len(job["images"]) == 1
    with Image.open(EXAMPLES / job["images"][0]) as img, Image.open(EXAMPLES / job["mask"]) as mask:
        assert mask.size == img.size
        assert mask.mode == "RGBA"
        low, high = mask.getchannel("A").getextrema()
        assert (low, high) == (0, 255)


def test_multi_reference_line(jobs: list[dict[str, Any]]) -> None:
    multi = [job for job in jobs if len(job["images"]) == 3]
    assert len(multi) == 1
    assert len(set(multi[0]["images"])) == 3


def test_ab_variants(jobs: list[dict[str, Any]]) -> None:
    """Several lines with labelled variants (each different), one N-samples line, one compared on 3 providers."""
    for job in jobs:
        assert job["metadata"].get("sku"), job["custom_id"]
    listed = [job for job in jobs if isinstance(job.get("variants"), list)]
    assert len(listed) >= 5
    for job in listed:
        labels = [v["label"] for v in job["variants"]]
        assert len(labels) >= 2 and len(set(labels)) == len(labels), job["custom_id"]
        variants = [json.dumps(v, sort_keys=True) for v in expanded(job)]
        assert len(set(variants)) == len(variants), f"{job['custom_id']}: variants must differ"
    assert any(isinstance(job.get("variants"), int) and job["variants"] >= 2 for job in jobs)
    assert [set(job["compare"]) for job in jobs if "compare" in job] == [COMPARED]
    by_sku: dict[str, int] = defaultdict(int)
    for job in jobs:
        by_sku[job["metadata"]["sku"]] += 1
    assert sum(n >= 2 for n in by_sku.values()) >= 3, "several SKUs need more than one line"


def test_feature_coverage(lines: list[dict[str, Any]]) -> None:
    jobs = [job for line in lines for job in expanded(line)]
    formats = {job.get("output_format", "png") for job in jobs}
    assert {"png", "jpeg", "webp"} <= formats
    assert any(job.get("num_images") == 2 for job in jobs)
    quoted = [job for job in jobs if re.search(r'"[^"]+"', job.get("prompt", ""))]
    assert len(quoted) >= 2, "a couple of prompts should ask for quoted text"
    assert {job.get("priority") for job in jobs} == PRIORITIES
    # keep the demo fast: mostly auto or ~1 MP outputs
    small = [job for job in jobs if job.get("size", "auto") == "auto" or _pixels(job["size"]) <= 1536 * 1024]
    assert len(small) == len(jobs)
    for job in jobs:
        assert job.get("provider", "fal") in COMPARED
        assert job.get("model", "openai/gpt-image-2/edit") == "openai/gpt-image-2/edit"


def _pixels(size: str) -> int:
    w, h = (int(v) for v in size.split("x"))
    return w * h


def test_job_problems_detects_each_rule() -> None:
    good = {
        "custom_id": "mug-001-a",
        "prompt": "x",
        "images": ["mug.png"],
        "size": "1024x1024",
        "quality": "low",
        "num_images": 1,
        "output_format": "png",
        "background": "auto",
        "priority": "bulk",
        "metadata": {"sku": "s", "variant": "A"},
    }
    assert job_problems(good) == []
    for change in (
        {"prompt": "   "},
        {"size": "1000x1000"},
        {"size": "big"},
        {"images": []},
        {"images": ["nope.png"]},
        {"mask": "missing.png"},
        {"quality": "ultra"},
        {"output_format": "gif"},
        {"background": "green"},
        {"priority": "urgent"},
        {"num_images": 0},
        {"custom_id": ""},
        {"colour": "red"},
    ):
        assert job_problems({**good, **change}), change
