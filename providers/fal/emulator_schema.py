"""Input schema of fal's ``openai/gpt-image-2/edit`` and fal-shaped 422 error bodies.

Unknown fields are ignored (as a pydantic model with default settings on fal would), but kept in
the request log.  Image-size presets are the sandbox's mapping of fal's documented preset names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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

    prompt: str = Field(min_length=1)
    image_urls: list[str] = Field(min_length=1, max_length=16)
    image_size: str | ImageSize = "auto"
    quality: Literal["auto", "low", "medium", "high"] = "high"
    num_images: int = Field(default=1, ge=1, le=4)
    output_format: Literal["jpeg", "png", "webp"] = "png"
    sync_mode: bool = False
    mask_url: str | None = None

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
            width, height = value.get("width"), value.get("height")
            if not (type(width) is int and type(height) is int):
                raise ValueError("image_size.width and image_size.height must be integers")
            check_custom_size(width, height)
            return ImageSize(width=width, height=height)
        raise ValueError("image_size must be a preset name or an object with width and height")

    def target_size(self) -> tuple[int, int] | None:
        """None for "auto" (the first input's size)."""
        if isinstance(self.image_size, ImageSize):
            return (self.image_size.width, self.image_size.height)
        if self.image_size == "auto":
            return None
        return IMAGE_SIZE_PRESETS[self.image_size]


def error_detail(loc: list[str | int], msg: str, type_: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": type_}


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors as fal's ``detail`` list (``loc`` prefixed with ``"body"``)."""
    details = []
    for err in exc.errors(include_url=False, include_input=False):
        loc: list[str | int] = ["body", *err["loc"]]
        details.append(error_detail(loc, err["msg"], err["type"]))
    return details
