"""Canonical job validation: errors name the field and the rule."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from pydantic import ValidationError

from editq.schemas.job import KEY_PARAMS, NOT_IN_KEY, OPTIONAL_KEY_FIELDS, JobRequest, content_key, describe_errors
from editq.schemas.params import parse_size, size_problems


def _err(**kw: object) -> str:
    base: dict[str, object] = {"prompt": "p", "images": ["a.png"]}
    base.update(kw)
    with pytest.raises(ValidationError) as exc:
        JobRequest.model_validate(base)
    return describe_errors(exc.value)


def test_errors_name_field_and_rule() -> None:
    assert _err(prompt="") == "prompt: String should have at least 1 character"
    assert _err(images=[]) == "images: List should have at least 1 item after validation, not 0"
    assert _err(images=["a.png"] * 17) == "images: List should have at most 16 items after validation, not 17"
    assert _err(size="1000x1000") == (
        "size: size '1000x1000' is not allowed: both sides must be multiples of 16 between 16 and 3840")
    assert _err(size="big") == "size: size must be 'auto' or 'WIDTHxHEIGHT' (e.g. '1024x1024'), got 'big'"
    assert _err(quality="ultra").startswith("quality: Input should be 'auto', 'low', 'medium' or 'high'")
    assert _err(num_images=0) == "num_images: Input should be greater than or equal to 1"
    assert _err(images=["a.png", "ftp://x/y.png"]) == (
        "images[1]: unsupported scheme in 'ftp://x/y.png': use https://, s3://, data: or a local path")
    # hostile references are refused by the field, with the reason, before anything is fetched
    assert _err(images=["https://example.com:99999/x.png"]) == "images[0]: not a valid URL: port out of range 0-65535"
    assert _err(mask="https://exa\x01mple.com/m.png") == "mask: contains a control character ('\\x01' at position 11)"
    assert _err(images=["a" * 5000]) == "images[0]: a path or URL must be at most 2,048 characters, got 5,000"
    assert _err(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}) == (
        "metadata: nested deeper than 8 levels")
    assert _err(metadata={"notes": "x" * 20_000}) == "metadata: is 20,012 bytes as JSON; at most 16,384"
    assert _err(colour="red") == "colour: Extra inputs are not permitted"
    assert _err(provider="fal,fal") == "provider: a provider appears twice in the route"


def test_refs_and_route() -> None:
    req = JobRequest(prompt="p", images=["https://x/a.png", "s3://bucket/k.png", "data:image/png;base64,AAAA", "a.png"],
                     provider="fal, replicate")
    assert req.route == ["fal", "replicate"]
    with pytest.raises(ValidationError):
        JobRequest(prompt="p", images=["s3://bucket-only"])


def test_size_rules() -> None:
    assert parse_size("auto") is None and parse_size("1024x1536") == (1024, 1536)
    assert size_problems(1024, 1024) == []
    assert size_problems(512, 512) == ["total pixels must be between 655,360 and 8,294,400"]
    assert "the aspect ratio must be between 1:3 and 3:1" in size_problems(3840, 1024)
    assert "the longest edge must be at most 3840px" in size_problems(4096, 2048)


def test_idempotency_key_is_content_derived() -> None:
    a = JobRequest(prompt="p", images=["a.png"], metadata={"x": 1}, priority="interactive")
    b = JobRequest(prompt="p", images=["b.png"], metadata={"x": 2})
    # same content (inputs by hash, not by name) -> same key; metadata and lane do not matter
    assert content_key(a, ["h1"], None) == content_key(b, ["h1"], None)
    assert content_key(a, ["h1"], None) != content_key(a, ["h2"], None)
    assert content_key(a, ["h1"], None) != content_key(a, ["h1"], "m")
    c = JobRequest(prompt="p2", images=["a.png"])
    assert content_key(a, ["h1"], None) != content_key(c, ["h1"], None)
    d = JobRequest(prompt="p", images=["a.png"], quality="high")
    assert content_key(a, ["h1"], None) != content_key(d, ["h1"], None)


def _dumped_key(req: JobRequest, inputs: list[str], mask: str | None) -> str:
    """The default key as it was computed up to session 12 (model_dump + json.dumps): `content_key` writes the
    same bytes directly, and must go on giving the same key (jobs already in Redis hold it)."""
    params = req.model_dump(mode="json", exclude=set(NOT_IN_KEY))
    for name in OPTIONAL_KEY_FIELDS:
        if params.get(name) is None:
            params.pop(name, None)
    blob = json.dumps({"params": params, "inputs": inputs, "mask": mask, "custom_id": req.custom_id},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


KEY_CASES: list[dict[str, Any]] = [
    {"prompt": "p", "images": ["a.png"]},
    {"prompt": "  spaced \t", "images": ["a.png"], "custom_id": "sku-1", "size": "1024x1536", "quality": "high",
     "num_images": 10, "output_format": "webp", "background": "opaque", "priority": "interactive"},
    {"prompt": "naïve café \u2603 \U0001F600 \"quoted\" back\\slash \n\r\t\x00\x1f\x7f \u2028",
     "images": ["a.png", "b.png"], "custom_id": "\u00e9\u0000\"", "provider": "fal, replicate", "model": "m/\u00fc"},
    {"prompt": "p", "images": ["a.png"], "group": "g-1", "variant": "v\u00e9", "parent_job_id": "job_1",
     "tenant": "acme.co@x", "metadata": {"k": [1, 2]}, "idempotency_key": None},
    {"prompt": "p", "images": ["a.png"], "group": "", "variant": "", "custom_id": ""},
    {"prompt": "p", "images": ["a.png"], "num_images": True, "size": "auto", "quality": "auto", "tenant": "t"},
    {"prompt": "p", "images": ["a.png"], "num_images": "3", "output_format": "jpeg", "background": "transparent"},
]


@pytest.mark.parametrize("data", KEY_CASES)
@pytest.mark.parametrize(("inputs", "mask"), [(["h1"], None), (["h1", "h\u00e92"], "m"), ([], "")])
def test_content_key_is_the_dumped_key(data: dict[str, Any], inputs: list[str], mask: str | None) -> None:
    req = JobRequest.model_validate(data)
    assert content_key(req, inputs, mask) == _dumped_key(req, inputs, mask)


def test_every_request_field_is_in_the_key_or_left_out_on_purpose() -> None:
    assert list(KEY_PARAMS) == sorted(KEY_PARAMS)
    assert set(KEY_PARAMS) | NOT_IN_KEY == set(JobRequest.model_fields)
    assert not set(KEY_PARAMS) & NOT_IN_KEY
