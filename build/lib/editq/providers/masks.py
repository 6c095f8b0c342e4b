"""The canonical mask: a PNG with an alpha channel (transparent = area to edit). One rule, used twice: by
the producer, which decodes every mask at enqueue and refuses one without alpha for every provider (each
provider that takes a mask reads its transparency), and by the providers that send the mask's bytes
themselves (OpenAI, Oxen), as a last check on what they are about to send."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

ALLOWED = "a png with an alpha channel (RGBA or LA)"


def alpha_problem(fmt: str | None, mode: str, info: Mapping[Any, Any]) -> str | None:
    """Why an image of this format, mode and info is not a usable mask, or None (pure)."""
    if fmt != "PNG":
        return f"mask is {fmt}; allowed format: png (with an alpha channel)"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in info):
        return None
    return f"mask has no alpha channel (mode {mode}); allowed: {ALLOWED}"


def mask_alpha_problem(mask: bytes, provider: str) -> str | None:
    """Checks the mask bytes themselves: a PNG with an alpha channel.

    Returns a message, or None when the mask is fine. Uses Pillow; decodes only the header and mode.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(mask)) as im:
            fmt, mode, info = im.format, im.mode, im.info
    except Exception:
        return f"{provider}: mask is not a readable image; allowed: a png with an alpha channel"
    problem = alpha_problem(fmt, mode, info)
    return f"{provider}: {problem}" if problem else None
