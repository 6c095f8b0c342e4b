"""The sandbox's OpenAI Files + Batch emulator, over real HTTP, driven by the official `openai` SDK and by hand.

The SDK is pointed at the sandbox by `base_url` only and runs unmodified (openai 3.x sends through httpx2).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from editq.sandbox.config import SandboxConfig
from editq.sandbox.testing import running_sandbox
from tests.conftest import EXAMPLES
from tests.factories import data_uri as _uri

ENDED = ("completed", "failed", "expired", "cancelled")
AUTH = {"Authorization": "Bearer sk-sandbox-test"}


@pytest.fixture(scope="module")
def sb() -> Iterator[str]:
    with running_sandbox(SandboxConfig(latency_s=0.05, jitter_s=0.0, concurrency=4, seed=11)) as base:
        yield base


@pytest.fixture
def client(sb: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sb}/openai/v1", api_key="sk-sandbox-test", max_retries=0)


def _line(cid: str, **body: Any) -> dict[str, Any]:
    base = {"model": "gpt-image-2", "prompt": "studio shot, warm light", "images": [{"image_url": _uri("mug.png")}],
            "n": 1, "size": "auto", "quality": "low", "output_format": "png"}
    base.update(body)
    return {"custom_id": cid, "method": "POST", "url": "/v1/images/edits", "body": base}


def _jsonl(lines: list[Any]) -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def _wait(client: openai.OpenAI, batch_id: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ENDED:
            batch.seen = seen  # type: ignore[attr-defined]
            return batch
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.01)


def _read(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    raw = client.files.content(file_id).content
    return {json.loads(x)["custom_id"]: json.loads(x) for x in raw.splitlines() if x.strip()}


# ---- the SDK contract: files.create(purpose="batch") -> batches.create -> retrieve -> files.content ------------------
def test_sdk_canonical_batch_masked_three_refs_two_jpegs(client: openai.OpenAI) -> None:
    canonical = _line("canon", images=[{"image_url": _uri(n)} for n in ("mug.png", "bottle.png", "watch.png")],
                      mask={"image_url": _uri("mask_mug.png")}, n=2, output_format="jpeg",
                      prompt='Redesign the label: "FRESH BREW"')
    plain = _line("plain", prompt="black and white")
    upload = client.files.create(file=("jobs.jsonl", _jsonl([canonical, plain]), "application/jsonl"),
                                 purpose="batch")
    assert (upload.object, upload.purpose, upload.status, upload.filename) == ("file", "batch", "processed",
                                                                               "jobs.jsonl")
    assert upload.bytes == len(_jsonl([canonical, plain])) and upload.id.startswith("file-")
    assert client.files.retrieve(upload.id).bytes == upload.bytes
    created = client.batches.create(input_file_id=upload.id, endpoint="/v1/images/edits", completion_window="24h",
                                    metadata={"run": "contract"})
    assert (created.status, created.endpoint, created.completion_window) == ("validating", "/v1/images/edits", "24h")
    assert created.metadata == {"run": "contract"} and created.expires_at == created.created_at + 86_400
    done = _wait(client, created.id)
    assert done.status == "completed" and done.error_file_id is None and done.model == "gpt-image-2"
    assert done.seen[-1] == "completed" and done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.request_counts is not None and (done.request_counts.total, done.request_counts.completed,
                                                done.request_counts.failed) == (2, 2, 0)
    out = _read(client, done.output_file_id)
    assert set(out) == {"canon", "plain"}
    line = out["canon"]
    assert line["error"] is None and line["id"].startswith("batch_req_")
    resp = line["response"]
    assert resp["status_code"] == 200 and resp["request_id"].startswith("req_")
    body = resp["body"]
    assert (body["output_format"], body["size"], body["quality"], len(body["data"])) == ("jpeg", "512x512", "low", 2)
    for image in body["data"]:
        with Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))) as im:
            assert (im.format, im.size) == ("JPEG", (512, 512))
    usage = body["usage"]
    assert usage["input_tokens_details"]["image_tokens"] == 3 * (85 + 170 * 1)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert done.usage is not None
    assert done.usage.output_tokens == usage["output_tokens"] + out["plain"]["response"]["body"]["usage"][
        "output_tokens"]
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    listed = client.batches.list(limit=100)
    assert created.id in [b.id for b in listed.data]


# ---- validation of the input file (the whole batch fails, nothing runs) ---------------------------------------------
def test_validation_failures_name_the_line(client: openai.OpenAI, sb: str) -> None:
    lines: list[Any] = [
        _line("a"),
        {**_line("b"), "url": "/v1/images/generations"},
        _line("a"),
        b"{not json",
        {**_line("c"), "method": "GET"},
        {"custom_id": "d", "method": "POST", "url": "/v1/images/edits"},
        _line("e", model="gpt-image-1.5"),
    ]
    f = client.files.create(file=("bad.jsonl", _jsonl(lines)), purpose="batch")
    before = httpx.get(f"{sb}/_sandbox/stats").json()["providers"]["openai_batch"]["accepted"]
    batch = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits",
                                                completion_window="24h").id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    got = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert got == [(2, "invalid_url", "url"), (3, "duplicate_custom_id", "custom_id"), (4, "invalid_json_line", None),
                   (5, "invalid_method", "method"), (6, "missing_required_parameter", "body"),
                   (7, "mismatched_model", "body.model")]
    assert "does not match the batch endpoint '/v1/images/edits'" in (batch.errors.data[0].message or "")
    after = httpx.get(f"{sb}/_sandbox/stats").json()["providers"]["openai_batch"]["accepted"]
    assert after == before, "a failed batch must not run any line"


def test_bodies_are_checked_per_line_like_the_sync_json_form(client: openai.OpenAI) -> None:
    lines = [
        _line("ok"),
        _line("n11", n=11),
        _line("size", size="1000x1000"),
        _line("unknown", colour="red"),
        _line("transparent", background="transparent"),
        _line("modblock", prompt="sandbox:moderation test"),
        _line("gif", images=[{"image_url": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}]),
        _line("maskjpeg", mask={"image_url": _uri("sneaker.jpg")}),
    ]
    f = client.files.create(file=("b.jsonl", _jsonl(lines)), purpose="batch")
    batch = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits",
                                                completion_window="24h").id)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 7)
    assert set(_read(client, batch.output_file_id)) == {"ok"}
    errors = _read(client, batch.error_file_id)
    codes = {cid: (e["response"]["status_code"], e["response"]["body"]["error"]["code"],
                   e["response"]["body"]["error"]["param"]) for cid, e in errors.items()}
    assert codes == {
        "n11": (400, "integer_above_max_value", "n"),
        "size": (400, "invalid_value", "size"),
        "unknown": (400, "unknown_parameter", "colour"),
        "transparent": (400, "unsupported_value", "background"),
        "modblock": (400, "moderation_blocked", None),
        "gif": (400, "invalid_image_file", "images[0]"),
        "maskjpeg": (400, "invalid_image_file", "mask"),
    }
    assert errors["modblock"]["response"]["body"]["error"]["type"] == "image_generation_user_error"
    assert all(e["error"] is None for e in errors.values())


def test_image_file_ids_resolve_to_vision_uploads(client: openai.OpenAI) -> None:
    img = client.files.create(file=("mug.png", (EXAMPLES / "mug.png").read_bytes(), "image/png"), purpose="vision")
    mask = client.files.create(file=("m.png", (EXAMPLES / "mask_mug.png").read_bytes(), "image/png"),
                               purpose="user_data")
    lines = [_line("byid", images=[{"file_id": img.id}], mask={"file_id": mask.id}, prompt="sepia"),
             _line("missing", images=[{"file_id": "file-nope"}])]
    f = client.files.create(file=("ids.jsonl", _jsonl(lines)), purpose="batch")
    batch = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits",
                                                completion_window="24h").id)
    assert set(_read(client, batch.output_file_id)) == {"byid"}
    err = _read(client, batch.error_file_id)["missing"]["response"]["body"]["error"]
    assert err["param"] == "images[0]" and "file-nope" in err["message"]


# ---- partial completion: expiry, injected failures, cancel --------------------------------------------------------
def test_expiry_knob_ends_expired_with_only_the_first_lines_done(client: openai.OpenAI, sb: str) -> None:
    httpx.patch(f"{sb}/_sandbox/config", json={"openai_batch_expire_after_lines": 2}).raise_for_status()
    try:
        f = client.files.create(file=("e.jsonl", _jsonl([_line(f"x{i}") for i in range(5)])), purpose="batch")
        batch = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits",
                                                    completion_window="24h").id)
    finally:
        httpx.patch(f"{sb}/_sandbox/config", json={"openai_batch_expire_after_lines": -1}).raise_for_status()
    assert batch.status == "expired" and batch.expired_at and batch.completed_at is None
    assert batch.request_counts is not None and (batch.request_counts.completed, batch.request_counts.failed) == (2, 3)
    assert set(_read(client, batch.output_file_id)) == {"x0", "x1"}
    errors = _read(client, batch.error_file_id)
    assert set(errors) == {"x2", "x3", "x4"}
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors.values())


def test_line_failure_rate_fails_lines_with_server_errors(client: openai.OpenAI, sb: str) -> None:
    httpx.patch(f"{sb}/_sandbox/config", json={"job_failure_rate": 1.0}).raise_for_status()
    try:
        f = client.files.create(file=("f.jsonl", _jsonl([_line("f0"), _line("f1")])), purpose="batch")
        batch = _wait(client, client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits",
                                                    completion_window="24h").id)
    finally:
        httpx.patch(f"{sb}/_sandbox/config", json={"job_failure_rate": 0.0}).raise_for_status()
    assert batch.status == "completed" and batch.output_file_id is None
    errors = _read(client, batch.error_file_id)
    assert {(e["response"]["status_code"], e["response"]["body"]["error"]["type"]) for e in errors.values()} == {
        (500, "server_error")}


def test_cancel_marks_unfinished_lines_batch_cancelled(client: openai.OpenAI, sb: str) -> None:
    httpx.patch(f"{sb}/_sandbox/config", json={"latency_s": 0.5, "concurrency": 1}).raise_for_status()
    try:
        f = client.files.create(file=("c.jsonl", _jsonl([_line(f"c{i}") for i in range(4)])), purpose="batch")
        created = client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits", completion_window="24h")
        deadline = time.monotonic() + 10
        while client.batches.retrieve(created.id).status != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        cancelling = client.batches.cancel(created.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        batch = _wait(client, created.id)
    finally:
        httpx.patch(f"{sb}/_sandbox/config", json={"latency_s": 0.05, "concurrency": 4}).raise_for_status()
    assert batch.status == "cancelled" and batch.cancelled_at
    errors = _read(client, batch.error_file_id)
    assert errors and all(e["error"]["code"] == "batch_cancelled" for e in errors.values())
    assert len(errors) + len(_read(client, batch.output_file_id)) == 4
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'cancelled'"):
        client.batches.cancel(created.id)


# ---- the API's own refusals ----------------------------------------------------------------------------------
def test_refusals_use_openai_error_envelope(client: openai.OpenAI, sb: str) -> None:
    with pytest.raises(openai.AuthenticationError) as exc:
        openai.OpenAI(base_url=f"{sb}/openai/v1", api_key="sk-invalid-0123456789", max_retries=0).files.list()
    assert exc.value.code == "invalid_api_key" and "sk-invalid-0123456789" not in str(exc.value)
    r = httpx.get(f"{sb}/openai/v1/batches/batch_nope", headers=AUTH)
    assert r.status_code == 404 and r.json() == {"error": {"message": "No such Batch object: batch_nope",
                                                           "type": "invalid_request_error", "param": "id",
                                                           "code": None}}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    upload = client.files.create(file=("v.png", (EXAMPLES / "mug.png").read_bytes(), "image/png"), purpose="vision")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/images/edits", completion_window="24h")
    assert bad.value.param == "input_file_id" and "purpose 'batch'" in bad.value.message
    f = client.files.create(file=("ok.jsonl", _jsonl([_line("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits",
                              completion_window="48h")  # type: ignore[arg-type]
    assert bad.value.code == "invalid_value" and bad.value.param == "completion_window"
    r = httpx.post(f"{sb}/openai/v1/files", headers=AUTH, files={"file": ("x.jsonl", b"{}\n")},
                   data={"purpose": "nonsense"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = httpx.post(f"{sb}/openai/v1/batches", headers=AUTH, json={"input_file_id": f.id, "endpoint":
                                                                  "/v1/images/edits", "completion_window": "24h",
                                                                  "priority": "high"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_parameter"
    deleted = client.files.delete(f.id)
    assert deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)


def test_create_faults_create_nothing(client: openai.OpenAI, sb: str) -> None:
    f = client.files.create(file=("ok.jsonl", _jsonl([_line("a")])), purpose="batch")
    before = len(client.batches.list(limit=100).data)
    httpx.patch(f"{sb}/_sandbox/config", json={"submit_429_rate": 1.0, "retry_after_s": 3}).raise_for_status()
    try:
        with pytest.raises(openai.RateLimitError) as exc:
            client.batches.create(input_file_id=f.id, endpoint="/v1/images/edits", completion_window="24h")
    finally:
        httpx.patch(f"{sb}/_sandbox/config", json={"submit_429_rate": 0.0}).raise_for_status()
    assert exc.value.code == "rate_limit_exceeded" and exc.value.response.headers["retry-after"] == "3"
    assert len(client.batches.list(limit=100).data) == before
