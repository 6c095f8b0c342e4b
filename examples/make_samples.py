"""Draw the sample product photos used by ``examples/batch.jsonl``.

The images are synthetic "studio shots" drawn with Pillow only (no downloads,
no randomness), so the output is byte-for-byte reproducible for a given Pillow
build.  Run it from the repository root to refresh the committed files::

    python examples/make_samples.py            # writes into examples/
    python examples/make_samples.py --dest /tmp/samples

It can also be imported: ``generate(dest)`` writes every file and returns the
paths in a fixed order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

Color = tuple[int, int, int]
Box = tuple[int, int, int, int]

SQUARE = (512, 512)
WIDE = (768, 512)

# Rectangle (in mug.png pixel coordinates) covered by the mug's label.  The
# mask makes this area (plus a small margin) editable.
MUG_LABEL_BOX: Box = (196, 238, 300, 318)
MASK_MARGIN = 10

# Encoder settings are pinned so repeated runs give identical bytes.
PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 9}
JPEG_OPTIONS = {
    "format": "JPEG",
    "quality": 88,
    "optimize": False,
    "progressive": False,
    "subsampling": 0,
}


# --------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------


def _vertical_gradient(size: tuple[int, int], top: Color, bottom: Color) -> Image.Image:
    ramp = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    return Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), ramp)


def _horizontal_gradient(size: tuple[int, int], left: Color, right: Color) -> Image.Image:
    w, h = size
    ramp = Image.linear_gradient("L").rotate(90, expand=True).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    ramp = ramp.resize((w, h), Image.Resampling.BILINEAR)
    return Image.composite(Image.new("RGB", size, right), Image.new("RGB", size, left), ramp)


def _studio_backdrop(size: tuple[int, int], top: Color, bottom: Color, horizon: int) -> Image.Image:
    """A seamless paper sweep: wall gradient above ``horizon``, floor below."""
    w, h = size
    img = _vertical_gradient(size, top, bottom)
    floor = _vertical_gradient((w, h - horizon), bottom, _shade(bottom, 0.86))
    # soften the wall/floor transition so it reads as a curved sweep
    blend = Image.new("L", (w, h - horizon), 0)
    ImageDraw.Draw(blend).rectangle((0, 24, w, h - horizon), fill=255)
    blend = blend.filter(ImageFilter.GaussianBlur(18))
    img.paste(floor, (0, horizon), blend)
    # gentle vignette
    vignette = Image.new("L", size, 0)
    ImageDraw.Draw(vignette).ellipse((-w // 4, -h // 4, w + w // 4, h + h // 4), fill=255)
    vignette = vignette.filter(ImageFilter.GaussianBlur(60))
    dark = Image.new("RGB", size, _shade(bottom, 0.72))
    return Image.composite(img, dark, vignette)


def _shade(color: Color, factor: float) -> Color:
    return tuple(max(0, min(255, round(c * factor))) for c in color)  # type: ignore[return-value]


def _shadow(img: Image.Image, box: Box, blur: int = 14, strength: int = 120) -> None:
    """Soft contact shadow (a blurred ellipse) under an object."""
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=strength)
    mask = mask.filter(ImageFilter.GaussianBlur(blur))
    img.paste(Image.new("RGB", img.size, (30, 28, 26)), (0, 0), mask)


def _shape_mask(size: tuple[int, int], draw_fn: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    mask = Image.new("L", size, 0)
    draw_fn(ImageDraw.Draw(mask))
    return mask


def _paint_cylinder(img: Image.Image, mask: Image.Image, dark: Color, light: Color, box: Box) -> None:
    """Fill ``mask`` with a left-dark/centre-light/right-dark cylindrical shading."""
    x0, _, x1, _ = box
    w, h = img.size
    span = max(1, x1 - x0)
    left = _horizontal_gradient((span // 2, h), dark, light)
    right = _horizontal_gradient((span - span // 2, h), light, _shade(dark, 0.8))
    layer = Image.new("RGB", (w, h), dark)
    layer.paste(left, (x0, 0))
    layer.paste(right, (x0 + span // 2, 0))
    img.paste(layer, (0, 0), mask)


def _highlight(img: Image.Image, box: Box, strength: int = 90, blur: int = 6) -> None:
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).rounded_rectangle(box, radius=(box[2] - box[0]) // 2, fill=strength)
    mask = mask.filter(ImageFilter.GaussianBlur(blur))
    img.paste(Image.new("RGB", img.size, (255, 255, 255)), (0, 0), mask)


# --------------------------------------------------------------------------
# the products
# --------------------------------------------------------------------------


def draw_mug() -> Image.Image:
    img = _studio_backdrop(SQUARE, (232, 226, 218), (205, 196, 186), horizon=330)
    _shadow(img, (140, 352, 380, 398))
    body: Box = (166, 176, 330, 372)

    # handle: a thick ring on the right, drawn before the body so the body hides its inner half
    handle = _shape_mask(SQUARE, lambda d: d.ellipse((286, 212, 392, 330), outline=255, width=24))
    _paint_cylinder(img, handle, (34, 78, 120), (86, 146, 196), (286, 212, 392, 330))

    def body_shape(d: ImageDraw.ImageDraw) -> None:
        d.rectangle((body[0], body[1] + 12, body[2], body[3] - 12), fill=255)
        d.ellipse((body[0], body[3] - 26, body[2], body[3]), fill=255)
        d.ellipse((body[0], body[1], body[2], body[1] + 26), fill=255)

    _paint_cylinder(img, _shape_mask(SQUARE, body_shape), (30, 74, 116), (96, 158, 208), body)

    d = ImageDraw.Draw(img)
    # rim and the coffee inside
    d.ellipse((body[0] + 2, body[1], body[2] - 2, body[1] + 26), fill=(212, 226, 238))
    d.ellipse((body[0] + 12, body[1] + 5, body[2] - 12, body[1] + 23), fill=(92, 58, 36))
    d.ellipse((body[0] + 40, body[1] + 8, body[0] + 90, body[1] + 14), fill=(150, 108, 74))

    # label: cream card with a stripe and a few "text" bars
    x0, y0, x1, _ = MUG_LABEL_BOX
    d.rounded_rectangle(MUG_LABEL_BOX, radius=6, fill=(246, 238, 222))
    d.rectangle((x0, y0 + 14, x1, y0 + 22), fill=(220, 92, 60))
    d.rectangle((x0 + 14, y0 + 34, x1 - 14, y0 + 44), fill=(60, 60, 70))
    d.rectangle((x0 + 24, y0 + 52, x1 - 24, y0 + 58), fill=(140, 140, 150))
    d.rectangle((x0 + 30, y0 + 64, x1 - 30, y0 + 68), fill=(170, 170, 178))

    _highlight(img, (body[0] + 30, body[1] + 34, body[0] + 44, body[3] - 30), strength=110)
    return img


def draw_mug_mask() -> Image.Image:
    """RGBA mask for mug.png: alpha 0 over the label (edit here), 255 elsewhere (keep)."""
    mask = Image.new("RGBA", SQUARE, (0, 0, 0, 255))
    x0, y0, x1, y1 = MUG_LABEL_BOX
    m = MASK_MARGIN
    ImageDraw.Draw(mask).rectangle((x0 - m, y0 - m, x1 + m, y1 + m), fill=(0, 0, 0, 0))
    return mask


def draw_sneaker() -> Image.Image:
    img = _studio_backdrop(WIDE, (226, 232, 236), (192, 202, 210), horizon=318)
    _shadow(img, (150, 360, 640, 408), blur=16, strength=140)
    d = ImageDraw.Draw(img)

    # sole: midsole + outsole
    d.rounded_rectangle((150, 330, 636, 378), radius=24, fill=(248, 248, 246))
    d.rounded_rectangle((150, 362, 636, 384), radius=12, fill=(70, 72, 78))
    for x in range(176, 620, 22):
        d.line((x, 370, x + 10, 382), fill=(52, 54, 60), width=3)

    # upper: a polygon shaded with a gradient
    upper_pts = [
        (162, 336),
        (190, 250),
        (300, 218),
        (402, 160),
        (470, 146),
        (512, 170),
        (520, 246),
        (604, 284),
        (632, 336),
    ]
    upper = _shape_mask(WIDE, lambda dd: dd.polygon(upper_pts, fill=255))
    upper = upper.filter(ImageFilter.GaussianBlur(1))
    shade = _vertical_gradient(WIDE, (236, 88, 74), (168, 40, 44))
    img.paste(shade, (0, 0), upper)

    d = ImageDraw.Draw(img)
    # collar / opening
    d.ellipse((408, 138, 516, 178), fill=(52, 34, 36))
    # side stripe
    d.line([(250, 320), (360, 262), (470, 236), (560, 300)], fill=(250, 250, 250), width=16)
    # toe cap: an ellipse clipped to the upper's outline
    toe = _shape_mask(WIDE, lambda dd: dd.ellipse((120, 262, 282, 420), fill=255))
    toe = ImageChops.multiply(toe, upper)
    img.paste(Image.new("RGB", WIDE, (246, 240, 236)), (0, 0), toe)
    # laces
    for i in range(5):
        x = 300 + i * 24
        y = 236 - i * 16
        d.line((x, y, x + 40, y + 22), fill=(250, 250, 250), width=6)
    # heel tab
    d.rounded_rectangle((500, 176, 528, 244), radius=8, fill=(40, 40, 48))
    _highlight(img, (330, 200, 460, 214), strength=70, blur=8)
    return img


def draw_bottle() -> Image.Image:
    img = _studio_backdrop(SQUARE, (214, 230, 222), (176, 198, 188), horizon=350)
    _shadow(img, (176, 384, 336, 418), blur=12, strength=150)
    body: Box = (186, 180, 326, 400)

    def body_shape(d: ImageDraw.ImageDraw) -> None:
        d.rounded_rectangle(body, radius=36, fill=255)
        d.polygon([(210, 196), (232, 132), (280, 132), (302, 196)], fill=255)

    _paint_cylinder(img, _shape_mask(SQUARE, body_shape), (22, 92, 70), (84, 176, 138), body)
    d = ImageDraw.Draw(img)
    # neck ring and cap
    d.rectangle((230, 122, 282, 134), fill=(200, 200, 196))
    cap = _shape_mask(SQUARE, lambda dd: dd.rounded_rectangle((226, 72, 286, 124), radius=8, fill=255))
    _paint_cylinder(img, cap, (150, 120, 60), (232, 200, 120), (226, 72, 286, 124))
    d = ImageDraw.Draw(img)
    for x in range(232, 284, 6):
        d.line((x, 76, x, 120), fill=(170, 138, 76), width=1)
    # wrap-around label
    d.rectangle((body[0], 246, body[2], 342), fill=(244, 240, 228))
    d.rectangle((body[0], 246, body[2], 254), fill=(210, 160, 60))
    d.rectangle((body[0], 334, body[2], 342), fill=(210, 160, 60))
    # emblem: a water drop
    d.ellipse((238, 284, 274, 320), fill=(40, 120, 150))
    d.polygon([(240, 296), (256, 262), (272, 296)], fill=(40, 120, 150))
    d.ellipse((246, 296, 254, 304), fill=(200, 230, 240))
    _highlight(img, (204, 200, 218, 380), strength=120)
    return img


def draw_watch() -> Image.Image:
    img = _studio_backdrop(SQUARE, (236, 232, 240), (200, 194, 210), horizon=300)
    _shadow(img, (130, 380, 382, 420), blur=18, strength=110)
    d = ImageDraw.Draw(img)
    cx, cy, r = 256, 248, 112

    # strap (leather brown, running top to bottom)
    strap = _shape_mask(SQUARE, lambda dd: dd.rounded_rectangle((206, 40, 306, 456), radius=20, fill=255))
    _paint_cylinder(img, strap, (88, 52, 30), (160, 104, 64), (206, 40, 306, 456))
    d = ImageDraw.Draw(img)
    for y in range(60, 440, 18):
        if abs(y - cy) > r + 8:
            d.line((214, y, 214, y + 8), fill=(214, 190, 150), width=2)
            d.line((298, y, 298, y + 8), fill=(214, 190, 150), width=2)
    d.rounded_rectangle((248, 400, 264, 430), radius=3, fill=(190, 190, 196))  # buckle keeper

    # case and bezel
    case = _shape_mask(
        SQUARE, lambda dd: dd.ellipse((cx - r - 10, cy - r - 10, cx + r + 10, cy + r + 10), fill=255)
    )
    _paint_cylinder(img, case, (120, 122, 130), (236, 238, 244), (cx - r - 10, 0, cx + r + 10, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((cx + r + 4, cy - 12, cx + r + 22, cy + 12), radius=4, fill=(180, 182, 190))  # crown
    dial = _vertical_gradient(SQUARE, (24, 34, 58), (10, 14, 28))
    dial_mask = _shape_mask(SQUARE, lambda dd: dd.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255))
    img.paste(dial, (0, 0), dial_mask)

    d = ImageDraw.Draw(img)
    # hour ticks: precomputed unit vectors for the 12 positions (no trig, exact ints)
    ticks = [
        (0, -1000),
        (500, -866),
        (866, -500),
        (1000, 0),
        (866, 500),
        (500, 866),
        (0, 1000),
        (-500, 866),
        (-866, 500),
        (-1000, 0),
        (-866, -500),
        (-500, -866),
    ]
    for i, (ux, uy) in enumerate(ticks):
        inner = r - (22 if i % 3 == 0 else 14)
        outer = r - 6
        d.line(
            (
                cx + ux * inner // 1000,
                cy + uy * inner // 1000,
                cx + ux * outer // 1000,
                cy + uy * outer // 1000,
            ),
            fill=(236, 232, 220),
            width=5 if i % 3 == 0 else 2,
        )
    # hands at 10:10
    d.line((cx, cy, cx - 52, cy - 30), fill=(240, 236, 226), width=7)
    d.line((cx, cy, cx + 60, cy - 70), fill=(240, 236, 226), width=5)
    d.line((cx, cy + 20, cx, cy - 88), fill=(224, 80, 60), width=2)
    d.ellipse((cx - 7, cy - 7, cx + 7, cy + 7), fill=(224, 80, 60))
    # glass reflection
    refl = Image.new("L", SQUARE, 0)
    ImageDraw.Draw(refl).pieslice((cx - r, cy - r, cx + r, cy + r), start=200, end=250, fill=60)
    refl = refl.filter(ImageFilter.GaussianBlur(8))
    img.paste(Image.new("RGB", SQUARE, (255, 255, 255)), (0, 0), refl)
    return img


def draw_backpack() -> Image.Image:
    img = _studio_backdrop(SQUARE, (238, 230, 212), (208, 196, 172), horizon=360)
    _shadow(img, (120, 398, 392, 436), blur=16, strength=140)
    d = ImageDraw.Draw(img)

    # top carry loop and shoulder straps peeking out behind the body
    d.arc((220, 54, 292, 124), start=180, end=360, fill=(40, 52, 44), width=12)
    d.rounded_rectangle((140, 130, 172, 380), radius=14, fill=(36, 46, 40))
    d.rounded_rectangle((340, 130, 372, 380), radius=14, fill=(36, 46, 40))

    body: Box = (150, 90, 362, 412)
    main = _shape_mask(SQUARE, lambda dd: dd.rounded_rectangle(body, radius=64, fill=255))
    _paint_cylinder(img, main, (60, 84, 62), (112, 146, 104), body)

    d = ImageDraw.Draw(img)
    # zipper arc around the top
    d.arc((170, 106, 342, 300), start=190, end=350, fill=(220, 170, 70), width=4)
    d.rounded_rectangle((318, 150, 330, 176), radius=3, fill=(220, 170, 70))
    # front pocket
    pocket = _shape_mask(SQUARE, lambda dd: dd.rounded_rectangle((182, 262, 330, 392), radius=30, fill=255))
    _paint_cylinder(img, pocket, (48, 70, 52), (98, 130, 92), (182, 262, 330, 392))
    d = ImageDraw.Draw(img)
    d.line((196, 284, 316, 284), fill=(220, 170, 70), width=4)
    d.rounded_rectangle((236, 316, 276, 336), radius=4, fill=(232, 226, 210))  # patch
    # compression straps
    d.rectangle((206, 250, 220, 400), fill=(30, 38, 34))
    d.rectangle((292, 250, 306, 400), fill=(30, 38, 34))
    d.rectangle((204, 352, 222, 366), fill=(170, 170, 176))
    d.rectangle((290, 352, 308, 366), fill=(170, 170, 176))
    _highlight(img, (174, 130, 188, 360), strength=60, blur=8)
    return img


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------

# (file name, drawing function, encoder options) in the order generate() returns them
SAMPLES: Sequence[tuple[str, Callable[[], Image.Image], dict[str, object]]] = (
    ("mug.png", draw_mug, PNG_OPTIONS),
    ("mask_mug.png", draw_mug_mask, PNG_OPTIONS),
    ("sneaker.jpg", draw_sneaker, JPEG_OPTIONS),
    ("bottle.png", draw_bottle, PNG_OPTIONS),
    ("watch.png", draw_watch, PNG_OPTIONS),
    ("backpack.png", draw_backpack, PNG_OPTIONS),
)


def generate(dest: Path) -> list[Path]:
    """Write every sample image (and the mug mask) into ``dest``; return their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, draw, options in SAMPLES:
        image = draw()
        path = dest / name
        image.save(path, **options)
        written.append(path)
    # sanity check: the mask must line up with the photo it belongs to
    with Image.open(dest / "mug.png") as photo, Image.open(dest / "mask_mug.png") as mask:
        if photo.size != mask.size:
            raise AssertionError("mask_mug.png must match mug.png in size")
        lo, hi = mask.getchannel("A").getextrema()
        if (lo, hi) != (0, 255):
            raise AssertionError("mask_mug.png alpha must contain both 0 (edit) and 255 (keep)")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the examples/ folder this script lives in)",
    )
    args = parser.parse_args(argv)
    for path in generate(args.dest):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
