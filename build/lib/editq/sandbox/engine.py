"""The sandbox image editor: deterministic, Pillow-only, pure functions.

``render_edit`` really edits: it starts from the first image (resized to the target size), applies
prompt-driven operations (keywords such as "black and white", "sepia", "invert", "blur", "mirror",
"brighter"...), a prompt-derived colour grade and line pattern, composites the other reference
images in as insets, and draws any text quoted in the prompt.  Variant ``k`` of ``num_images``
shifts the grade and the pattern.  With a mask (OpenAI convention: alpha 0 = editable; without an
alpha channel, luminance >= 128 = editable) every other pixel is copied unchanged from the
(resized) first image; PNG and WebP outputs are then lossless, so those pixels are byte-identical.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

OutputFormat = Literal["png", "jpeg", "webp"]

CONTENT_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS: dict[str, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
_QUALITY: dict[str, int] = {"low": 70, "medium": 82, "high": 92, "auto": 88}
MAX_EDGE = 3840


class EngineError(ValueError):
    """An input the model cannot process.  ``kind`` follows fal's error-type vocabulary."""

    def __init__(self, message: str, *, kind: str = "image_load_error", index: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.index = index  # which input image (None: the mask or the request as a whole)


@dataclass(frozen=True)
class RenderedImage:
    data: bytes
    width: int
    height: int
    format: str

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


# --------------------------------------------------------------------------------------------------
# bytes helpers


def sniff_image_type(data: bytes) -> str | None:
    """Image type from magic bytes, or None if the bytes are not a known image format."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"BM") and len(data) > 26:
        return "bmp"
    if len(data) >= 12 and data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    return None


def load_image(data: bytes, *, index: int | None = None) -> Image.Image:
    """Decode fully (so truncated files fail here, not later)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # Pillow raises many types
        raise EngineError(f"Failed to load the image: {exc}", kind="image_load_error", index=index) from exc
    return image


def image_dimensions(data: bytes, *, index: int | None = None) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception as exc:
        raise EngineError(f"Failed to load the image: {exc}", kind="image_load_error", index=index) from exc


def resolve_size(first_size: tuple[int, int], size: tuple[int, int] | str | None) -> tuple[int, int]:
    if size is None or size == "auto":
        return first_size
    if isinstance(size, str):
        raise EngineError(f"unsupported size {size!r}", kind="invalid_size")
    width, height = size
    if not (0 < width <= MAX_EDGE and 0 < height <= MAX_EDGE):
        raise EngineError(f"unsupported size {width}x{height}", kind="invalid_size")
    return (int(width), int(height))


def encode(image: Image.Image, output_format: str, *, quality: str = "auto", lossless: bool = False) -> bytes:
    fmt = normalize_format(output_format)
    buf = io.BytesIO()
    if fmt == "jpeg":
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.save(buf, format="JPEG", quality=_QUALITY.get(quality, 88))
    elif fmt == "webp":
        if lossless:
            image.save(buf, format="WEBP", lossless=True, quality=80, method=2, exact=True)
        else:
            image.save(buf, format="WEBP", quality=_QUALITY.get(quality, 88), method=2)
    else:
        image.save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def normalize_format(output_format: str) -> OutputFormat:
    fmt = output_format.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt == "png":
        return "png"
    if fmt == "jpeg":
        return "jpeg"
    if fmt == "webp":
        return "webp"
    raise EngineError(f"unsupported output format {output_format!r}", kind="invalid_format")


# --------------------------------------------------------------------------------------------------
# prompt analysis

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "gold": (212, 175, 55),
    "green": (40, 180, 70),
    "teal": (0, 150, 140),
    "cyan": (30, 200, 220),
    "blue": (40, 90, 220),
    "navy": (20, 30, 110),
    "purple": (130, 50, 190),
    "violet": (150, 90, 220),
    "magenta": (210, 40, 170),
    "pink": (240, 120, 170),
    "brown": (130, 80, 40),
}

_OPS: dict[str, tuple[str, ...]] = {
    "grayscale": ("black and white", "grayscale", "greyscale", "monochrome", "b&w"),
    "sepia": ("sepia", "vintage", "old photo", "retro"),
    "invert": ("invert", "negative"),
    "blur": ("blur", "blurry", "soft focus", "dreamy", "bokeh"),
    "sharpen": ("sharpen", "crisp", "sharper"),
    "mirror": ("mirror", "flip horizontally"),
    "flip": ("upside down", "flip vertically"),
    "brighten": ("brighter", "brighten", "lighter", "sunny", "daylight"),
    "darken": ("darker", "darken", "night", "moody"),
    "contrast": ("contrast", "punchy", "vivid"),
    "posterize": ("posterize", "poster", "cartoon", "comic"),
}

_QUOTED = re.compile(
    r"\"([^\"]+)\"|(?<![\w'])'([^']+)'(?![\w'])|\u201c([^\u201d]+)\u201d|\u2018([^\u2019]+)\u2019"
)


@dataclass(frozen=True)
class EditPlan:
    tint: tuple[int, int, int]
    tint_strength: float
    ops: tuple[str, ...]
    texts: tuple[str, ...]
    pattern_kind: int  # 0: "/" lines, 1: "\" lines, 2: grid
    pattern_spacing: int
    pattern_phase: int
    pattern_colour: tuple[int, int, int]


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(phrase) + r"(?![\w])", text) is not None


def plan_edit(prompt: str, variant: int = 0) -> EditPlan:
    """What ``render_edit`` will do for ``prompt`` and variant index ``variant``."""
    lowered = prompt.lower()
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    ops = tuple(op for op, phrases in _OPS.items() if any(_has_phrase(lowered, p) for p in phrases))
    named = [(lowered.find(word), rgb) for word, rgb in _COLOURS.items() if _has_phrase(lowered, word)]
    if named:
        base_rgb = min(named)[1]
        hue, light, sat = colorsys.rgb_to_hls(*(c / 255 for c in base_rgb))
    else:
        hue, light, sat = digest[0] / 255, 0.45 + digest[1] / 255 * 0.15, 0.55 + digest[2] / 255 * 0.4
    hue = (hue + variant * 0.11) % 1.0
    tint = tuple(round(c * 255) for c in colorsys.hls_to_rgb(hue, light, sat))
    comp = tuple(round(c * 255) for c in colorsys.hls_to_rgb((hue + 0.5) % 1.0, 0.5, 0.8))
    texts = tuple(next(g for g in m.groups() if g).strip() for m in _QUOTED.finditer(prompt))
    spacing = 24 + digest[3] % 40
    return EditPlan(
        tint=(tint[0], tint[1], tint[2]),
        tint_strength=0.22 + (digest[4] % 10) / 100 + 0.05 * variant,
        ops=ops,
        texts=tuple(t for t in texts if t),
        pattern_kind=digest[5] % 3,
        pattern_spacing=spacing,
        pattern_phase=(digest[6] + variant * (spacing // 3 + 1)) % spacing,
        pattern_colour=(comp[0], comp[1], comp[2]),
    )


# --------------------------------------------------------------------------------------------------
# rendering


def _working_mode(image: Image.Image) -> str:
    return "RGBA" if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data else "RGB"


def editable_mask(mask: bytes, expected_size: tuple[int, int]) -> Image.Image:
    """L image, 255 where editable.  Alpha 0 = editable; no alpha channel: luminance >= 128."""
    image = load_image(mask)
    if image.size != expected_size:
        raise EngineError(
            f"The mask ({image.size[0]}x{image.size[1]}) must have the same dimensions as the first "
            f"image ({expected_size[0]}x{expected_size[1]}).",
            kind="image_size_mismatch",
        )
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or image.has_transparency_data:
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a == 0 else 0)
    return image.convert("L").point(lambda v: 255 if v >= 128 else 0)


def _apply_ops(image: Image.Image, ops: Sequence[str]) -> Image.Image:
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    rgb = image.convert("RGB")
    for op in ops:
        if op == "grayscale":
            rgb = ImageOps.grayscale(rgb).convert("RGB")
        elif op == "sepia":
            rgb = ImageOps.colorize(ImageOps.grayscale(rgb), (40, 26, 13), (255, 240, 192))
        elif op == "invert":
            rgb = ImageOps.invert(rgb)
        elif op == "blur":
            rgb = rgb.filter(ImageFilter.GaussianBlur(radius=max(2, min(rgb.size) // 150)))
        elif op == "sharpen":
            rgb = rgb.filter(ImageFilter.UnsharpMask(radius=2, percent=180, threshold=2))
        elif op == "mirror":
            rgb = ImageOps.mirror(rgb)
            alpha = ImageOps.mirror(alpha) if alpha is not None else None
        elif op == "flip":
            rgb = ImageOps.flip(rgb)
            alpha = ImageOps.flip(alpha) if alpha is not None else None
        elif op == "brighten":
            rgb = ImageEnhance.Brightness(rgb).enhance(1.3)
        elif op == "darken":
            rgb = ImageEnhance.Brightness(rgb).enhance(0.65)
        elif op == "contrast":
            rgb = ImageEnhance.Contrast(rgb).enhance(1.5)
        elif op == "posterize":
            rgb = ImageOps.posterize(rgb, 3)
    if alpha is not None:
        rgb.putalpha(alpha)
        return rgb
    return rgb


def _pattern(size: tuple[int, int], plan: EditPlan) -> Image.Image:
    """L mask of the prompt's line pattern (value = opacity)."""
    width, height = size
    overlay = Image.new("L", size, 0)
    draw = ImageDraw.Draw(overlay)
    step, phase = plan.pattern_spacing, plan.pattern_phase
    line_width = max(1, min(size) // 256)
    if plan.pattern_kind in (0, 1):
        for offset in range(-height + phase, width + height, step):
            if plan.pattern_kind == 0:
                draw.line([(offset, 0), (offset + height, height)], fill=70, width=line_width)
            else:
                draw.line([(offset + height, 0), (offset, height)], fill=70, width=line_width)
    else:
        for x in range(phase, width, step):
            draw.line([(x, 0), (x, height)], fill=55, width=line_width)
        for y in range(phase, height, step):
            draw.line([(0, y), (width, y)], fill=55, width=line_width)
    return overlay


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _draw_texts(image: Image.Image, texts: Sequence[str], box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    region_w, region_h = right - left, bottom - top
    draw = ImageDraw.Draw(image)
    y = top + max(4, region_h // 20)
    for text in texts:
        size = max(10, min(region_w, region_h) // 10)
        font = _font(size)
        while size > 10:
            x0, _, x1, _ = draw.textbbox((0, 0), text, font=font, stroke_width=max(1, size // 12))
            if x1 - x0 <= region_w - 8:
                break
            size = max(10, int(size * 0.85))
            font = _font(size)
        stroke = max(1, size // 12)
        x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font, stroke_width=stroke)
        x = left + (region_w - (x1 - x0)) // 2 - x0
        fill = (255, 255, 255, 255) if image.mode == "RGBA" else (255, 255, 255)
        outline = (0, 0, 0, 255) if image.mode == "RGBA" else (0, 0, 0)
        draw.text((x, y - y0), text, font=font, fill=fill, stroke_width=stroke, stroke_fill=outline)
        y += int(y1 - y0) + max(4, size // 4)
        if y >= bottom:
            break


def _paste_insets(image: Image.Image, refs: Sequence[Image.Image], box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    region_w, region_h = right - left, bottom - top
    margin = max(4, min(region_w, region_h) // 40)
    cell = (max(8, region_w // 5), max(8, region_h // 5))
    x, y_bottom = left + margin, bottom - margin
    row_h = 0
    for ref in refs:
        thumb = ref.convert(image.mode)
        thumb.thumbnail(cell, Image.Resampling.LANCZOS)
        tw, th = thumb.size
        if x + tw + margin > right and x > left + margin:
            x, y_bottom, row_h = left + margin, y_bottom - row_h - margin, 0
        y = y_bottom - th
        if y < top:
            break
        border = 2
        frame = (255, 255, 255, 255) if image.mode == "RGBA" else (255, 255, 255)
        ImageDraw.Draw(image).rectangle([x - border, y - border, x + tw + border - 1, y + th + border - 1], fill=frame)
        image.paste(thumb, (x, y))
        x += tw + margin + border
        row_h = max(row_h, th + 2 * border)


def _edit_variant(
    base: Image.Image,
    refs: Sequence[Image.Image],
    prompt: str,
    variant: int,
    box: tuple[int, int, int, int],
) -> Image.Image:
    plan = plan_edit(prompt, variant)
    edited = _apply_ops(base, plan.ops)
    solid = Image.new(edited.mode, edited.size, plan.tint + ((255,) if edited.mode == "RGBA" else ()))
    if edited.mode == "RGBA":
        solid.putalpha(edited.getchannel("A"))
    edited = Image.blend(edited, solid, min(0.6, plan.tint_strength))
    line_colour = plan.pattern_colour + ((255,) if edited.mode == "RGBA" else ())
    lines = Image.new(edited.mode, edited.size, line_colour)
    edited = Image.composite(lines, edited, _pattern(edited.size, plan))
    _paste_insets(edited, refs, box)
    if plan.texts:
        _draw_texts(edited, plan.texts, box)
    return edited


def render_edit_images(
    images: Sequence[bytes],
    prompt: str,
    mask: bytes | None = None,
    size: tuple[int, int] | str | None = None,
    output_format: str = "png",
    num_images: int = 1,
    *,
    quality: str = "auto",
) -> list[RenderedImage]:
    """Like :func:`render_edit`, with dimensions and format of each output."""
    if not images:
        raise EngineError("at least one input image is required", kind="invalid_input")
    if num_images < 1:
        raise EngineError("num_images must be >= 1", kind="invalid_input")
    fmt = normalize_format(output_format)
    decoded = [load_image(data, index=i) for i, data in enumerate(images)]
    first = decoded[0]
    target = resolve_size(first.size, size)
    base = first.convert(_working_mode(first))
    keep: Image.Image | None = None
    if mask is not None:
        editable = editable_mask(mask, first.size)
        if target != first.size:
            editable = editable.resize(target, Image.Resampling.NEAREST)
        keep = editable.point(lambda v: 0 if v else 255)
    if base.size != target:
        base = base.resize(target, Image.Resampling.LANCZOS)
    box = (0, 0, target[0], target[1])
    if keep is not None:
        bbox = ImageOps.invert(keep).getbbox()
        if bbox is not None:
            box = bbox
    outputs: list[RenderedImage] = []
    for variant in range(num_images):
        edited = _edit_variant(base, decoded[1:], prompt, variant, box)
        if keep is not None:
            edited.paste(base, (0, 0), keep)
        data = encode(edited, fmt, quality=quality, lossless=keep is not None)
        outputs.append(RenderedImage(data=data, width=target[0], height=target[1], format=fmt))
    return outputs


def render_edit(
    images: Sequence[bytes],
    prompt: str,
    mask: bytes | None = None,
    size: tuple[int, int] | str | None = None,
    output_format: str = "png",
    num_images: int = 1,
    *,
    quality: str = "auto",
) -> list[bytes]:
    """Edit ``images[0]`` according to ``prompt``; returns ``num_images`` encoded outputs.

    ``size`` None/"auto" keeps the first image's size.  Deterministic: same inputs, same bytes.
    Raises :class:`EngineError` for undecodable inputs or a mask of the wrong size.
    """
    rendered = render_edit_images(images, prompt, mask, size, output_format, num_images, quality=quality)
    return [item.data for item in rendered]


def render_placeholder(width: int, height: int, output_format: str) -> bytes:
    """Cheap deterministic stand-in output for ``render="cached"`` (a labelled gradient)."""
    fmt = normalize_format(output_format)
    red = Image.linear_gradient("L").resize((width, height))
    green = red.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    blue = Image.new("L", (width, height), 160)
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    font = _font(max(10, min(width, height) // 16))
    draw.text((8, 8), f"editq sandbox {width}x{height}", font=font, fill=(255, 255, 255))
    return encode(image, fmt)
