"""The sandbox image editor (sandbox.engine): real, deterministic, mask-exact edits."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageDraw

from editq.sandbox.engine import EngineError, plan_edit, render_edit, render_edit_images, render_placeholder


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = random.Random(seed)
    channels = len(mode)
    data = bytes(rng.randrange(256) for _ in range(size[0] * size[1] * channels))
    return Image.frombytes(mode, size, data)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


BOX = (40, 30, 150, 110)  # editable rectangle (inclusive) used by the mask tests


def _outside(x: int, y: int) -> bool:
    return not (BOX[0] <= x <= BOX[2] and BOX[1] <= y <= BOX[3])


def _alpha_mask(size: tuple[int, int]) -> bytes:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    ImageDraw.Draw(mask).rectangle(BOX, fill=(0, 0, 0, 0))
    return _encode(mask)


@pytest.fixture(scope="module")
def base() -> Image.Image:
    return _noise((200, 160), seed=1)


@pytest.fixture(scope="module")
def ref() -> bytes:
    return _encode(_noise((90, 60), seed=2))


def _changed_pixels(before: Image.Image, after: Image.Image) -> tuple[int, int]:
    """(changed outside BOX, changed inside BOX)."""
    b, a = before.load(), after.load()
    assert b is not None and a is not None
    outside = inside = 0
    for y in range(before.height):
        for x in range(before.width):
            if b[x, y] != a[x, y]:
                if _outside(x, y):
                    outside += 1
                else:
                    inside += 1
    return outside, inside


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_masked_edit_leaves_every_pixel_outside_the_mask_identical(base: Image.Image, ref: bytes, fmt: str) -> None:
    outputs = render_edit([_encode(base), ref], 'add a red "SALE" sign', _alpha_mask(base.size), None, fmt, 2)
    assert len(outputs) == 2
    for data in outputs:
        out = _open(data)
        assert out.size == base.size
        outside, inside = _changed_pixels(base, out.convert("RGB"))
        assert outside == 0
        editable = (BOX[2] - BOX[0] + 1) * (BOX[3] - BOX[1] + 1)
        assert inside > editable // 2  # the editable area was really edited


def test_mask_without_alpha_uses_white_as_editable(base: Image.Image) -> None:
    mask = Image.new("L", base.size, 0)
    ImageDraw.Draw(mask).rectangle(BOX, fill=255)
    out = _open(render_edit([_encode(base)], "make it blue", _encode(mask))[0])
    outside, inside = _changed_pixels(base, out)
    assert outside == 0 and inside > 0


def test_masked_edit_preserves_rgba_pixels_exactly() -> None:
    base = _noise((120, 120), seed=5, mode="RGBA")
    mask = Image.new("RGBA", base.size, (255, 255, 255, 255))
    ImageDraw.Draw(mask).rectangle((0, 0, 59, 119), fill=(255, 255, 255, 0))
    out = _open(render_edit([_encode(base)], "sepia", _encode(mask))[0])
    assert out.mode == "RGBA"
    b, a = base.load(), out.load()
    assert b is not None and a is not None
    assert all(b[x, y] == a[x, y] for x in range(60, 120) for y in range(120))
    assert any(b[x, y] != a[x, y] for x in range(60) for y in range(120))


def test_fully_opaque_mask_changes_nothing(base: Image.Image) -> None:
    mask = _encode(Image.new("RGBA", base.size, (0, 0, 0, 255)))
    out = _open(render_edit([_encode(base)], "make it purple", mask)[0])
    assert out.tobytes() == base.tobytes()


def test_mask_must_match_first_image_size(base: Image.Image) -> None:
    with pytest.raises(EngineError) as info:
        render_edit([_encode(base)], "x", _encode(Image.new("RGBA", (10, 10))))
    assert info.value.kind == "image_size_mismatch"


def test_output_depends_on_prompt(base: Image.Image) -> None:
    first = render_edit([_encode(base)], "make the sky orange")
    second = render_edit([_encode(base)], "make the sky green")
    assert first != second
    assert _open(first[0]).tobytes() != _open(second[0]).tobytes()


def test_quoted_text_is_drawn(base: Image.Image) -> None:
    plain = _open(render_edit([_encode(base)], "a poster with text")[0])
    texted = _open(render_edit([_encode(base)], 'a poster with "HELLO"')[0])
    assert plan_edit('a poster with "HELLO"').texts == ("HELLO",)
    assert plan_edit("don't 'quote' me").texts == ("quote",)
    assert plain.tobytes() != texted.tobytes()


def test_output_depends_on_every_input(base: Image.Image, ref: bytes) -> None:
    other_ref = _encode(_noise((90, 60), seed=3))
    other_base = _encode(_noise((200, 160), seed=4))
    a = render_edit([_encode(base), ref], "blend")
    b = render_edit([_encode(base), other_ref], "blend")
    c = render_edit([other_base, ref], "blend")
    d = render_edit([_encode(base)], "blend")
    assert len({a[0], b[0], c[0], d[0]}) == 4


def test_same_inputs_same_bytes(base: Image.Image, ref: bytes) -> None:
    for fmt in ("png", "jpeg", "webp"):
        runs = [render_edit([_encode(base), ref], 'vintage "1999"', None, (256, 192), fmt, 2) for _ in range(2)]
        assert runs[0] == runs[1]


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_size_format_and_num_images_are_honoured(base: Image.Image, ref: bytes, fmt: str, pil_format: str) -> None:
    rendered = render_edit_images([_encode(base), ref], "brighter", None, (320, 176), fmt, 3)
    assert len(rendered) == 3
    assert len({r.data for r in rendered}) == 3  # variants differ
    for item in rendered:
        image = _open(item.data)
        assert image.format == pil_format
        assert image.size == (320, 176) == (item.width, item.height)


def test_auto_size_is_first_image_size(base: Image.Image, ref: bytes) -> None:
    for size in (None, "auto"):
        out = _open(render_edit([_encode(base), ref], "x", None, size)[0])
        assert out.size == base.size


def test_undecodable_input_reports_its_index(base: Image.Image) -> None:
    with pytest.raises(EngineError) as info:
        render_edit([_encode(base), b"\x89PNG\r\n\x1a\nnot really"], "x")
    assert info.value.index == 1
    assert info.value.kind == "image_load_error"


def test_placeholder_is_deterministic_and_sized() -> None:
    first = render_placeholder(640, 480, "jpeg")
    assert first == render_placeholder(640, 480, "jpeg")
    image = _open(first)
    assert image.format == "JPEG" and image.size == (640, 480)
