"""WaveSpeed's contract cases (see providers/cases.py): what it takes, and what it refuses at enqueue."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"quality": "low", "size": "1536x1024", "output_format": "jpeg"},
        {"quality": "medium"},  # size auto: resolution 1k, WaveSpeed follows the input's aspect ratio
        {"quality": "high", "size": "2048x2048", "output_format": "png", "background": "opaque"},
    ],
    refused=[
        ({"mask": "mask_mug.png"}, "mask is not supported by openai/gpt-image-2/edit on WaveSpeed"),
        ({"num_images": 2}, "num_images=2 is not allowed; allowed values: 1"),
        ({"size": "1536x864"}, "size=1536x864 is not allowed"),
        ({"quality": "auto"}, "quality=auto is not allowed; allowed values: low, medium, high"),
        ({"background": "transparent"}, "background=transparent is not supported"),
        ({"model": "openai/gpt-image-1"}, "model=openai/gpt-image-1 is not supported"),
    ],
)
