"""Canonical job validation: errors name the field and the rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from editq.schemas.job import JobRequest, content_key, describe_errors
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
