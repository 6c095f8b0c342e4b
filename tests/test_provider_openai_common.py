"""Pure unit tests of providers/openai/common.py (shared by the sync and Batch protocols)."""

from __future__ import annotations

from typing import Any

import pytest

from editq.providers.masks import mask_alpha_problem
from editq.providers.openai.common import (
    TokenPrices,
    classify_code,
    classify_error,
    edit_fields,
    json_edit_body,
    multipart_form,
    usage_and_cost,
    validate_edit,
    wait_from_message,
)
from editq.schemas.job import EditJob, InputRecord
from editq.worker import redact
from editq.worker.errors import ErrorKind
from tests.factories import make_job, record


def rec(i: int, fmt: str = "png", w: int = 512, h: int = 512, size: int = 1000) -> InputRecord:
    return record(f"img{i}.png", w, h, sha256=f"{i:064x}", bytes=size, format=fmt, s3_key=f"inputs/{i}.png")


def job(**kw: Any) -> EditJob:
    return make_job("openai", **{"job_id": "j1", "batch_id": "b1", "prompt": "make it blue", "images": ["a.png"],
                                 "inputs": [rec(0)], **kw})


def test_json_body_exact() -> None:
    j = job(images=["a.png", "b.png", "c.png"], inputs=[rec(0), rec(1), rec(2)], mask="m.png",
            mask_input=rec(9), num_images=2, output_format="jpeg", size="1536x1024", quality="high")
    body = json_edit_body(j, ["https://s/a", "https://s/b", "https://s/c"], "https://s/m")
    assert body == {
        "model": "gpt-image-2", "prompt": "make it blue", "n": 2, "size": "1536x1024", "quality": "high",
        "background": "auto", "output_format": "jpeg",
        "images": [{"image_url": "https://s/a"}, {"image_url": "https://s/b"}, {"image_url": "https://s/c"}],
        "mask": {"image_url": "https://s/m"},
    }


def test_multipart_form_exact() -> None:
    data, files = multipart_form(edit_fields(job(num_images=3)), [(b"A", "png"), (b"B", "jpeg")], b"M")
    assert data == {"model": "gpt-image-2", "prompt": "make it blue", "n": "3", "size": "auto",
                    "quality": "medium", "background": "auto", "output_format": "png"}
    assert files == [
        ("image[]", ("image_0.png", b"A", "image/png")),
        ("image[]", ("image_1.jpg", b"B", "image/jpeg")),
        ("mask", ("mask.png", b"M", "image/png")),
    ]
    with pytest.raises(ValueError, match="images\\[0\\] has format gif"):
        multipart_form({}, [(b"G", "GIF")], None)


def test_validate_messages() -> None:
    assert validate_edit(job()) == []
    j = job(model="flux-kontext", background="transparent", size="3840x2176",
            images=["a", "b"], inputs=[rec(0), rec(1, fmt="gif")], mask="m", mask_input=rec(9, fmt="jpeg", w=256))
    msgs = validate_edit(j)
    assert "openai: model=flux-kontext is not allowed; allowed values: gpt-image-2, gpt-image-2-2026-04-21, " \
           "openai/gpt-image-2, openai/gpt-image-2/edit" in msgs
    assert "openai: images[1] is gif; allowed formats: png, jpeg, webp" in msgs
    assert "openai: mask is jpeg; allowed format: png (with an alpha channel)" in msgs
    assert "openai: mask is 256x512; allowed: the first image's size 512x512" in msgs
    assert any(m.startswith("openai: background=transparent is not allowed") for m in msgs)
    assert "openai: size=3840x2176 is not allowed (total pixels must be between 655,360 and 8,294,400); allowed: " \
           "auto, 1024x1024, 1536x1024, 1024x1536, or a custom WxH within those rules" in msgs
    assert len(msgs) == 6
    assert validate_edit(job(size="3840x1248"), provider="openai_batch") == [
        "openai_batch: size=3840x1248 is not allowed (the aspect ratio must be between 1:3 and 3:1); allowed: "
        "auto, 1024x1024, 1536x1024, 1024x1536, or a custom WxH within those rules"
    ]


def test_mask_alpha() -> None:
    import io

    from PIL import Image

    def png(mode: str) -> bytes:
        buf = io.BytesIO()
        Image.new(mode, (8, 8)).save(buf, "PNG")
        return buf.getvalue()

    assert mask_alpha_problem(png("RGBA"), "openai") is None
    assert mask_alpha_problem(png("RGB"), "openai") == (
        "openai: mask has no alpha channel (mode RGB); allowed: a png with an alpha channel (RGBA or LA)"
    )
    assert mask_alpha_problem(b"nope", "openai") == (
        "openai: mask is not a readable image; allowed: a png with an alpha channel")


def test_classify() -> None:
    quota = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                       "param": None, "code": "insufficient_quota"}}
    e = classify_error(429, quota, {"retry-after": "20"})
    assert (e.kind, e.status_code, e.provider_code, e.retry_after_s) == (ErrorKind.terminal, 429, "insufficient_quota",
                                                                         None)
    rl = {"error": {"message": "Rate limit reached for gpt-image-2 on input-images per min: Limit 250, Used 250, "
                    "Requested 1. Please try again in 240ms.", "type": "input-images", "code": "rate_limit_exceeded"}}
    e = classify_error(429, rl, {})
    assert e.kind is ErrorKind.retryable and e.retry_after_s == pytest.approx(0.24)
    e = classify_error(429, rl, {"retry-after-ms": "1500"})
    assert e.retry_after_s == pytest.approx(1.5)
    mod = {"error": {"message": "Your request was rejected by the safety system.",
                     "type": "image_generation_user_error", "param": None, "code": "moderation_blocked"}}
    e = classify_error(400, mod, {})
    assert e.kind is ErrorKind.terminal and e.provider_code == "moderation_blocked"
    assert e.reason == "openai edit: HTTP 400: moderation_blocked: Your request was rejected by the safety system."
    assert classify_error(400, {"error": {"message": "bad size", "type": "invalid_request_error", "param": "size",
                                          "code": None}}, {}).kind is ErrorKind.terminal
    assert classify_error(503, "upstream", {}).kind is ErrorKind.retryable
    assert classify_error(504, "gateway", {}).maybe_billed is True
    assert classify_error(500, {"error": {"message": "x", "type": "server_error", "code": None}}).maybe_billed is False
    bad_key = {"error": {"message": "Incorrect API key provided: sk-secret-123.", "code": "invalid_api_key",
                         "type": "invalid_request_error"}}
    redact.register("sk-secret-123")  # the client registers its key; ProviderError redacts every reason
    e = classify_error(401, bad_key, {})
    assert e.kind is ErrorKind.terminal and "sk-secret-123" not in e.reason
    assert classify_code("content_policy_violation", None, "no").kind is ErrorKind.terminal
    assert classify_code(None, None, "??").kind is ErrorKind.unknown
    assert wait_from_message("Please try again in 1.5s.") == 1.5


def test_usage_cost() -> None:
    u = usage_and_cost({
        "input_tokens": 1050, "output_tokens": 7000, "total_tokens": 8050,
        "input_tokens_details": {"text_tokens": 50, "image_tokens": 1000},
        "output_tokens_details": {"text_tokens": 0, "image_tokens": 7000},
    }, TokenPrices())
    assert u is not None
    expected = (50 * 5 + 1000 * 8 + 7000 * 30) / 1e6
    assert u.cost_usd == pytest.approx(expected) and u.cost_source == "tokens"
    assert (u.input_text_tokens, u.input_image_tokens, u.output_image_tokens) == (50, 1000, 7000)
    half = usage_and_cost({"input_tokens": 100, "output_tokens": 1000}, TokenPrices(multiplier=0.5))
    assert half is not None and half.cost_usd == pytest.approx((100 * 8 + 1000 * 30) / 2e6)
    assert usage_and_cost(None, TokenPrices()) is None


@pytest.mark.parametrize("stage", ["input", "output"])
def test_a_moderation_block_records_the_stage_the_provider_names(stage: str) -> None:
    """Issue 11: a moderation block is recorded with the stage where the provider says it happened (OpenAI's
    `moderation_details.moderation_stage`), `output` as well as `input`; `unknown` when the provider does not say."""
    body = {"error": {"message": "Your request was rejected by the safety system.",
                      "type": "image_generation_user_error", "param": None, "code": "moderation_blocked",
                      "moderation_details": {"moderation_stage": stage, "categories": ["other"]}}}
    e = classify_error(400, body, {})
    assert e.kind is ErrorKind.terminal and e.info(1).moderation_stage == stage
    del body["error"]["moderation_details"]
    assert classify_error(400, body, {}).info(1).moderation_stage == "unknown"
