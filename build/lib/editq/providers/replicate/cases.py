"""Contract cases for Replicate (see providers/cases.py): the job fields it takes and the ones it refuses."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"size": "1024x1024", "quality": "low", "output_format": "jpeg"},
        {"size": "auto"},
        {"size": "1536x1024", "background": "opaque", "output_format": "webp"},
        {"size": "1024x1536", "quality": "high", "model": "openai/gpt-image-2"},
    ],
    refused=[
        ({"mask": "mask.png"}, "mask is not supported"),
        ({"num_images": 2}, "num_images=2 is not allowed"),
        ({"size": "2048x2048"}, "size=2048x2048 is not allowed"),
        ({"background": "transparent"}, "background=transparent is not allowed"),
        ({"model": "black-forest-labs/flux-kontext"}, "model=black-forest-labs/flux-kontext is not available"),
    ],
)
