"""The canonical mask, checked in its bytes by the providers that send it (OpenAI, Oxen): a PNG with an
alpha channel (transparent = area to edit). Whether it has one cannot be known from its enqueue record."""

from __future__ import annotations

import io


def mask_alpha_problem(mask: bytes, provider: str) -> str | None:
    """Checks the mask bytes themselves (not knowable at enqueue): a PNG with an alpha channel.

    Returns a message, or None when the mask is fine. Uses Pillow; decodes only the header and mode.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(mask)) as im:
            fmt, mode, info = im.format, im.mode, im.info
    except Exception:
        return f"{provider}: mask is not a readable image; allowed: a png with an alpha channel"
    if fmt != "PNG":
        return f"{provider}: mask is {fmt}; allowed format: png (with an alpha channel)"
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in info):
        return None
    return f"{provider}: mask has no alpha channel (mode {mode}); allowed: a png with an alpha channel (RGBA or LA)"
