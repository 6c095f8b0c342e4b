"""fal's contract cases (providers/cases.py)."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"quality": "low"},
        {"size": "1024x768", "num_images": 2, "output_format": "jpeg"},
        {"size": "1040x1040", "quality": "high", "priority": "interactive"},
        {"background": "opaque", "output_format": "webp"},
    ],
    refused=[
        ({"num_images": 5}, "num_images=5 is not allowed"),
        ({"size": "640x640"}, "size=640x640 is not allowed"),
        ({"background": "transparent"}, "background=transparent is not supported"),
    ],
    cancels=True,
)
