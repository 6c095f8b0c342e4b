"""Contract cases for `openai_batch` (providers/cases.py): the same edit rules as `openai`, in JSONL lines."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"quality": "low"},
        {"size": "1024x1536", "num_images": 2, "output_format": "jpeg"},
    ],
    refused=[
        ({"background": "transparent"}, "background=transparent is not allowed for gpt-image-2"),
        ({"model": "openai/gpt-image-1/edit"}, "model=openai/gpt-image-1/edit is not allowed"),
    ],
    env={"EDITQ_OPENAI_BATCH_STATUS_TTL_S": "0.2"},
)
