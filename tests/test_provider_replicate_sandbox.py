"""The sandbox's Replicate API under /replicate, over real HTTP against `python -m editq.sandbox` in a subprocess,
and the official `replicate` 1.0.7 client pointed at it by base URL only (the SDK contract)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import replicate
from PIL import Image
from replicate.exceptions import ReplicateError

from tests.factories import data_uri as _data_uri
from tests.factories import patched_sandbox
from tests.sandbox_proc import sandbox_process, wait_for
from tests.webhook_peer import Peer, peer_fixture

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOKEN = "r8_sdk-contract-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL = "openai/gpt-image-2"
SDK_STATUSES = {"starting", "processing", "succeeded", "failed", "canceled"}
T = TypeVar("T")

BASELINE: dict[str, Any] = {
    "latency_s": 0.05, "jitter_s": 0.0, "concurrency": 8, "submit_5xx_rate": 0.0, "submit_429_rate": 0.0,
    "submit_timeout_rate": 0.0, "job_failure_rate": 0.0, "webhook_lost_rate": 0.0, "webhook_duplicate_rate": 0.0,
    "webhook_bad_signature_rate": 0.0, "webhook_retry": True, "webhook_retry_attempts": 3,
    "webhook_retry_backoff_s": 0.05, "retry_after_s": 3.0, "render": "real",
}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with sandbox_process("--seed", "11", keep_sandbox_env=True) as url:
        yield url


@pytest.fixture
def sb(sandbox: str) -> Iterator[str]:
    yield from patched_sandbox(sandbox, BASELINE)


@pytest.fixture
def hooks() -> Iterator[Peer]:
    yield from peer_fixture()


def _image(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# ================================================================ the SDK contract
def test_official_client_create_get_wait_webhook_and_outputs(sb: str, hooks: Peer) -> None:
    client = replicate.Client(api_token=TOKEN, base_url=f"{sb}/replicate")
    pred = client.predictions.create(
        model=MODEL,
        input={"prompt": "make it sepia", "input_images": [_data_uri()], "aspect_ratio": "1:1",
               "output_format": "png", "quality": "low"},
        webhook=hooks.url + "/hook?job=j1",
        webhook_events_filter=["completed"],
    )
    assert pred.status in ("starting", "processing") and pred.model == MODEL and pred.version == "hidden"
    assert pred.urls is not None and pred.urls["get"] == f"{sb}/replicate/v1/predictions/{pred.id}"
    got = client.predictions.get(pred.id)
    assert got.id == pred.id and got.status in SDK_STATUSES
    pred.wait()
    assert pred.status == "succeeded" and pred.error is None
    assert isinstance(pred.output, list) and len(pred.output) == 1
    assert pred.metrics and pred.metrics["predict_time"] > 0 and "Output token count:" in (pred.logs or "")
    url = pred.output[0]
    out = httpx.get(url, headers=AUTH)
    assert out.status_code == 200 and out.headers["content-type"] == "image/png"
    assert httpx.get(url).content == out.content  # without the token as well (as Replicate's JS client fetches)
    assert _image(out.content).size == (1024, 1024)

    headers, body = hooks.wait("/hook")  # the completed webhook
    secret = client.webhooks.default.secret()
    assert secret.key.startswith("whsec_")
    assert client.webhooks.validate(headers=headers, body=body.decode(), secret=secret, tolerance=300) is None
    delivered = json.loads(body)
    assert delivered["id"] == pred.id and delivered["status"] == "succeeded" and delivered["output"] == pred.output
    assert headers["webhook-id"] == f"msg_{pred.id}"
    assert len(hooks.deliveries) == 1


def test_official_client_run_and_cancel(sb: str) -> None:
    client = replicate.Client(api_token=TOKEN, base_url=f"{sb}/replicate")
    output = client.run(MODEL, input={"prompt": "brighter", "input_images": [_data_uri("bottle.png")],
                                      "output_format": "jpeg", "aspect_ratio": "3:2"})
    assert isinstance(output, list) and len(output) == 1  # http:// URLs stay plain strings in rp107
    img = _image(httpx.get(str(output[0]), headers=AUTH).content)
    assert (img.format, img.size) == ("JPEG", (1536, 1024))
    # a model failure surfaces as ModelError from run()
    httpx.patch(sb + "/_sandbox/config", json={"job_failure_rate": 1.0}).raise_for_status()
    with pytest.raises(replicate.exceptions.ModelError, match="sandbox injected failure"):
        client.run(MODEL, input={"prompt": "x", "input_images": [_data_uri()]})
    httpx.patch(sb + "/_sandbox/config", json={"job_failure_rate": 0.0, "latency_s": 30.0}).raise_for_status()
    pred = client.predictions.create(model=MODEL, input={"prompt": "slow", "input_images": [_data_uri()]})
    pred.cancel()
    pred.reload()
    assert pred.status == "canceled" and pred.output is None
    # a queued prediction cancelled by the user is `canceled`, never `aborted` (which rp107 cannot parse)
    httpx.patch(sb + "/_sandbox/config", json={"concurrency": 1}).raise_for_status()
    running = client.predictions.create(model=MODEL, input={"prompt": "a", "input_images": [_data_uri()]})
    queued = client.predictions.create(model=MODEL, input={"prompt": "b", "input_images": [_data_uri()]})
    assert queued.status == "starting"
    client.predictions.cancel(queued.id)
    assert client.predictions.get(queued.id).status == "canceled"
    running.cancel()
    assert client.predictions.get(running.id).status == "canceled"


def test_official_client_files_upload_as_input(sb: str, tmp_path: Path) -> None:
    client = replicate.Client(api_token=TOKEN, base_url=f"{sb}/replicate")
    uploaded = client.files.create(EXAMPLES / "watch.png")
    assert uploaded.urls["get"] == f"{sb}/replicate/v1/files/{uploaded.id}" and uploaded.size > 0
    assert client.files.get(uploaded.id).checksums["sha256"] == uploaded.checksums["sha256"]
    out: Any = client.run(MODEL, input={"prompt": "x", "input_images": [uploaded.urls["get"]],
                                        "output_format": "webp"})
    assert _image(httpx.get(str(out[0]), headers=AUTH).content).format == "WEBP"
    # a file handle as input: the client uploads it through /v1/files itself
    with open(EXAMPLES / "mug.png", "rb") as fh:
        out = client.run(MODEL, input={"prompt": "y", "input_images": [fh], "output_format": "png"})
    assert _image(httpx.get(str(out[0]), headers=AUTH).content).size == (1024, 1024)
    client.files.delete(uploaded.id)
    with pytest.raises(ReplicateError) as info:
        client.files.get(uploaded.id)
    assert info.value.status == 404


def test_module_level_run_configured_by_environment_only(sb: str) -> None:
    code = (
        "import json, replicate\n"
        f"out = replicate.run({MODEL!r}, input={{'prompt': 'p', 'input_images': [{_data_uri()!r}]}})\n"
        "print(json.dumps([str(o) for o in out]))\n"
    )
    env = {**os.environ, "REPLICATE_BASE_URL": f"{sb}/replicate", "REPLICATE_API_TOKEN": TOKEN,
           "REPLICATE_POLL_INTERVAL": "0.05"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (url,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert url.startswith(f"{sb}/replicate/delivery/") and url.endswith(".webp")  # the model's default format


def test_official_client_sees_429_on_create_without_retrying(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"submit_429_rate": 1.0}).raise_for_status()
    before = httpx.get(sb + "/_sandbox/stats").json()["providers"]["replicate"]["rejected"].get("429", 0)
    client = replicate.Client(api_token=TOKEN, base_url=f"{sb}/replicate")
    with pytest.raises(ReplicateError) as info:
        client.predictions.create(model=MODEL, input={"prompt": "x"})
    assert info.value.status == 429 and "resets in ~3s" in (info.value.detail or "")
    after = httpx.get(sb + "/_sandbox/stats").json()["providers"]["replicate"]["rejected"].get("429", 0)
    assert after == before + 1


# ================================================================ protocol details
def _post(sb: str, body: Any, headers: dict[str, str] | None = None, path: str = f"/v1/models/{MODEL}/predictions",
          ) -> httpx.Response:
    return httpx.post(f"{sb}/replicate{path}", content=json.dumps(body), timeout=30,
                      headers={**AUTH, "Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize(
    ("body", "headers", "path", "status", "title", "detail"),
    [
        ({"input": {"prompt": "x"}}, {"Authorization": ""}, None, 401, "Unauthenticated", "authentication token"),
        ({"input": {"prompt": "x"}, "webhook_url": "https://x"}, None, None, 422, "Input validation failed",
         "- Additional property webhook_url is not allowed"),
        ({"webhook": "https://x/h"}, None, None, 422, "Input validation failed", "- input is required"),
        ({"input": {}}, None, None, 422, "Input validation failed", "- input: prompt is required"),
        ({"input": {"prompt": "x", "aspect_ratio": "4:3"}}, None, None, 422, "Input validation failed",
         '- input.aspect_ratio: aspect_ratio must be one of the following: "1:1", "3:2"'),
        ({"input": {"prompt": "x", "mask": "https://m.png"}}, None, None, 422, "Input validation failed",
         "- input: Additional property mask is not allowed"),
        ({"input": {"prompt": "x", "number_of_images": 11}}, None, None, 422, "Input validation failed",
         "- input.number_of_images: Must be less than or equal to 10"),
        ({"input": {"prompt": "x"}, "webhook_events_filter": ["done"]}, None, None, 422, "Input validation failed",
         '- webhook_events_filter.0: webhook_events_filter.0 must be one of the following: "start", "output", '
         '"logs", "completed"'),
        ({"input": {"prompt": "x"}}, {"Prefer": "wait=0"}, None, 400, "Invalid Prefer header", "1 to 60"),
        ({"input": {"prompt": "x"}}, {"Cancel-After": "3s"}, None, 400, "Invalid Cancel-After header",
         "at least 5 seconds"),
        ({"input": {"prompt": "x"}}, None, "/v1/models/openai/dall-e-3/predictions", 404, "Not found",
         "Model openai/dall-e-3 not found"),
        ({"version": "someone/else", "input": {"prompt": "x"}}, None, "/v1/predictions", 404, "Not found",
         "Model someone/else not found"),
    ],
)
def test_strict_validation_with_problem_details(
    sb: str, body: Any, headers: dict[str, str] | None, path: str | None, status: int, title: str, detail: str
) -> None:
    resp = _post(sb, body, headers, path or f"/v1/models/{MODEL}/predictions")
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/problem+json")
    data = resp.json()
    assert data["status"] == status and data["title"] == title and detail in data["detail"]
    if title == "Input validation failed":
        assert data["invalid_fields"] and data["detail"].endswith("\n")
        assert set(data["invalid_fields"][0]) == {"type", "field", "description"}


def test_prediction_object_prefer_wait_and_version_route(sb: str) -> None:
    sync = _post(sb, {"input": {"prompt": "x", "input_images": [_data_uri()]}}, {"Prefer": "wait=30"})
    assert sync.status_code == 201
    p = sync.json()
    required = {"id", "model", "version", "input", "output", "error", "status", "created_at", "urls",
                "data_removed", "logs", "metrics"}
    assert required <= set(p) and set(p["urls"]) == {"get", "cancel", "web"}
    assert p["status"] == "succeeded" and p["completed_at"] and len(p["output"]) == 1
    assert p["input"] == {"prompt": "x", "input_images": [_data_uri()]} and p["source"] == "api"
    via_version = _post(sb, {"version": MODEL, "input": {"prompt": "x", "input_images": [_data_uri()]}},
                        {"Prefer": "wait"}, path="/v1/predictions")
    assert via_version.status_code == 201 and via_version.json()["status"] == "succeeded"

    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 30.0}).raise_for_status()
    slow = _post(sb, {"input": {"prompt": "x", "input_images": [_data_uri()]}}, {"Prefer": "wait=1"})
    assert slow.status_code == 202 and slow.json()["status"] == "starting" and slow.json()["output"] is None
    assert slow.headers["location"] == slow.json()["urls"]["get"]
    async_create = _post(sb, {"input": {"prompt": "x", "input_images": [_data_uri()]}})
    assert async_create.status_code == 201 and async_create.json()["status"] in ("starting", "processing")
    for pid in (slow.json()["id"], async_create.json()["id"]):
        cancelled = httpx.post(f"{sb}/replicate/v1/predictions/{pid}/cancel", headers=AUTH)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "canceled"
    listing = httpx.get(f"{sb}/replicate/v1/predictions", headers=AUTH).json()
    assert set(listing) == {"next", "previous", "results"}
    ids = [r["id"] for r in listing["results"]]
    assert ids[:2] == [async_create.json()["id"], slow.json()["id"]]  # newest first
    missing = httpx.get(f"{sb}/replicate/v1/predictions/nope", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["status"] == 404


def test_webhook_resend_keeps_webhook_id_and_filter_is_honoured(sb: str) -> None:
    flaky = Peer(fail_first=1)
    quiet = Peer()
    try:
        client = replicate.Client(api_token=TOKEN, base_url=f"{sb}/replicate")
        secret = client.webhooks.default.secret()
        p = client.predictions.create(model=MODEL, input={"prompt": "x", "input_images": [_data_uri()]},
                                      webhook=flaky.url + "/hook?job=j1", webhook_events_filter=["completed"])
        wait_for(lambda: len(flaky.deliveries) >= 2, what="a resend after a 500")
        (_, h1, b1), (_, h2, b2) = flaky.deliveries[:2]
        c1, c2 = flaky.codes[:2]
        assert (c1, c2) == (500, 200) and b1 == b2
        assert h1["webhook-id"] == h2["webhook-id"] == f"msg_{p.id}"
        for _, h, b in flaky.deliveries[:2]:
            client.webhooks.validate(headers=h, body=b.decode(), secret=secret, tolerance=300)
        q = client.predictions.create(model=MODEL, input={"prompt": "x", "input_images": [_data_uri()]},
                                      webhook=quiet.url + "/hook?job=j1", webhook_events_filter=["start"])
        q.wait()
        entry = httpx.get(f"{sb}/_sandbox/requests/{q.id}").json()
        assert q.status == "succeeded" and entry["webhook"]["attempts"] == 0 and quiet.deliveries == []
    finally:
        flaky.close()
        quiet.close()


def test_per_provider_fault_overrides() -> None:
    from pydantic import ValidationError

    from editq.sandbox.config import SandboxConfig

    cfg = SandboxConfig.from_env({}, submit_5xx_rate=1.0, provider_faults='{"replicate": {"submit_5xx_rate": 0}}')
    assert cfg.rate("replicate", "submit_5xx_rate") == 0.0 and cfg.rate("fal", "submit_5xx_rate") == 1.0
    assert cfg.rate("replicate", "submit_429_rate") == 0.0
    for bad in ({"replicate": {"latency_s": 0.5}}, {"replicate": {"submit_5xx_rate": 2}},
                {"replicate": {"submit_typo_rate": 0.1}}):
        with pytest.raises(ValidationError):
            cfg.updated({"provider_faults": bad})


# ================================================================ faithfulness to Replicate's published behaviour
def _faults(resp: httpx.Response) -> list[tuple[str, str, str]]:
    assert resp.status_code == 422, resp.text
    data = resp.json()
    assert data["title"] == "Input validation failed" and data["status"] == 422
    faults = [(f["type"], f["field"], f["description"]) for f in data["invalid_fields"]]
    # `detail` lists every fault on its own line, `- field: description` (no field: the body itself)
    assert data["detail"] == "".join(f"- {f}: {d}\n" if f else f"- {d}\n" for _, f, d in faults)
    return faults


def test_input_types_are_refused_strictly_and_all_at_once_like_replicate(sb: str) -> None:
    """Replicate checks the body and the model input against their JSON schemas, reports every violation in
    one 422 (`invalid_fields` with type/field/description) and coerces nothing: "2" is not an integer."""
    before = httpx.get(sb + "/_sandbox/stats").json()["providers"]["replicate"]["accepted"]
    assert _faults(_post(sb, {"input": {"prompt": "x", "number_of_images": "2"}})) == [
        ("invalid_type", "input.number_of_images", "Invalid type. Expected: integer, given: string")]
    assert _faults(_post(sb, {"input": {"prompt": 5, "input_images": "https://a.png", "quality": None}})) == [
        ("invalid_type", "input.prompt", "Invalid type. Expected: string, given: integer"),
        ("invalid_type", "input.input_images", "Invalid type. Expected: array, given: string"),
        ("invalid_type", "input.quality", "Invalid type. Expected: string, given: null"),
    ]
    assert _faults(_post(sb, {"input": {"number_of_images": 0, "output_compression": 101.5, "seed": 1},
                              "model": "x"})) == [
        ("additional_property_not_allowed", "", "Additional property model is not allowed"),
        ("required", "input", "prompt is required"),
        ("additional_property_not_allowed", "input", "Additional property seed is not allowed"),
        ("number_gte", "input.number_of_images", "Must be greater than or equal to 1"),
        ("invalid_type", "input.output_compression", "Invalid type. Expected: integer, given: number"),
    ]
    assert _faults(_post(sb, {"input": {"prompt": "x", "input_images": ["ftp://a", 3]}, "webhook": "hooks"})) == [
        ("format", "webhook", "Does not match format 'uri'"),
        ("format", "input.input_images.0", "Does not match format 'uri'"),
        ("invalid_type", "input.input_images.1", "Invalid type. Expected: string, given: integer"),
    ]
    assert _faults(_post(sb, {"input": {"prompt": "x"}}, path="/v1/predictions")) == [
        ("required", "", "version is required")]
    assert _faults(_post(sb, {"input": []})) == [
        ("invalid_type", "input", "Invalid type. Expected: object, given: array")]
    assert _faults(_post(sb, ["input"])) == [("invalid_type", "", "Invalid type. Expected: object, given: array")]
    # a whole number written as 1.0 is an integer for JSON schema
    ok = _post(sb, {"input": {"prompt": "x", "number_of_images": 1.0, "input_images": [_data_uri()]}},
               {"Prefer": "wait=30"})
    assert ok.status_code == 201 and ok.json()["status"] == "succeeded"
    after = httpx.get(sb + "/_sandbox/stats").json()["providers"]["replicate"]["accepted"]
    assert after == before + 1  # nothing refused was created


def _get(sb: str, pid: str) -> dict[str, Any]:
    resp = httpx.get(f"{sb}/replicate/v1/predictions/{pid}", headers=AUTH, timeout=10)
    assert resp.status_code == 200
    data: dict[str, Any] = resp.json()
    return data


REQUIRED_FIELDS = {"id", "model", "version", "input", "output", "data_removed", "error", "status", "created_at",
                   "urls"}


def test_cancel_answers_in_every_state(sb: str) -> None:
    """`POST /v1/predictions/{id}/cancel` answers 200 with the prediction object in every state: a queued or
    running prediction becomes `canceled` (a user cancel is never `aborted`, even with a Cancel-After
    deadline); a finished one is answered unchanged; an unknown id is a 404 problem."""
    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 30.0, "concurrency": 1}).raise_for_status()
    body = {"input": {"prompt": "x", "input_images": [_data_uri()]}}
    running = _post(sb, body).json()
    queued = _post(sb, body, {"Cancel-After": "1h"}).json()
    wait_for(lambda: _get(sb, running["id"])["status"] == "processing" or None, what="running")
    assert _get(sb, queued["id"])["status"] == "starting"

    def cancel(pid: str) -> httpx.Response:
        return httpx.post(f"{sb}/replicate/v1/predictions/{pid}/cancel", headers=AUTH, timeout=10)

    for pred, started in ((queued, False), (running, True)):
        resp = cancel(pred["id"])
        assert resp.status_code == 200
        p = resp.json()
        assert set(p) >= REQUIRED_FIELDS and p["status"] == "canceled" and p["error"] is None
        assert p["output"] is None and p["completed_at"] and bool(p["started_at"]) is started
        assert _get(sb, pred["id"])["status"] == "canceled"
        again = cancel(pred["id"])  # cancelling a canceled prediction changes nothing
        assert again.status_code == 200 and again.json()["status"] == "canceled"
    assert "deadline" in _get(sb, queued["id"])

    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 0.05, "concurrency": 8}).raise_for_status()
    done = _post(sb, body, {"Prefer": "wait=30"}).json()
    assert done["status"] == "succeeded"
    after = cancel(done["id"])
    assert after.status_code == 200 and after.json() == _get(sb, done["id"])
    assert after.json()["status"] == "succeeded" and after.json()["output"] == done["output"]

    httpx.patch(sb + "/_sandbox/config", json={"job_failure_rate": 1.0}).raise_for_status()
    failed = _post(sb, body, {"Prefer": "wait=30"}).json()
    assert failed["status"] == "failed" and failed["error"]
    unchanged = cancel(failed["id"]).json()
    assert unchanged["status"] == "failed" and unchanged["error"] == failed["error"]

    missing = cancel("nope")
    assert missing.status_code == 404 and missing.json()["status"] == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


def test_logs_are_the_models_output_only_and_grow_with_the_status(sb: str) -> None:
    """`logs` is what the model printed so far: empty while `starting`, the lines printed up to now while
    `processing`, each line once, and the token counts only once it `succeeded`; never the emulator's own
    bookkeeping ("Request started." ...)."""
    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 30.0, "concurrency": 1}).raise_for_status()
    body = {"input": {"prompt": "x", "input_images": [_data_uri()], "output_format": "png"}}
    first = _post(sb, body).json()
    second = _post(sb, body).json()
    assert second["status"] == "starting" and second["logs"] == ""
    processing = wait_for(lambda: (lambda p: p if p["status"] == "processing" and p["logs"] else None)(
        _get(sb, first["id"])), what="processing with logs")
    lines = processing["logs"].split("\n")
    assert lines and "Request started." not in lines and "Request queued." not in lines
    assert len(lines) == len(set(lines)) and "token count" not in processing["logs"]
    httpx.post(f"{sb}/replicate/v1/predictions/{first['id']}/cancel", headers=AUTH, timeout=10)
    httpx.post(f"{sb}/replicate/v1/predictions/{second['id']}/cancel", headers=AUTH, timeout=10)

    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 0.05, "concurrency": 8}).raise_for_status()
    done = _post(sb, body, {"Prefer": "wait=30"}).json()
    final = done["logs"].split("\n")
    assert done["status"] == "succeeded" and not final[0].startswith("Request ")
    assert final[-3].startswith("Input text token count: ") and final[-1].startswith("Output token count: ")
    assert not any(line.startswith(("Request ", "Unhandled error")) for line in final)
    assert len(final) == len(set(final))
