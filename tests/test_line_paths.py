"""The two ways a line is read agree: the shortcut (`request_from_json`: pydantic parses and validates the raw
bytes in Rust) takes a line only when the ordinary way (`read_line`: UTF-8, `json.loads`, the nesting check,
then `model_validate`) accepts it, and then gives the equal request; every line the ordinary way refuses, the
shortcut leaves to it (returns None), so the message naming the line's problem is always the ordinary one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from editq.producer.api import checked_request, read_line
from editq.schemas.job import JobRequest, request_from_json
from tests.test_hostile_input import HOSTILE

GOOD: dict[str, Any] = {"prompt": "make it blue", "images": ["mug.png"], "size": "auto", "quality": "low"}


def _line(**over: Any) -> bytes:
    return json.dumps({**GOOD, **over}).encode()


VALID = [
    _line(),
    _line(custom_id="sku-1", size="1024x1536", quality="high", num_images=3, output_format="webp",
          background="opaque", priority="interactive", provider="fal,replicate", tenant="acme.co",
          metadata={"a": [1, 2.5, None, True, {"b": "c"}], "big": 123456789012345678901234567890, "x": 1e-7}),
    _line(prompt="  padded  ", images=["  mug.png  "], custom_id=" c "),  # stripped the same way
    _line(num_images="2"), _line(num_images=2.0), _line(num_images=True),  # lax numbers, both ways
    _line(prompt="caf\u00e9 \u4e2d\u6587 \U0001f600"), json.dumps({**GOOD, "prompt": "caf\u00e9"},
                                                                  ensure_ascii=False).encode(),
    _line(metadata={"n": {"n": {"n": {"n": {"n": {"n": {"n": 1}}}}}}}),  # 7 levels: allowed
    _line(idempotency_key="k-1", group="g", variant="A", parent_job_id="job_x", mask="mug.png"),
    _line(images=["data:image/png;base64,iVBORw0KGgo="]),
    b'{"prompt": "a", "prompt": "b", "images": ["mug.png"]}',  # a repeated key: the last one, both ways
    b'{"prompt": "p", "images": ["mug.png"], "metadata": {"x": NaN, "y": Infinity}}',
    b'{"prompt": "p", "images": ["mug.png"], "metadata": {"x": 1e400}}',
    _line() + b"\r\n", b"  " + _line() + b"\t\n",
    b'{"prompt": "\\ud83d\\ude00", "images": ["mug.png"]}',  # an escaped surrogate pair
]

# (the hostile lines whose problem is in an image file are valid lines: that is found later, reading the file)
REFUSED = [raw for raw, why in HOSTILE if not any(f in why for f in ("cut.png", "bomb.png", "alpha"))] + [
    b'{"prompt": "tab\there", "images": ["mug.png"]}',  # a raw control character in a string
    b'\xef\xbb\xbf' + _line(),  # a byte order mark
    b'{"prompt": "\\ud800", "images": ["mug.png"]}',  # a lone surrogate
    b'{"prompt": "p", "images": ["mug.png"]} {}', b"[]", b'"text"', b"{", b"",
    _line(variants=2), _line(compare=["fal", "replicate"]), _line(unknown=1),
    _line(num_images="two"), _line(num_images=1.5), _line(custom_id=5), _line(size="big"), _line(quality="best"),
    _line(metadata={"n": {"n": {"n": {"n": {"n": {"n": {"n": {"n": {"n": 1}}}}}}}}}),  # 9 levels
    _line(metadata={"x": "y" * 20_000}), _line(images=[]), _line(provider="fal,fal"), _line(tenant="a b"),
    b'{"prompt": "p", "images": ["mug.png"], "metadata": {"x": -NaN}}',
]


def _ordinary(raw: bytes) -> JobRequest:
    return checked_request(read_line(raw))


@pytest.mark.parametrize("raw", VALID)
def test_the_shortcut_takes_a_valid_line_and_reads_it_the_same(raw: bytes) -> None:
    fast = request_from_json(raw)
    assert fast is not None
    ordinary = _ordinary(raw)
    assert repr(fast) == repr(ordinary)  # (repr: a NaN in metadata is not equal to itself)
    assert fast.model_dump_json() == ordinary.model_dump_json()


@pytest.mark.parametrize("raw", REFUSED)
def test_a_line_the_ordinary_way_refuses_is_left_to_it(raw: bytes) -> None:
    with pytest.raises(ValueError):
        _ordinary(raw)
    assert request_from_json(raw) is None
