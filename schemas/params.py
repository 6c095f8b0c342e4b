"""Edit parameters: the canonical vocabulary every provider adapter translates from."""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from typing import Annotated

from pydantic import AfterValidator


class Quality(StrEnum):
    auto = "auto"
    low = "low"
    medium = "medium"
    high = "high"


class OutputFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"

    @property
    def ext(self) -> str:
        return "jpg" if self is OutputFormat.jpeg else self.value


class Background(StrEnum):
    auto = "auto"
    opaque = "opaque"
    transparent = "transparent"


class Lane(StrEnum):
    """Priority lane. `interactive` is always served ahead of `bulk`."""

    interactive = "interactive"
    bulk = "bulk"


_SIZE_RE = re.compile(r"^(\d{2,5})x(\d{2,5})$")

# GPT Image 2 custom-size rules (see shared/reference/provider-openai.md §1.1).
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
MAX_EDGE = 3840
MAX_ASPECT = 3.0


@lru_cache(maxsize=1024)  # (a batch has a few sizes; each line's is parsed by the request, its rules and its price)
def parse_size(value: str) -> tuple[int, int] | None:
    """Return (width, height) for a `WxH` size, None for `auto`; raise ValueError otherwise."""
    if value == "auto":
        return None
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"size must be 'auto' or 'WIDTHxHEIGHT' (e.g. '1024x1024'), got {value!r}")
    return int(m.group(1)), int(m.group(2))


def size_problems(width: int, height: int) -> list[str]:
    """The GPT Image 2 rules a custom size breaks (empty when it is valid)."""
    problems = []
    if width % 16 or height % 16:
        problems.append("both sides must be multiples of 16")
    if max(width, height) > MAX_EDGE:
        problems.append(f"the longest edge must be at most {MAX_EDGE}px")
    if max(width, height) > MAX_ASPECT * min(width, height):
        problems.append("the aspect ratio must be between 1:3 and 3:1")
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        problems.append(f"total pixels must be between {MIN_PIXELS:,} and {MAX_PIXELS:,}")
    return problems


def _check_size(value: str) -> str:
    """Canonical rule only (WxH, multiples of 16, edges 16..3840); providers add their own at enqueue."""
    dims = parse_size(value)
    if dims is not None:
        w, h = dims
        if w % 16 or h % 16 or not (16 <= w <= MAX_EDGE and 16 <= h <= MAX_EDGE):
            raise ValueError(
                f"size {value!r} is not allowed: both sides must be multiples of 16 between 16 and {MAX_EDGE}"
            )
    return value


Size = Annotated[str, AfterValidator(_check_size)]
