"""OpenAI synchronous images/edits: pure translation, error paths, and the protocol against the real sandbox
(`python -m editq.sandbox` in a subprocess, real HTTP). Inputs come from examples/ instead of S3 here
(the protocol is given a file reader); the end-to-end test with S3 is in test_pipeline_contract.py."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

from editq.providers.openai import SPEC, OpenAISettings
from editq.providers.openai.protocol import OpenAIProtocol
from editq.providers.types import InputUrls, ProviderRequest
from editq.schemas.job import EditJob, InputRecord
from editq.worker.errors import ErrorKind, ProviderError
from tests import sandbox_proc
from tests.factories import client_of, make_job, run
from tests.factories import example_record as rec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KEY = "sk-test-secret-key-0123456789"
T = TypeVar("T")
job = partial(make_job, "openai", job_id="j1", batch_id="b1", inputs=[rec("mug.png")])
client = partial(client_of, SPEC)

BASELINE: dict[str, Any] = {"latency_s": 0.05, "jitter_s": 0.0, "concurrency": 8, "submit_5xx_rate": 0.0,
                            "submit_429_rate": 0.0, "submit_timeout_rate": 0.0, "job_failure_rate": 0.0,
                            "retry_after_s": 1.0, "render": "real"}


def canonical_job() -> EditJob:
    """The canonical batch in one job: a mask, three reference images, num_images=2, jpeg."""
    return job(images=["mug.png", "bottle.png", "backpack.png"],
               inputs=[rec("mug.png"), rec("bottle.png"), rec("backpack.png")],
               mask="mask_mug.png", mask_input=rec("mask_mug.png"), num_images=2, output_format="jpeg",
               quality="low")


class ExampleInputs:
    """Inputs read from examples/ by their ref (the engine reads S3 by key)."""

    def __init__(self, override: dict[str, bytes] | None = None) -> None:
        self.override = override or {}

    async def read(self, records: Sequence[InputRecord]) -> list[bytes]:
        return [self.override.get(r.ref) or (EXAMPLES / r.ref).read_bytes() for r in records]


def adapter(base_url: str = "http://openai.invalid/v1", **kw: Any) -> OpenAIProtocol:
    return OpenAIProtocol(OpenAISettings(api_key=KEY, base_url=base_url, **kw),  # type: ignore[arg-type]
                          inputs=ExampleInputs())


async def _submit(a: OpenAIProtocol, j: EditJob, transport: httpx.AsyncBaseTransport | None = None) -> Any:
    async with httpx.AsyncClient(transport=transport) as http:
        req = a.build_request(j, InputUrls(images=["https://s3/x"] * len(j.inputs)), None)
        return await a.submit(client(a, http), j, req)


# ---- pure ------------------------------------------------------------------------------------------
def test_build_request_is_the_exact_form() -> None:
    a = OpenAIProtocol(OpenAISettings(api_key=KEY, organization="org-1", project="proj-1"))  # type: ignore[arg-type]
    req = a.build_request(canonical_job(), InputUrls(images=["u1", "u2", "u3"], mask="m"), "https://hook")
    assert (req.method, req.path, req.json, req.files) == ("POST", "/images/edits", None, None)
    assert req.data == {"model": "gpt-image-2", "prompt": "make it sepia", "n": "2", "size": "auto",
                        "quality": "low", "background": "auto", "output_format": "jpeg"}
    assert req.headers == {"OpenAI-Organization": "org-1", "OpenAI-Project": "proj-1"}
    assert KEY not in repr(req)


def test_validate_refuses_with_provider_field_and_allowed_values() -> None:
    a = OpenAIProtocol(OpenAISettings(api_key=KEY))  # type: ignore[arg-type]
    assert a.validate(canonical_job()) == []
    assert a.validate(job(background="transparent")) == [
        "openai: background=transparent is not allowed for gpt-image-2 (OpenAI rejected it at launch and lists it "
        "only as a preview since 2026-08); allowed values: auto, opaque"
    ]
    assert a.validate(job(mask="m", mask_input=rec("sneaker.jpg", "jpeg"))) == [
        "openai: mask is jpeg; allowed format: png (with an alpha channel)",
        "openai: mask is 768x512; allowed: the first image's size 512x512",
    ]


def test_settings_env_and_key_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("EDITQ_OPENAI_") or k.startswith("OPENAI_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-alias")
    s = OpenAISettings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "sk-alias"
    assert (s.base_url, s.timeout_s, s.webhooks) == ("https://api.openai.com/v1", 300.0, False)
    monkeypatch.setenv("EDITQ_OPENAI_API_KEY", "sk-main")
    monkeypatch.setenv("EDITQ_OPENAI_BASE_URL", "http://x/v1")
    monkeypatch.setenv("EDITQ_OPENAI_PRICE_IMAGE_OUT", "15")
    s = OpenAISettings()
    assert s.api_key is not None and s.api_key.get_secret_value() == "sk-main"
    assert s.base_url == "http://x/v1" and s.token_prices().image_out == 15.0
    assert SPEC.synchronous and not SPEC.webhooks and SPEC.auth_scheme == "Bearer"


# ---- error paths (narrow, in-process transport) ------------------------------------------------------
def _raising(exc: Exception) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(("exc", "billed"), [
    (httpx.ReadTimeout("slow"), True),
    (httpx.RemoteProtocolError("peer closed"), True),
    (httpx.ReadError("reset"), True),
    (httpx.ConnectError("refused"), False),
    (httpx.ConnectTimeout("no route"), False),
])
def test_transport_failures_are_retryable_and_marked_maybe_billed(exc: Exception, billed: bool) -> None:
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(), job(), _raising(exc)))
    err = info.value
    assert err.kind is ErrorKind.retryable and err.maybe_billed is billed
    assert KEY not in err.reason and ("may have been processed and billed" in err.reason) is billed


def _answer(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body, headers={"x-request-id": "req_abc", **(headers or {})})

    t = httpx.MockTransport(handler)
    t.seen = seen  # type: ignore[attr-defined]
    return t


def test_error_answers_are_classified() -> None:
    quota = {"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                       "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(), job(), _answer(429, quota, {"retry-after": "1"})))
    assert (info.value.kind, info.value.provider_code, info.value.status_code) == (
        ErrorKind.terminal, "insufficient_quota", 429)
    assert info.value.reason.endswith("(x-request-id req_abc)")

    limited = {"error": {"message": "Rate limit reached for gpt-image-2 on images per min. Please try again in 240ms.",
                         "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(), job(), _answer(429, limited, {"retry-after-ms": "750"})))
    assert info.value.kind is ErrorKind.retryable and info.value.retry_after_s == pytest.approx(0.75)

    echoed = {"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error",
                        "param": None, "code": "invalid_api_key"}}
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(), job(), _answer(401, echoed)))
    assert info.value.kind is ErrorKind.terminal and KEY not in info.value.reason and "***" in info.value.reason

    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(), job(), _answer(503, {"error": {"message": "overloaded", "type": "server_error",
                                                               "param": None, "code": None}})))
    assert info.value.kind is ErrorKind.retryable and not info.value.maybe_billed


def test_mask_without_alpha_is_refused_before_sending() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), "white").save(buf, "PNG")
    a = adapter()
    a.inputs = ExampleInputs({"flat.png": buf.getvalue()})
    t = _answer(200, {})
    flat = rec("mug.png").model_copy(update={"ref": "flat.png"})
    with pytest.raises(ProviderError) as info:
        run(_submit(a, job(mask="flat.png", mask_input=flat), t))
    assert info.value.kind is ErrorKind.terminal
    assert info.value.reason == ("openai: mask has no alpha channel (mode RGB); allowed: a png with an alpha channel "
                                 "(RGBA or LA)")
    assert t.seen == []  # type: ignore[attr-defined]


def test_lost_answer_is_reported_by_poll_as_billed_and_retryable() -> None:
    a = adapter()
    out = run(a.poll(client(a, httpx.AsyncClient()), "req_1", {"sync": True}))
    assert out.done and out.error is not None
    assert out.error.kind is ErrorKind.retryable and out.error.maybe_billed and "req_1" in out.error.reason


# ---- against the real sandbox -------------------------------------------------------------------------
def wait_for(check: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    return sandbox_proc.wait_for(check, timeout, what, interval=0.02)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with sandbox_proc.sandbox_process("--seed", "5") as url:
        yield url


@pytest.fixture
def sb(sandbox: str) -> Iterator[str]:
    httpx.patch(sandbox + "/_sandbox/config", json=BASELINE, timeout=5).raise_for_status()
    yield sandbox
    httpx.patch(sandbox + "/_sandbox/config", json=BASELINE, timeout=5).raise_for_status()


def _log(base: str, request_id: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/_sandbox/requests/{request_id}", timeout=5)
    r.raise_for_status()
    return dict(r.json())


def test_adapter_runs_the_canonical_edit_against_the_sandbox(sb: str) -> None:
    a = adapter(sb + "/openai/v1")
    sub = run(_submit(a, canonical_job()))
    assert sub.request_id.startswith("req_") and sub.outcome is not None and sub.outcome.done
    result = sub.outcome.result
    assert result is not None and len(result.outputs) == 2
    for out in result.outputs:
        assert out.url is None and out.content_type == "image/jpeg" and out.b64
        with Image.open(io.BytesIO(base64.b64decode(out.b64))) as im:
            assert (im.format, im.size) == ("JPEG", (512, 512))
    u = result.usage
    assert u is not None and u.cost_source == "tokens"
    assert u.input_text_tokens is not None and u.input_image_tokens is not None and u.output_image_tokens is not None
    expected = (u.input_text_tokens * 5 + u.input_image_tokens * 8 + u.output_image_tokens * 30) / 1e6
    assert u.output_image_tokens == 2 * 49 and u.cost_usd == pytest.approx(expected)  # low, 512x512: 196/4 each
    assert result.raw["request_id"] == sub.request_id and result.raw["size"] == "512x512"
    entry = _log(sb, sub.request_id)
    assert entry["provider"] == "openai" and entry["status"] == "COMPLETED" and entry["outcome"] == "ok"
    sent = entry["input"]
    assert [(i["field"], i["content_type"]) for i in sent["image"]] == [("image[]", "image/png")] * 3
    assert sent["mask"]["content_type"] == "image/png" and sent["n"] == "2" and sent["output_format"] == "jpeg"
    assert KEY not in str(entry)


def test_moderation_block_is_terminal_with_its_code(sb: str) -> None:
    a = adapter(sb + "/openai/v1")
    with pytest.raises(ProviderError) as info:
        run(_submit(a, job(prompt="please sandbox:moderation this")))
    err = info.value
    assert (err.kind, err.provider_code, err.status_code) == (ErrorKind.terminal, "moderation_blocked", 400)
    assert err.reason.startswith("openai edit: HTTP 400: moderation_blocked: Your request was rejected by the safety")


def test_rate_limit_fault_gives_retry_after(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"submit_429_rate": 1.0, "retry_after_s": 2.0}).raise_for_status()
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(sb + "/openai/v1"), job()))
    assert (info.value.kind, info.value.provider_code, info.value.retry_after_s) == (
        ErrorKind.retryable, "rate_limit_exceeded", 2.0)


def test_read_timeout_is_maybe_billed_and_the_sandbox_still_ran_it(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 1.0}).raise_for_status()
    before = {e["request_id"] for e in httpx.get(sb + "/_sandbox/requests?provider=openai").json()["requests"]}
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(sb + "/openai/v1", timeout_s=0.3), job()))
    assert info.value.kind is ErrorKind.retryable and info.value.maybe_billed

    def finished() -> list[dict[str, Any]]:
        entries = httpx.get(sb + "/_sandbox/requests?provider=openai").json()["requests"]
        return [e for e in entries if e["request_id"] not in before and e["status"] == "COMPLETED"]

    done = wait_for(finished, 10, "the abandoned request to finish")
    assert len(done) == 1 and done[0]["outcome"] == "ok"  # it ran (and would have been billed)


def test_concurrency_cap_holds_requests_open(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 0.3, "concurrency": 1}).raise_for_status()
    httpx.post(sb + "/_sandbox/reset").raise_for_status()
    a = adapter(sb + "/openai/v1")

    async def both() -> list[Any]:
        async with httpx.AsyncClient() as http:
            req = a.build_request(job(), InputUrls(images=["x"]), None)
            c = client(a, http)
            return list(await asyncio.gather(a.submit(c, job(), req), a.submit(c, job(), req)))

    t0 = time.monotonic()
    subs = run(both())
    assert time.monotonic() - t0 >= 0.6 and len({s.request_id for s in subs}) == 2
    stats = httpx.get(sb + "/_sandbox/stats").json()["providers"]["openai"]
    assert stats["max_in_progress"] == 1 and stats["succeeded"] == 2


# ---- the emulator's strictness (raw multipart, OpenAI's envelope) --------------------------------------
def _png(mode: str = "RGBA", size: tuple[int, int] = (512, 512)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _multipart(fields: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    """A multipart body built by hand, so a test controls every part (httpx drops an empty files list)."""
    b = "editq-test-boundary"
    out = b""
    for k, v in fields.items():
        out += f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for name, (fname, data, ctype) in files:
        out += (f'--{b}\r\nContent-Disposition: form-data; name="{name}"; filename="{fname}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


MUG = (EXAMPLES / "mug.png").read_bytes()
OK_FIELDS = {"model": "gpt-image-2", "prompt": "p", "size": "1024x1024"}


@pytest.mark.parametrize(("fields", "files", "status", "param", "code", "message"), [
    (OK_FIELDS, [("image", ("a.png", MUG, "application/octet-stream"))], 400, "image", "unsupported_file_mimetype",
     "Invalid file 'image': unsupported mimetype ('application/octet-stream'). Supported file formats are "
     "'image/jpeg', 'image/png', and 'image/webp'."),
    (OK_FIELDS, [("image[]", ("a.png", MUG, "image/jpeg"))], 400, "image[]", "invalid_image_file",
     "Invalid image file or mode for image 1, please check your image file."),
    ({**OK_FIELDS, "n": "11"}, [("image[]", ("a.png", MUG, "image/png"))], 400, "n", "integer_above_max_value",
     "Invalid 'n': integer above maximum value. Expected a value <= 10, but got 11 instead."),
    ({**OK_FIELDS, "size": "1000x1000"}, [("image[]", ("a.png", MUG, "image/png"))], 400, "size", "invalid_value",
     "Invalid value: '1000x1000'. Custom sizes for gpt-image-2: both dimensions must be multiples of 16."),
    ({**OK_FIELDS, "model": "gpt-image-1.5", "size": "2048x1152"}, [("image[]", ("a.png", MUG, "image/png"))], 400,
     "size", "invalid_value",
     "Invalid value: '2048x1152'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'."),
    ({**OK_FIELDS, "background": "transparent"}, [("image[]", ("a.png", MUG, "image/png"))], 400, "background",
     "unsupported_value", "Transparent backgrounds are not supported for gpt-image-2. Use background 'opaque' or "
     "'auto'."),
    ({**OK_FIELDS, "colour": "red"}, [("image[]", ("a.png", MUG, "image/png"))], 400, "colour", "unknown_parameter",
     "Unknown parameter: 'colour'."),
    ({"model": "gpt-image-2"}, [("image[]", ("a.png", MUG, "image/png"))], 400, "prompt",
     "missing_required_parameter", "Missing required parameter: 'prompt'."),
    (OK_FIELDS, [], 400, "image", "missing_required_parameter", "Missing required parameter: 'image'."),
    (OK_FIELDS, [("image[]", ("a.png", MUG, "image/png"))] * 17, 400, "image", "array_above_max_length",
     "Invalid 'image': too many images. Expected at most 16, but got 17."),
    (OK_FIELDS, [("image[]", ("a.png", MUG, "image/png")), ("mask", ("m.png", _png("RGB"), "image/png"))], 400,
     "mask", "invalid_image_file", "Invalid mask image: the mask must have an alpha channel (got mode RGB); fully "
     "transparent pixels mark the area to edit."),
    (OK_FIELDS, [("image[]", ("a.png", MUG, "image/png")),
                 ("mask", ("m.png", _png("RGBA", (256, 256)), "image/png"))], 400, "mask", "image_size_mismatch",
     "Invalid mask image: the mask (256x256) must have the same dimensions as the image (512x512)."),
    ({**OK_FIELDS, "model": "gpt-image-1"}, [("image[]", ("a.png", MUG, "image/png"))], 404, "model",
     "model_not_found", "The model 'gpt-image-1' does not exist or you do not have access to it."),
])
def test_sandbox_refuses_what_openai_refuses(sb: str, fields: dict[str, str], files: list[Any], status: int,
                                             param: str, code: str, message: str) -> None:
    body, ctype = _multipart(fields, files)
    r = httpx.post(sb + "/openai/v1/images/edits", content=body,
                   headers={"Authorization": "Bearer sk-x", "Content-Type": ctype}, timeout=10)
    assert r.status_code == status, r.text
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    assert r.headers["x-request-id"].startswith("req_")


def test_sandbox_auth_quota_and_json_encoding(sb: str) -> None:
    url = sb + "/openai/v1/images/edits"
    files = [("image[]", ("a.png", MUG, "image/png"))]
    r = httpx.post(url, data=OK_FIELDS, files=files)
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, data=OK_FIELDS, files=files, headers={"Authorization": "Bearer sk-invalid-123456789"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert "sk-invalid-123456789" not in r.text
    r = httpx.post(url, data=OK_FIELDS, files=files, headers={"Authorization": "Bearer sk-sandbox-no-quota"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
    data_uri = "data:image/png;base64," + base64.b64encode(MUG).decode()
    r = httpx.post(url, json={**OK_FIELDS, "images": [{"image_url": data_uri}], "n": 1},
                   headers={"Authorization": "Bearer sk-x"}, timeout=20)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == "1024x1024" and len(body["data"]) == 1 and body["usage"]["output_tokens"] > 0
    r = httpx.post(url, json={**OK_FIELDS, "images": [{"file_id": "file-1"}]}, headers={"Authorization": "Bearer k"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "images[0]"


def test_request_form_round_trips_through_the_sandbox_parser() -> None:
    from editq.providers.openai.emulator import params_from_form, parse_multipart

    a = OpenAIProtocol(OpenAISettings(api_key=KEY))  # type: ignore[arg-type]
    j = canonical_job()
    req: ProviderRequest = a.build_request(j, InputUrls(images=[]), None)
    from editq.providers.openai.common import multipart_form

    _, files = multipart_form({}, [((EXAMPLES / r.ref).read_bytes(), r.format) for r in j.inputs],
                              (EXAMPLES / "mask_mug.png").read_bytes())
    built = httpx.Request("POST", "http://x/images/edits", data=req.data, files=files)
    params = params_from_form(parse_multipart(built.headers["content-type"], built.read()))
    assert (params.model, params.n, params.size, params.output_format, params.quality) == (
        "gpt-image-2", 2, "auto", "jpeg", "low")
    assert params.images == [(EXAMPLES / n).read_bytes() for n in ("mug.png", "bottle.png", "backpack.png")]
    assert params.mask == (EXAMPLES / "mask_mug.png").read_bytes()


@pytest.mark.parametrize(("patch", "status"), [({"submit_5xx_rate": 1.0}, 500), ({"job_failure_rate": 1.0}, 500)])
def test_server_errors_are_retryable_and_not_billed(sb: str, patch: dict[str, float], status: int) -> None:
    httpx.patch(sb + "/_sandbox/config", json=patch).raise_for_status()
    with pytest.raises(ProviderError) as info:
        run(_submit(adapter(sb + "/openai/v1"), job()))
    err = info.value
    assert (err.kind, err.status_code, err.maybe_billed) == (ErrorKind.retryable, status, False)
    assert err.reason.startswith("openai edit: HTTP 500: server_error: The server had an error")


# ---- the JSON encoding's types (EditImageBodyJsonParam in OpenAI's OpenAPI document) -------------------------
def _json_edit(sb: str, **fields: Any) -> httpx.Response:
    data_uri = "data:image/png;base64," + base64.b64encode(MUG).decode()
    body = {"model": "gpt-image-2", "prompt": "p", "images": [{"image_url": data_uri}], **fields}
    return httpx.post(sb + "/openai/v1/images/edits", json=body, headers={"Authorization": "Bearer sk-x"}, timeout=20)


@pytest.mark.parametrize(("field", "value", "expected", "got"), [
    ("n", "2", "an integer", "a string"),  # n: {"type": "integer"}: the string "2" is not one in JSON
    ("n", True, "an integer", "a boolean"),
    ("n", 1.5, "an integer", "a decimal"),
    ("output_compression", "80", "an integer", "a string"),
    ("prompt", 5, "a string", "an integer"),
    ("size", 1024, "a string", "an integer"),
    ("stream", "false", "a boolean", "a string"),
])
def test_sandbox_json_refuses_a_value_of_the_wrong_type(sb: str, field: str, value: Any, expected: str,
                                                        got: str) -> None:
    r = _json_edit(sb, **{field: value})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": f"Invalid type for '{field}': expected {expected}, but got {got} instead.",
                                  "type": "invalid_request_error", "param": field, "code": "invalid_type"}}


def test_sandbox_json_takes_explicit_null_as_the_documented_default(sb: str) -> None:
    nulls = {k: None for k in ("n", "size", "quality", "background", "output_format", "output_compression",
                               "moderation", "input_fidelity", "stream")}
    r = _json_edit(sb, **nulls)
    assert r.status_code == 200, r.text
    body = r.json()
    # defaults: n 1, size auto (the input's 512x512), quality auto (= medium), output_format png
    assert len(body["data"]) == 1 and body["output_format"] == "png" and body["size"] == "512x512"
    assert body["usage"]["output_tokens"] == 439  # medium: 1756 per 1024x1024, scaled by area
    r = _json_edit(sb, model=None)  # model null: the schema's default gpt-image-1.5
    assert r.status_code == 200, r.text


def test_sandbox_json_gpt_image_sizes_and_their_usage(sb: str) -> None:
    r = _json_edit(sb, size="1536x1024", quality="low", n=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["size"] == "1536x1024" and len(body["data"]) == 2
    assert body["usage"]["output_tokens"] == 2 * 294  # low: 196 per 1024x1024, x1.5 for 1536x1024
    assert body["usage"]["output_tokens_details"] == {"text_tokens": 0, "image_tokens": 588}
    r = _json_edit(sb, size="1000x1000")
    assert r.status_code == 400 and r.json()["error"]["param"] == "size"
