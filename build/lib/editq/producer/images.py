"""Decode an input image in full at enqueue time, within a pixel budget (pure: bytes in, facts out).

The header says what an image claims to be; only decoding it shows the bytes hold it. A truncated or
corrupt file is refused here instead of by the provider after it was paid for, and an image whose
header announces more pixels than the cap (a decompression bomb: a few KB that inflate to gigabytes)
is refused before anything is decoded."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from editq.providers.masks import alpha_problem
from editq.worker.storage import Probe

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}


class ImageProblem(ValueError):
    pass


@dataclass(frozen=True)
class Decoded:
    probe: Probe
    mode: str
    info: dict[str, Any]

    @property
    def mask_problem(self) -> str | None:
        """Why this image cannot be a mask (providers/masks.py), or None."""
        return alpha_problem(self.probe.format, self.mode, self.info)


def decode(data: bytes, max_pixels: int) -> Decoded:
    """Identify by the bytes, check the pixel count from the header, then decode every pixel.
    Raises ImageProblem with a reason that reads after the reference ("x.png is ...")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides, below
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ImageProblem(f"larger than {max_pixels:,} pixels (a decompression bomb?)") from None
        except Exception as exc:  # PIL raises several types for non-images
            raise ImageProblem(f"not a readable image ({type(exc).__name__})") from None
        with im:
            fmt, (w, h), mode = im.format or "", im.size, im.mode
            if fmt not in ALLOWED_FORMATS:
                raise ImageProblem(f"{fmt or 'an unknown format'}; allowed formats: PNG, JPEG, WebP")
            if w * h > max_pixels:
                raise ImageProblem(f"{w}x{h} = {w * h:,} pixels; at most {max_pixels:,} are decoded")
            try:
                im.load()
            except Exception as exc:
                reason = str(exc).split(" (", 1)[0] or type(exc).__name__
                raise ImageProblem(f"truncated or corrupt ({reason})") from None
            info = {k: v for k, v in im.info.items() if k == "transparency"}
    return Decoded(Probe(fmt, w, h), mode, info)
