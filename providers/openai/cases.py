"""Contract cases for `openai` (providers/cases.py): what it takes, and OpenAI's refusal rules."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"quality": "low"},
        {"size": "1536x1024", "num_images": 2, "output_format": "jpeg"},
        {"model": "gpt-image-2", "background": "opaque", "output_format": "webp"},
    ],
    refused=[
        ({"background": "transparent"}, "background=transparent is not allowed for gpt-image-2"),
        ({"model": "dall-e-2"}, "model=dall-e-2 is not allowed"),
    ],
)
