"""Oxen.ai images/edit (providers/oxen/): pure translation, error classification, the emulator's strictness, and
the protocol against the real sandbox (`python -m editq.sandbox` in a subprocess, real HTTP)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from editq.providers.oxen import SPEC, OxenSettings
from editq.providers.oxen.protocol import OxenProtocol, aspect_and_tier, classify_oxen_error, white_is_edit
from editq.providers.types import InputUrls
from editq.schemas.job import EditJob, InputRecord
from editq.worker.errors import ErrorKind, ProviderError
from tests.factories import client_of as _client_of
from tests.factories import data_uri as _uri
from tests.factories import example_record as rec
from tests.factories import make_job
from tests.sandbox_proc import sandbox_process

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KEY = "oxen-secret-key-42424242"
job = partial(make_job, "oxen", job_id="j1", batch_id="b1", inputs=[rec("mug.png")], quality="low")
client_of = partial(_client_of, SPEC)


def adapter(base_url: str = "http://oxen.invalid/api/ai", **kw: Any) -> OxenProtocol:
    return OxenProtocol(OxenSettings(api_key=KEY, base_url=base_url, **kw))  # type: ignore[arg-type]


# ---- pure ---------------------------------------------------------------------------------------------
def test_build_request_is_the_exact_body() -> None:
    j = job(images=["mug.png", "bottle.png", "backpack.png"],
            inputs=[rec("mug.png"), rec("bottle.png"), rec("backpack.png")], output_format="jpeg",
            mask="m", mask_input=rec("mask_mug.png"))
    req = adapter(target_namespace="acme").build_request(j, InputUrls(images=["u1", "u2", "u3"], mask="m1"), None)
    assert (req.method, req.path) == ("POST", "/images/edit")
    assert req.json == {"model": "gpt-image-2", "prompt": "make it sepia", "input_image": ["u1", "u2", "u3"],
                        "aspect_ratio": "auto", "resolution": "1K", "quality": "low", "output_format": "jpeg",
                        "response_format": "url", "mask_url": "m1", "target_namespace": "acme"}
    mapped = adapter(size_mapping=True, model="gpt-image-2-edit").build_request(
        job(size="1536x1024"), InputUrls(images=["u"]), None)
    assert mapped.json is not None
    assert (mapped.json["model"], mapped.json["aspect_ratio"], mapped.json["resolution"]) == (
        "gpt-image-2-edit", "3:2", "1K")
    assert aspect_and_tier(3840, 2160) == ("16:9", "4K") and aspect_and_tier(2048, 2048) == ("1:1", "2K")
    assert aspect_and_tier(1024, 1008) is None


def test_validate_refuses_what_oxen_cannot_do() -> None:
    a = adapter()
    assert a.validate(job()) == []
    assert a.validate(job(num_images=2, size="1536x1024", quality="auto", background="transparent")) == [
        "oxen: num_images=2 is not allowed; allowed values: 1",
        "oxen: size=1536x1024 is not allowed; allowed values: auto (Oxen's gpt-image-2 takes an aspect ratio and a "
        "1K/2K/4K tier, not pixels; EDITQ_OXEN_SIZE_MAPPING=1 maps WxH sizes whose ratio is one of Oxen's)",
        "oxen: quality=auto is not allowed; allowed values: low, medium, high",
        "oxen: background=transparent is not allowed (Oxen's gpt-image-2 has no background parameter); allowed "
        "values: auto, opaque",
    ]
    assert adapter(size_mapping=True).validate(job(size="1024x1008")) == [
        "oxen: size=1024x1008 is not allowed; allowed values: auto, or WxH with a ratio of 1:1, 16:9, 9:16, 4:3, "
        "3:4, 3:2, 2:3, 21:9, 9:21"
    ]
    assert adapter(size_mapping=True).validate(job(size="1536x1024")) == []
    assert a.validate(job(model="flux-2-dev")) == [
        "oxen: model=flux-2-dev is not allowed; allowed values: openai/gpt-image-2/edit, openai/gpt-image-2, "
        "gpt-image-2 (sent to Oxen as gpt-image-2)"
    ]
    assert a.validate(job(mask="m", mask_input=rec("sneaker.jpg", "jpeg"))) == [
        "oxen: mask is jpeg; allowed format: png (with an alpha channel, transparent = edit)",
        "oxen: mask is 768x512; allowed: the first image's size 512x512",
    ]


def test_mask_conversion_white_is_edit() -> None:
    canonical = (EXAMPLES / "mask_mug.png").read_bytes()
    out = Image.open(io.BytesIO(white_is_edit(canonical)))
    alpha = Image.open(io.BytesIO(canonical)).convert("RGBA").getchannel("A")
    assert out.mode == "L" and out.size == alpha.size
    assert [255 if a == 0 else 0 for a in alpha.tobytes()] == list(out.tobytes())
    assert 0 < sum(1 for v in out.tobytes() if v == 255) < out.size[0] * out.size[1]


def test_error_classification() -> None:
    invalid = {"error": {"type": "invalid_params", "title": "Invalid parameters supplied, please check your request "
                         "and try again.", "detail": "quality must be one of: low, medium, high"},
               "status": "error", "status_message": "invalid_params"}
    e = classify_oxen_error(400, invalid, {}, request_id="r1")
    assert (e.kind, e.provider_code, e.status_code) == (ErrorKind.terminal, "invalid_params", 400)
    assert e.reason == ("oxen edit: HTTP 400: invalid_params: Invalid parameters supplied, please check your request "
                        "and try again.: quality must be one of: low, medium, high (request r1)")
    assert classify_oxen_error(404, {"error": {"message": "Model not found: x"}}, {}).kind is ErrorKind.terminal
    limited = classify_oxen_error(429, {"error": {"type": "rate_limit_exceeded"}},
                                  httpx.Headers({"Retry-After": "7"}))
    assert limited.kind is ErrorKind.retryable and limited.retry_after_s == 7.0
    assert classify_oxen_error(402, {"error": {"title": "Insufficient credits"}}, {}).kind is ErrorKind.terminal
    fetch = classify_oxen_error(400, {"error": {"type": "invalid_params", "detail": "403 Client Error: Forbidden for "
                                                "url: https://s3/x"}}, {})
    assert fetch.kind is ErrorKind.unknown
    # our S3 unreachable (frozen, down): the provider's download timed out or got a 5xx; our outage, retried
    for reason in ("Failed to download the file: ReadTimeout.", "Failed to download the file: HTTP 503.",
                   "Failed to download the file: ConnectError."):
        outage = classify_oxen_error(400, {"error": {"type": "invalid_params", "detail": f"400 Client Error: {reason} "
                                                     "for url: http://127.0.0.1:5000/editq/inputs/x.png"}}, {})
        assert outage.kind is ErrorKind.retryable, reason
    assert classify_oxen_error(504, "gateway", {}).maybe_billed
    client_of(adapter(), httpx.AsyncClient())  # the client registers the key with the one redactor
    leaked = classify_oxen_error(401, {"error": {"detail": f"bad key {KEY}"}}, {})
    assert KEY not in leaked.reason and leaked.kind is ErrorKind.terminal


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("EDITQ_OXEN_", "OXEN_")):
            monkeypatch.delenv(k)
    monkeypatch.setenv("OXEN_API_KEY", "k1")
    monkeypatch.setenv("EDITQ_OXEN_MODEL", "gpt-image-2-edit")
    monkeypatch.setenv("EDITQ_OXEN_RESOLUTION", "2K")
    s = OxenSettings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "k1"
    assert (s.base_url, s.model, s.resolution, s.timeout_s) == ("https://hub.oxen.ai/api/ai", "gpt-image-2-edit",
                                                                "2K", 300.0)
    assert SPEC.synchronous and not SPEC.webhooks and not s.webhooks


def test_transport_failures_after_sending_are_maybe_billed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            a = adapter()
            await a.submit(client_of(a, http), job(), a.build_request(job(), InputUrls(images=["u"]), None))

    with pytest.raises(ProviderError) as info:
        asyncio.run(go())
    assert info.value.kind is ErrorKind.retryable and info.value.maybe_billed and KEY not in info.value.reason


def _send(a: OxenProtocol, j: EditJob, handler: Any, inputs: InputUrls | None = None) -> Any:
    async def go() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await a.submit(client_of(a, http), j, a.build_request(j, inputs or InputUrls(images=["u"]), None))

    return asyncio.run(go())


def test_the_edit_call_holds_the_connection_with_its_own_timeouts() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"model": "gpt-image-2", "created": 7, "images": [{"url": "https://o/x.png"}]},
                              headers={"x-request-id": "rq-1"})

    a = adapter(timeout_s=123.0, connect_timeout_s=4.0)
    req = a.build_request(job(), InputUrls(images=["u"]), None)
    assert (req.timeout_s, req.connect_timeout_s, req.what) == (123.0, 4.0, "edit")
    sub = _send(a, job(), handler)
    (request,) = seen
    assert request.extensions["timeout"] == {"connect": 4.0, "read": 123.0, "write": 123.0, "pool": 123.0}
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert str(request.url) == "http://oxen.invalid/api/ai/images/edit"
    assert sub.request_id == "rq-1" and sub.handle == {"sync": True, "created": 7}
    assert sub.outcome.done and [o.url for o in sub.outcome.result.outputs] == ["https://o/x.png"]


def test_a_failure_to_connect_is_not_sent_and_not_billed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("no route")

    with pytest.raises(ProviderError) as info:
        _send(adapter(), job(), handler)
    assert info.value.kind is ErrorKind.retryable and not info.value.maybe_billed
    assert info.value.reason == "oxen edit: not sent (ConnectTimeout)"


def test_a_connection_lost_after_sending_may_have_been_billed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed")

    with pytest.raises(ProviderError) as info:
        _send(adapter(), job(), handler)
    assert info.value.kind is ErrorKind.retryable and info.value.maybe_billed
    assert "may have been processed and billed" in info.value.reason


def test_a_2xx_answer_that_cannot_be_read_is_malformed_and_maybe_billed() -> None:
    with pytest.raises(ProviderError) as info:
        _send(adapter(), job(), lambda r: httpx.Response(200, text="<html>ok</html>"))
    assert info.value.kind is ErrorKind.unknown and info.value.maybe_billed
    assert info.value.reason.startswith("oxen edit: malformed answer: HTTP 200 with a body that is not a JSON object")


def test_error_answers_are_classified_through_the_client() -> None:
    body = {"error": {"type": "invalid_params", "detail": f"bad key {KEY}"}, "status": "error"}
    with pytest.raises(ProviderError) as info:
        _send(adapter(), job(), lambda r: httpx.Response(400, json=body, headers={"x-request-id": "rq-9"}))
    err = info.value
    assert (err.kind, err.status_code, err.provider_code) == (ErrorKind.terminal, 400, "invalid_params")
    assert KEY not in err.reason and err.reason.endswith("(request rq-9)")


class FakeMasks:
    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.stored: list[tuple[bytes, str]] = []

    async def read(self, rec: InputRecord) -> bytes:
        return self.blob

    async def put_png(self, data: bytes, sha256: str) -> str:
        self.stored.append((data, sha256))
        return f"https://s3.test/inputs/{sha256}.png"


def test_the_mask_is_sent_converted_and_stored_content_addressed() -> None:
    canonical = (EXAMPLES / "mask_mug.png").read_bytes()
    masks = FakeMasks(canonical)
    a = OxenProtocol(adapter().settings, masks=masks)
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        sent.append(json.loads(request.content))
        return httpx.Response(200, json={"images": [{"url": "https://o/x.png"}]})

    j = job(mask="mask_mug.png", mask_input=rec("mask_mug.png"))
    _send(a, j, handler, InputUrls(images=["u"], mask="https://s3.test/inputs/canonical.png"))
    ((data, digest),) = masks.stored
    assert data == white_is_edit(canonical) and digest == hashlib.sha256(data).hexdigest()
    assert sent[0]["mask_url"] == f"https://s3.test/inputs/{digest}.png"


def test_a_mask_that_does_not_match_its_record_or_has_no_alpha_is_refused_unsent() -> None:
    calls: list[httpx.Request] = []
    j = job(mask="mask_mug.png", mask_input=rec("mask_mug.png"))
    inputs = InputUrls(images=["u"], mask="https://s3.test/m.png")
    with pytest.raises(ProviderError) as info:
        _send(OxenProtocol(adapter().settings, masks=FakeMasks(b"other")), j, calls.append, inputs)
    assert info.value.kind is ErrorKind.terminal and "does not match its sha256" in info.value.reason
    opaque = io.BytesIO()
    Image.new("RGB", (512, 512)).save(opaque, format="PNG")
    no_alpha = dict(job(mask="m.png", mask_input=rec("mask_mug.png")).mask_input.model_dump(),  # type: ignore[union-attr]
                    sha256=hashlib.sha256(opaque.getvalue()).hexdigest())
    j2 = job(mask="m.png", mask_input=InputRecord(**no_alpha))
    with pytest.raises(ProviderError) as info:
        _send(OxenProtocol(adapter().settings, masks=FakeMasks(opaque.getvalue())), j2, calls.append, inputs)
    assert info.value.provider_code == "invalid_mask" and "no alpha channel" in info.value.reason
    assert calls == []


def test_a_lost_synchronous_answer_is_billed_and_redone() -> None:
    out = asyncio.run(adapter().poll(client_of(adapter(), httpx.AsyncClient()), "oxen-1", {"sync": True}))
    assert out.done and out.error is not None and out.error.maybe_billed and out.error.kind is ErrorKind.retryable


# ---- against the real sandbox ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with sandbox_process() as url:
        yield url


def test_adapter_edits_three_references_as_jpeg_against_the_sandbox(sandbox: str) -> None:
    a = adapter(sandbox + "/oxen/api/ai")
    j = job(images=["mug.png", "bottle.png", "backpack.png"],
            inputs=[rec("mug.png"), rec("bottle.png"), rec("backpack.png")], output_format="jpeg")

    async def go() -> Any:
        async with httpx.AsyncClient() as http:
            req = a.build_request(j, InputUrls(images=[_uri("mug.png"), _uri("bottle.png"), _uri("backpack.png")]),
                                  None)
            sub = await a.submit(client_of(a, http), j, req)
            assert sub.outcome is not None and sub.outcome.result is not None
            out = sub.outcome.result.outputs
            assert len(out) == 1 and out[0].url and out[0].content_type == "image/jpeg"
            body = (await http.get(out[0].url)).content
            return sub, body

    sub, body = asyncio.run(go())
    assert sub.request_id.startswith("oxen-")
    assert sub.outcome.result.raw["model"] == "gpt-image-2"
    with Image.open(io.BytesIO(body)) as im:
        assert (im.format, im.size) == ("JPEG", (1024, 1024))  # aspect auto (1:1 input), tier 1K
    log = httpx.get(sandbox + "/_sandbox/requests", params={"provider": "oxen"}).json()["requests"]
    assert log[-1]["input"]["aspect_ratio"] == "auto" and len(log[-1]["input"]["input_image"]) == 3
    assert KEY not in str(log)


@pytest.mark.parametrize(("body", "status", "expected"), [
    ({"model": "gpt-image-2", "prompt": "p", "input_image": ["x"], "num_images": 2}, 400,
     {"error": {"type": "invalid_params", "title": "Invalid parameters supplied, please check your request and try "
                "again.", "detail": "Unknown parameter(s) for gpt-image-2: num_images."}, "status": "error",
      "status_message": "invalid_params"}),
    ({"model": "gpt-image-2", "prompt": "p", "input_image": ["x"], "quality": "auto"}, 400,
     {"error": {"type": "invalid_params", "title": "Invalid parameters supplied, please check your request and try "
                "again.", "detail": "quality must be one of: low, medium, high (got 'auto')."}, "status": "error",
      "status_message": "invalid_params"}),
    ({"model": "gpt-image-2-edit", "prompt": "p", "input_image": ["x"]}, 404,
     {"error": {"message": "Model not found: gpt-image-2-edit"}}),
    ({"model": "gpt-image-2", "prompt": "p", "input_image": []}, 400,
     {"error": {"type": "invalid_params", "title": "Invalid parameters supplied, please check your request and try "
                "again.", "detail": "input_image must be a non-empty array of image URLs for images/edit."},
      "status": "error", "status_message": "invalid_params"}),
])
def test_sandbox_refuses_what_oxen_refuses(sandbox: str, body: dict[str, Any], status: int,
                                           expected: dict[str, Any]) -> None:
    r = httpx.post(sandbox + "/oxen/api/ai/images/edit", json=body, headers={"Authorization": "Bearer k"})
    assert (r.status_code, r.json()) == (status, expected)


def test_sandbox_auth_credits_and_bad_input_url(sandbox: str) -> None:
    url = sandbox + "/oxen/api/ai/images/edit"
    ok = {"model": "gpt-image-2", "prompt": "p", "input_image": [_uri("mug.png")]}
    r = httpx.post(url, json=ok)
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthenticated"
    r = httpx.post(url, json=ok, headers={"Authorization": "Bearer oxen-no-credits"})
    assert r.status_code == 402 and r.json()["error"]["title"] == "Insufficient credits"
    missing = {**ok, "input_image": [sandbox + "/files/00000000000000000000000000000000.png"]}
    r = httpx.post(url, json=missing, headers={"Authorization": "Bearer k"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["detail"].startswith("404 Client Error: ")
    assert classify_oxen_error(r.status_code, r.json(), r.headers).kind is ErrorKind.unknown
    r = httpx.post(url, json={**ok, "response_format": "b64_json", "aspect_ratio": "16:9"},
                   headers={"Authorization": "Bearer k"}, timeout=20)
    assert r.status_code == 200
    with Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["b64_json"]))) as im:
        assert im.size == (2048, 1152)  # Oxen's default tier is 2K


def test_spec_matches_the_old_adapter() -> None:
    assert (SPEC.name, SPEC.synchronous, SPEC.webhooks, SPEC.batches, SPEC.auth_scheme) == (
        "oxen", True, False, False, "Bearer")
    assert SPEC.local_env("http://sb:1") == {"EDITQ_OXEN_BASE_URL": "http://sb:1/oxen/api/ai",
                                             "EDITQ_OXEN_API_KEY": "oxen-sandbox-key"}
    assert isinstance(SPEC.load_protocol(), OxenProtocol)


def test_contract_cases_hold_against_validate() -> None:
    from editq.providers.oxen.cases import CASES

    a = adapter()
    for fields in CASES.accepted:
        assert a.validate(job(**fields)) == [], fields
    for fields, words in CASES.refused:
        extra: dict[str, Any] = {"mask_input": rec("mask_mug.png")} if "mask" in fields else {}
        problems = a.validate(job(**fields, **extra))
        assert any(p.startswith("oxen: ") and words in p for p in problems), (fields, problems)


# ---- emulator faithfulness (shared/reference/provider-replicate-wavespeed-oxen.md §6) ---------------------
def test_emulator_output_sizes_are_ones_gpt_image_2_makes() -> None:
    from editq.providers.oxen.emulator import ASPECT_RATIOS, RESOLUTIONS, output_size
    from editq.schemas.params import size_problems

    for aspect in ASPECT_RATIOS:
        for tier in RESOLUTIONS:
            for first in ((512, 512), (768, 512), (100, 1000)):
                size = output_size(aspect, tier, first)
                assert size_problems(*size) == [], (aspect, tier, first, size)
    assert output_size("16:9", "1K", (1, 1)) == (1088, 608)  # 1024x576 is below the pixel floor
    assert output_size("1:1", "4K", (1, 1)) == (2880, 2880)  # 3840x3840 is above the pixel cap
    assert output_size("16:9", "2K", (1, 1)) == (2048, 1152) and output_size("auto", "1K", (512, 512)) == (1024, 1024)


@pytest.mark.parametrize(("extra", "detail"), [
    ({"target_namespace": 7}, "target_namespace must be a non-empty string (a user or organization name)."),
    ({"target_namespace": ""}, "target_namespace must be a non-empty string (a user or organization name)."),
    ({"mask_url": 5}, "mask_url must be a URI."),
    ({"prompt": 5}, "prompt is required and must be a non-empty string."),
    ({"input_image": "https://x/a.png"}, "input_image must be a non-empty array of image URLs for images/edit."),
    ({"resolution": "2k"}, "resolution must be one of: 1K, 2K, 4K (got '2k')."),
    ({"aspect_ratio": None}, "aspect_ratio must be one of: auto, 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 21:9, 9:21 "
                             "(got None)."),
    ({"quality": True}, "quality must be one of: low, medium, high (got True)."),
])
def test_emulator_refuses_wrong_types_as_oxen(extra: dict[str, Any], detail: str) -> None:
    from editq.providers.oxen.emulator import OxenError, parse_params

    with pytest.raises(OxenError) as info:
        parse_params({"model": "gpt-image-2", "prompt": "p", "input_image": ["https://x/a.png"], **extra})
    assert (info.value.status, info.value.etype, info.value.detail) == (400, "invalid_params", detail)


def test_emulator_accepts_documented_defaults_and_null_where_there_is_no_default() -> None:
    from editq.providers.oxen.emulator import parse_params

    params = parse_params({"model": "gpt-image-2", "prompt": "p", "input_image": ["https://x/a.png"],
                           "aspect_ratio": "16:9", "resolution": "2K", "quality": "high", "output_format": "png",
                           "response_format": "url", "mask_url": None, "target_namespace": None})
    assert (params.aspect_ratio, params.resolution, params.quality, params.mask_url) == ("16:9", "2K", "high", None)
    assert parse_params({"model": "gpt-image-2", "prompt": "p", "input_image": ["https://x/a.png"],
                         "target_namespace": "acme"}).resolution == "2K"
