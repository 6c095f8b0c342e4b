"""Oxen's contract cases (see providers/cases.py): what it takes, and what it refuses at enqueue."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"quality": "low"},  # aspect_ratio auto, tier EDITQ_OXEN_RESOLUTION (1K)
        {"quality": "medium", "output_format": "jpeg"},
        {"quality": "high", "output_format": "webp", "background": "opaque"},
    ],
    refused=[
        ({"num_images": 2}, "num_images=2 is not allowed; allowed values: 1"),
        ({"size": "1536x1024"}, "size=1536x1024 is not allowed; allowed values: auto"),
        ({"quality": "auto"}, "quality=auto is not allowed; allowed values: low, medium, high"),
        ({"background": "transparent"}, "background=transparent is not allowed"),
        ({"model": "flux-2-dev"}, "model=flux-2-dev is not allowed"),
    ],
)
