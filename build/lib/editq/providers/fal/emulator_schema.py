"""Input schema of fal's ``openai/gpt-image-2/edit``, the sizes it renders, and fal-shaped 422 bodies.

Sources: shared/reference/provider-fal-and-modelrunner.md section 5 (fal-js ``GptImage2EditInput``
and ``GptImage2Input`` types [C]; the custom-size rules are [C] for text-to-image, [I] for edit).

Types are checked as the published schema states them, not as a lax parser would coerce them:
``num_images`` must be a JSON integer (``"2"``, ``true`` and ``2.5`` are refused; ``2.0`` is accepted,
because JSON Schema counts a number with no fractional part as an integer), ``sync_mode`` a JSON
boolean (``"true"``, ``1`` refused), ``prompt``/``image_urls`` strings, ``image_size`` a preset name or
``{width, height}`` with integer members.  Explicit ``null`` is accepted only for ``mask_url`` (an
optional field with no default: fal's pydantic app declares it ``Optional``, the TS types mark it
optional; the sandbox accepts what either accepts) and refused for every field that has a
non-null default (``image_size``, ``quality``, ``num_images``, ``output_format``, ``sync_mode``) and
for the required ``prompt`` and ``image_urls``.  Omitted fields take fal's documented defaults:
``image_size="auto"``, ``quality="high"``, ``num_images=1``, ``output_format="png"``,
``sync_mode=false``.  Unknown fields are ignored (as fal's pydantic models do) but kept in the
request log.

Sizes (:func:`output_size`): GPT Image 2 renders only sizes whose edges are multiples of 16, longest
edge <= 3840, aspect <= 3:1, 655,360..8,294,400 pixels.  A custom ``{width, height}`` outside those
rules is refused with a 422.  fal's preset names keep fal's generic meanings (``square_hd``
1024x1024, ``square`` 512x512, ``portrait_4_3`` 768x1024, ``portrait_16_9`` 576x1024,
``landscape_4_3`` 1024x768, ``landscape_16_9`` 1024x576), but ``square`` (262,144 px) and the two
16:9 presets (589,824 px) are below the pixel minimum, and ``"auto"`` follows the first input image,
which may be any size.  No source says what fal renders then; the sandbox renders the preset's (or
the first input's) size fitted into the limits: the aspect ratio clamped to 3:1, scaled by the
smallest factor that brings the pixel count into range (and the longest edge to <= 3840), each edge
then rounded to a multiple of 16, choosing among the rounded-down/up neighbours the valid one
closest in aspect ratio, then in pixel count.  So ``square`` renders 816x816, ``portrait_16_9``
608x1088, ``landscape_16_9`` 1088x608, the in-range presets render as named, and ``"auto"`` on a
512x512 input renders 816x816 (a 1536x1024 input stays 1536x1024).  The output's ``width``/``height``
are the rendered bytes' dimensions.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
MIN_PIXELS = 655_360
MAX_PIXELS = 8_294_400
MAX_EDGE = 3840
MAX_ASPECT = 3.0


def _integral_float(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``2.0``; pydantic's strict int does not."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[StrictInt, BeforeValidator(_integral_float)]


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="ignore")

    width: int
    height: int


def check_custom_size(width: int, height: int) -> None:
    """fal's custom-size rules for GPT Image 2; raises ValueError with the first broken rule."""
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if width % 16 or height % 16:
        raise ValueError("width and height must be multiples of 16")
    if max(width, height) > MAX_EDGE:
        raise ValueError(f"the longest edge must be at most {MAX_EDGE} pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise ValueError("the aspect ratio (long edge / short edge) must be at most 3:1")
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        raise ValueError(f"the total number of pixels must be between {MIN_PIXELS:,} and {MAX_PIXELS:,}")


class GptImage2EditInput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: StrictStr = Field(min_length=1)
    image_urls: list[StrictStr] = Field(min_length=1, max_length=16)
    image_size: str | ImageSize = "auto"
    quality: Literal["auto", "low", "medium", "high"] = "high"
    num_images: JsonInt = Field(default=1, ge=1, le=4)
    output_format: Literal["jpeg", "png", "webp"] = "png"
    sync_mode: StrictBool = False
    mask_url: StrictStr | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be empty")
        return value

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value == "auto" or value in IMAGE_SIZE_PRESETS:
                return value
            names = ", ".join(["auto", *IMAGE_SIZE_PRESETS])
            raise ValueError(f"image_size must be one of {names} or an object with width and height")
        if isinstance(value, ImageSize):
            value = value.model_dump()
        if isinstance(value, dict):
            width, height = _integral_float(value.get("width")), _integral_float(value.get("height"))
            if not (type(width) is int and type(height) is int):
                raise ValueError("image_size.width and image_size.height must be integers")
            check_custom_size(width, height)
            return ImageSize(width=width, height=height)
        raise ValueError("image_size must be a preset name or an object with width and height")

    def target_size(self) -> tuple[int, int] | None:
        """The requested size as named: None for "auto", a preset's nominal size (ModelRunner's emulator
        uses this unchanged); fal's emulator renders :meth:`output_size`."""
        if isinstance(self.image_size, ImageSize):
            return (self.image_size.width, self.image_size.height)
        if self.image_size == "auto":
            return None
        return IMAGE_SIZE_PRESETS[self.image_size]

    def output_size(self, first_input: tuple[int, int]) -> tuple[int, int]:
        """What GPT Image 2 renders for this request, given the first input image's (width, height)."""
        return output_size(self.target_size() or first_input)


def size_problem(width: int, height: int) -> str | None:
    try:
        check_custom_size(width, height)
    except ValueError as exc:
        return str(exc)
    return None


def output_size(requested: tuple[int, int]) -> tuple[int, int]:
    """``requested`` fitted into GPT Image 2's limits (see the module docstring); unchanged when valid."""
    width, height = requested
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    if size_problem(width, height) is None:
        return (width, height)
    ratio = min(max(width / height, 1 / MAX_ASPECT), MAX_ASPECT)
    pixels = min(max(width * height, MIN_PIXELS), MAX_PIXELS)
    ideal_h = math.sqrt(pixels / ratio)
    ideal_w = ideal_h * ratio
    edge_scale = min(1.0, MAX_EDGE / max(ideal_w, ideal_h))
    ideal_w, ideal_h = ideal_w * edge_scale, ideal_h * edge_scale
    target = ideal_w * ideal_h
    for reach in range(1, 8):  # neighbours on the 16-pixel grid, widening until one is valid
        candidates = [
            (w, h)
            for w in _grid_neighbours(ideal_w, reach)
            for h in _grid_neighbours(ideal_h, reach)
            if size_problem(w, h) is None
        ]
        if candidates:
            return min(candidates, key=lambda c: (round(abs(math.log(c[0] / c[1] / ratio)), 6),
                                                  abs(c[0] * c[1] - target)))
    raise ValueError(f"no valid size near {width}x{height}")  # unreachable for positive sizes


def _grid_neighbours(value: float, reach: int) -> list[int]:
    low = math.floor(value / 16)
    steps = range(low - reach + 1, low + reach + 1)
    return [16 * s for s in steps if 16 <= 16 * s <= MAX_EDGE]


def error_detail(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as fal's ``detail`` list (``loc`` prefixed with ``"body"``)."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: list[str | int] = ["body", *err["loc"]]
        details.append(error_detail(loc, err["msg"], err["type"]))
    return details
