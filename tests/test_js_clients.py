"""OpenAI's and Replicate's official JavaScript clients (npm `openai`, `replicate`, pinned in tests/js) against
``python -m editq.sandbox`` over plain http on loopback: each script in tests/js drives its client and prints one
JSON object; these tests check it against what the sandbox served. fal's JS client: tests/test_sandbox_fal.py.
ModelRunner's (@modelrunner/client) is not published on npm (404 for it and for `modelrunner`), so it cannot run
here; see providers/modelrunner/README.md for the one check made against a build of its source.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests import js_clients, sandbox_proc

OPENAI_KEY = "sk-sandbox-js"
REPLICATE_TOKEN = "r8_sandbox_js"


@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_proc.sandbox_process(what="sandbox for the JS clients") as url:
        yield url


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    im = Image.new("RGB", (320, 240), (200, 40, 40))
    im.paste((30, 160, 220), (80, 60, 240, 180))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    path = tmp_path / "in.png"
    path.write_bytes(buf.getvalue())
    return path, buf.getvalue()


def test_openai_js_client_images_edit(sandbox_url: str, source: tuple[Path, bytes]) -> None:
    path, png = source
    out = js_clients.run_script("openai_client_run.mjs", sandbox_url, str(path), env={"OPENAI_API_KEY": OPENAI_KEY})
    assert out["input_sha256"] == hashlib.sha256(png).hexdigest()
    assert out["requests"] == ["POST /openai/v1/images/edits"] * 3

    # the edit went out as multipart with the typed file part, and the sandbox logged it under the client's id
    sent = out["edit_request"]
    assert sent["authorization"] == f"Bearer {OPENAI_KEY}" and sent["status"] == 200
    assert {"name": "image", "filename": "in.png", "type": "image/png", "bytes": len(png)} in sent["form"]
    edit = out["edit"]
    entry = httpx.get(f"{sandbox_url}/_sandbox/requests/{edit['request_id']}").json()
    assert entry["status"] == "COMPLETED" and entry["model"] == "gpt-image-2"
    assert entry["input"]["image"] == [{"field": "image", "filename": "in.png", "content_type": "image/png",
                                        "bytes": len(png)}]
    assert entry["headers"]["user-agent"].startswith("OpenAI/JS ")

    # the images the client hands back are the ones on the wire, and decode to the size the answer states
    assert (edit["size"], edit["output_format"], edit["quality"]) == ("1024x1024", "png", "low")
    assert [i["b64_sha256"] for i in edit["images"]] == sent["wire_b64_sha256"]
    for image in edit["images"]:
        data = base64.b64decode(image["base64"])
        assert (len(data), hashlib.sha256(data).hexdigest()) == (image["bytes"], image["sha256"])
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size) == ("PNG", (1024, 1024))
        assert (image["format"], image["width"], image["height"]) == ("png", 1024, 1024)
    usage = edit["usage"]
    assert usage["output_tokens"] == 196 and usage["output_tokens_details"]["image_tokens"] == 196  # low, 1024x1024
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["image_tokens"] == 85 + 170  # one 512-px tile

    # refusals surface as BadRequestError with OpenAI's status, code, param and the request id
    untyped = out["untyped"]
    assert {"name": "image", "filename": "in.png", "type": "", "bytes": len(png)} in out["untyped_request"]["form"]
    assert (untyped["class"], untyped["status"], untyped["code"], untyped["param"], untyped["type"]) == (
        "BadRequestError", 400, "unsupported_file_mimetype", "image", "invalid_request_error")
    assert "application/octet-stream" in untyped["message"] and untyped["request_id"].startswith("req_")
    bad_size = out["bad_size"]
    assert (bad_size["class"], bad_size["status"], bad_size["code"], bad_size["param"]) == (
        "BadRequestError", 400, "invalid_value", "size")


def test_replicate_js_client_predictions_and_outputs(sandbox_url: str, source: tuple[Path, bytes]) -> None:
    path, png = source
    out = js_clients.run_script("replicate_client_run.mjs", sandbox_url, str(path),
                                env={"REPLICATE_API_TOKEN": REPLICATE_TOKEN})
    token = {"Authorization": f"Bearer {REPLICATE_TOKEN}"}
    assert out["input_sha256"] == hashlib.sha256(png).hexdigest()

    # create: the Buffer input went through the Files API, the model input names the file's URL
    assert out["requests"][:2] == ["POST /replicate/v1/files",
                                   "POST /replicate/v1/models/openai/gpt-image-2/predictions"]
    [file_url] = out["created"]["input_images"]
    assert file_url.startswith(f"{sandbox_url}/replicate/v1/files/")
    served_input = httpx.get(file_url, headers=token)  # the Files API object (not the bytes)
    assert served_input.json()["checksums"]["sha256"] == hashlib.sha256(png).hexdigest()

    # wait(): polled to the end; two outputs of the 3:2 size, on the sandbox's delivery route
    waited = out["waited"]
    assert waited["id"] == out["created"]["id"] and waited["status"] == "succeeded"
    assert len(waited["output"]) == 2
    assert all(u.startswith(f"{sandbox_url}/replicate/delivery/") for u in waited["output"])
    assert waited["logs"].splitlines()[-1].startswith("Output token count: ")
    served = [httpx.get(u, headers=token).content for u in waited["output"]]
    for data in served:
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.size) == ("PNG", (1536, 1024))
    # fetched with the token and without it (as FileOutput fetches), node got exactly those bytes
    for downloads in (out["download_token"], out["download_plain"]):
        assert [(d["status"], d["sha256"], d["bytes"]) for d in downloads] == [
            (200, hashlib.sha256(b).hexdigest(), len(b)) for b in served]

    # run() over plain http: the output stays strings (FileOutput wraps only https:/data: URLs)
    [plain] = out["run_plain"]
    assert plain["type"] == "string" and plain["value"].startswith(f"{sandbox_url}/replicate/delivery/")

    # run() with https://replicate.delivery URLs: FileOutput objects, which fetch without Authorization (the
    # sandbox accepts that, as the client expects; Replicate's API reference says the token is needed)
    assert [f["type"] for f in out["run_file_output"]] == ["FileOutput"] * 2
    assert all(f["url"].startswith("https://replicate.delivery/") for f in out["run_file_output"])
    assert [(r["authorization"], r["status"]) for r in out["file_output_requests"]] == [(None, 200)] * 2
    for entry, request in zip(out["run_file_output"], out["file_output_requests"], strict=True):
        data = httpx.get(sandbox_url + request["path"]).content
        assert (entry["content_type"], entry["bytes"], entry["sha256"]) == (
            "image/png", len(data), hashlib.sha256(data).hexdigest())
    # ... with the token added for the output host, FileOutput.blob() gives the served bytes
    with_token = out["run_file_output_token"]
    assert [(r["authorization"], r["status"]) for r in out["file_output_token_requests"]] == [
        (f"Bearer {REPLICATE_TOKEN}", 200)] * 2
    for entry, request in zip(with_token, out["file_output_token_requests"], strict=True):
        data = httpx.get(sandbox_url + request["path"], headers=token).content
        assert (entry["type"], entry["content_type"]) == ("FileOutput", "image/png")
        assert (entry["bytes"], entry["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert entry["url"] == "https://replicate.delivery/" + request["path"].rsplit("/", 1)[1]

    # cancel of a running prediction, and the errors as ApiError with Replicate's status and problem body
    cancel = out["cancel"]
    assert (cancel["before"], cancel["status"], cancel["after"], cancel["error"]) == (
        "processing", "canceled", "canceled", None)
    assert httpx.get(f"{sandbox_url}/_sandbox/config").json()["latency_s"] == 0.05  # restored
    unknown = out["cancel_unknown"]
    assert (unknown["name"], unknown["status"], unknown["body"]["title"]) == ("ApiError", 404, "Not found")
    invalid = out["invalid"]
    assert (invalid["name"], invalid["status"], invalid["body"]["title"]) == (
        "ApiError", 422, "Input validation failed")
    assert invalid["body"]["invalid_fields"] == [{"type": "invalid_type", "field": "input.number_of_images",
                                                  "description": "Invalid type. Expected: integer, given: string"}]
