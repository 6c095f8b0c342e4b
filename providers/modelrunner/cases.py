"""ModelRunner's contract cases (see providers/cases.py): fal's input rules for gpt-image-2 edit, by assumption."""

from __future__ import annotations

from editq.providers.cases import Cases

CASES = Cases(
    accepted=[
        {"quality": "low", "num_images": 1, "output_format": "png"},
        {"quality": "auto", "num_images": 2, "output_format": "jpeg", "size": "1024x768", "priority": "interactive"},
        {"quality": "medium", "size": "1536x1024", "output_format": "webp"},
    ],
    refused=[
        ({"num_images": 5}, "num_images=5 is not allowed; allowed values: 1 to 4"),
        ({"size": "3840x3840"}, "size=3840x3840 is not allowed"),
        ({"size": "640x640"}, "total pixels must be between 655,360 and 8,294,400"),
        ({"size": "3840x1024"}, "the aspect ratio must be between 1:3 and 3:1"),
        ({"background": "transparent"}, "background=transparent is not supported"),
    ],
)
