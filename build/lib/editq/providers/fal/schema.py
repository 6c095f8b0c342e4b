"""fal's input schema for `openai/gpt-image-2/edit` as editq sends it (ModelRunner assumes the same fields)."""

from __future__ import annotations

from typing import Any

from editq.providers.types import InputUrls
from editq.schemas.job import EditJob
from editq.schemas.params import parse_size, size_problems

PRESETS: dict[tuple[int, int], str] = {
    (1024, 1024): "square_hd",
    (512, 512): "square",
    (768, 1024): "portrait_4_3",
    (576, 1024): "portrait_16_9",
    (1024, 768): "landscape_4_3",
    (1024, 576): "landscape_16_9",
}
QUALITIES = ("auto", "low", "medium", "high")
MAX_NUM_IMAGES = 4


def size_problem(provider: str, size: str) -> str | None:
    """The refusal of a size that is neither `auto`, a preset nor a custom size within GPT Image 2's rules
    (fal's rules; ModelRunner's too); None when the size is fine."""
    dims = parse_size(size)
    if dims is None or dims in PRESETS:
        return None
    bad = size_problems(*dims)
    if not bad:
        return None
    presets = ", ".join(f"{w}x{h}" for w, h in PRESETS)
    return (f"{provider}: size={size} is not allowed ({'; '.join(bad)}); allowed values: auto, {presets}, "
            "or a custom WxH within those rules")


def image_size(size: str) -> str | dict[str, int]:
    """Canonical size -> fal's `image_size`: `auto`, a preset name, or `{width, height}`."""
    dims = parse_size(size)
    if dims is None:
        return "auto"
    return PRESETS.get(dims) or {"width": dims[0], "height": dims[1]}


def edit_input(job: EditJob, inputs: InputUrls) -> dict[str, Any]:
    """Canonical job -> the input of fal's `openai/gpt-image-2/edit`."""
    body: dict[str, Any] = {
        "prompt": job.prompt,
        "image_urls": list(inputs.images),
        "image_size": image_size(job.size),
        "quality": job.quality.value,
        "num_images": job.num_images,
        "output_format": job.output_format.value,
    }
    if inputs.mask:
        body["mask_url"] = inputs.mask
    return body
