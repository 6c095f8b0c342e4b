"""Contract test: the official `openai` SDK (3.x, httpx2 transport), pointed at the sandbox by base URL only,
runs the image-edit flow unmodified, and sees OpenAI's errors as the SDK's own exception types."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.sandbox_proc import sandbox_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with sandbox_process() as url:
        yield url


def client(base: str, key: str = "sk-sdk-test") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=f"{base}/openai/v1", max_retries=0)


def _files(*names: str) -> list[tuple[str, bytes, str]]:
    return [(n, (EXAMPLES / n).read_bytes(), "image/png") for n in names]


def test_sdk_edit_with_three_images_mask_two_outputs_jpeg(base: str) -> None:
    resp = client(base).images.edit(
        model="gpt-image-2",
        image=_files("mug.png", "bottle.png", "backpack.png"),
        mask=("mask_mug.png", (EXAMPLES / "mask_mug.png").read_bytes(), "image/png"),
        prompt="Recolour the label to lemon yellow",
        n=2,
        size="1024x1536",
        quality="low",
        output_format="jpeg",
    )
    assert resp._request_id and resp._request_id.startswith("req_")  # type: ignore[attr-defined]
    assert resp.data is not None and len(resp.data) == 2
    for item in resp.data:
        assert item.b64_json is not None and item.url is None
        with Image.open(io.BytesIO(base64.b64decode(item.b64_json))) as im:
            assert (im.format, im.size) == ("JPEG", (1024, 1536))
    assert (resp.size, resp.output_format, resp.quality, resp.background) == ("1024x1536", "jpeg", "low", "opaque")
    assert resp.usage is not None and resp.usage.output_tokens == 2 * 294  # 196 * 1.5 per low 1024x1536 image
    assert resp.usage.input_tokens_details.image_tokens == 3 * (85 + 170)
    # what the SDK actually sent: repeated image[] parts with explicit types, and the mask
    entry = httpx.get(f"{base}/_sandbox/requests/{resp._request_id}").json()  # type: ignore[attr-defined]
    assert [i["field"] for i in entry["input"]["image"]] == ["image[]"] * 3
    assert entry["input"]["mask"]["content_type"] == "image/png"


def test_sdk_single_image_goes_out_as_image(base: str) -> None:
    resp = client(base).images.edit(model="gpt-image-2", image=_files("mug.png")[0], prompt="sepia", size="auto")
    assert resp.data is not None and len(resp.data) == 1 and resp.size == "512x512"
    entry = httpx.get(f"{base}/_sandbox/requests/{resp._request_id}").json()  # type: ignore[attr-defined]
    assert [i["field"] for i in entry["input"]["image"]] == ["image"]


def test_sdk_sees_openai_errors_as_its_exceptions(base: str) -> None:
    c = client(base)
    with pytest.raises(openai.BadRequestError) as bad:
        c.images.edit(model="gpt-image-2", image=(EXAMPLES / "mug.png").read_bytes(), prompt="x")  # octet-stream
    assert bad.value.code == "unsupported_file_mimetype" and bad.value.param == "image"
    assert "unsupported mimetype ('application/octet-stream')" in bad.value.message
    with pytest.raises(openai.BadRequestError) as blocked:
        c.images.edit(model="gpt-image-2", image=_files("mug.png")[0], prompt="sandbox:moderation please")
    assert blocked.value.code == "moderation_blocked" and blocked.value.type == "image_generation_user_error"
    assert isinstance(blocked.value.body, dict) and blocked.value.body["moderation_details"]["moderation_stage"]
    with pytest.raises(openai.RateLimitError) as quota:
        client(base, "sk-sandbox-no-quota").images.edit(model="gpt-image-2", image=_files("mug.png")[0], prompt="x")
    assert quota.value.code == "insufficient_quota"
    with pytest.raises(openai.AuthenticationError):
        client(base, "sk-invalid-abcdefgh").images.edit(model="gpt-image-2", image=_files("mug.png")[0], prompt="x")
    with pytest.raises(openai.NotFoundError):
        c.images.edit(model="gpt-image-1", image=_files("mug.png")[0], prompt="x")
