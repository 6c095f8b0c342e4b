"""WaveSpeedAI (providers/wavespeed/): pure translation, error classification, the sandbox emulator over real HTTP,
the official `wavespeed` SDK (2.0.5) against it, and the adapter's webhook verification on real sandbox deliveries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image
from pydantic import SecretStr

from editq.providers.types import InputUrls, WebhookEvent
from editq.providers.wavespeed import SPEC, WaveSpeedSettings
from editq.providers.wavespeed.protocol import SIZE_TABLE, WaveSpeedProtocol
from editq.schemas.params import size_problems
from editq.worker.errors import ErrorKind, ProviderError, WebhookRejected
from tests.factories import EXAMPLES, data_uri, mock_client, provider_http, record, run
from tests.factories import client_of as _client_of
from tests.factories import make_job as _make_job
from tests.sandbox_proc import sandbox_process, wait_for
from tests.webhook_peer import Peer, peer_fixture

MODEL = "openai/gpt-image-2/edit"
KEY = "ws-secret-key-123"
make_job = partial(_make_job, "wavespeed", quality="low")
client_of = partial(_client_of, SPEC)
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ helpers
def adapter(**settings: Any) -> WaveSpeedProtocol:
    base = {"api_key": KEY, "base_url": "https://api.wavespeed.test"}
    return WaveSpeedProtocol(WaveSpeedSettings(**{**base, **settings}))


def sign_v3(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = secret.removeprefix("whsec_").encode()
    return "v3," + hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------------------ validate
def test_valid_job_has_no_problems() -> None:
    assert adapter().validate(make_job(images=["a.png", "b.png", "c.png"], size="1536x1024")) == []


def test_masked_job_is_refused_with_a_precise_message() -> None:
    job = make_job(mask="mask.png", mask_input=record("mask.png"))
    assert adapter().validate(job) == [
        "wavespeed: mask is not supported by openai/gpt-image-2/edit on WaveSpeed (no mask field is documented; "
        "the edit would repaint the whole image); allowed values: no mask"
    ]


def test_num_images_above_one_is_refused() -> None:
    assert adapter().validate(make_job(num_images=2)) == [
        "wavespeed: num_images=2 is not allowed; allowed values: 1"
    ]


def test_size_outside_the_table_is_refused_with_the_list() -> None:
    (msg,) = adapter().validate(make_job(size="1536x864"))
    assert msg.startswith("wavespeed: size=1536x864 is not allowed")
    assert msg.endswith("allowed values: auto, " + ", ".join(f"{w}x{h}" for w, h in SIZE_TABLE))


def test_quality_auto_transparent_and_narrowed_formats_are_refused() -> None:
    job = make_job(quality="auto", background="transparent", output_format="webp")
    assert adapter(output_formats="png,jpeg").validate(job) == [
        "wavespeed: quality=auto is not allowed; allowed values: low, medium, high",
        "wavespeed: output_format=webp is not allowed; allowed values: png, jpeg",
        "wavespeed: background=transparent is not supported by openai/gpt-image-2/edit on WaveSpeed (it has no "
        "background parameter; outputs are opaque); allowed values: auto, opaque",
    ]


def test_other_models_are_refused() -> None:
    assert adapter().validate(make_job(model="openai/gpt-image-1")) == [
        "wavespeed: model=openai/gpt-image-1 is not supported; allowed values: openai/gpt-image-2/edit"
    ]


def test_size_table_entries_are_valid_gpt_image_2_sizes_and_match_the_sandbox() -> None:
    from editq.providers.wavespeed.emulator import output_size

    for (w, h), (aspect, resolution) in SIZE_TABLE.items():
        assert size_problems(w, h) == [], (w, h)
        aw, ah = (int(x) for x in aspect.split(":"))
        assert w * ah == h * aw, (w, h, aspect)
        assert output_size(aspect, resolution) == (w, h)


# ------------------------------------------------------------------------------------------------ build_request
def test_build_request_auto_size_sends_resolution_and_no_aspect_ratio() -> None:
    job = make_job(images=["a.png", "b.png"], output_format="jpeg", quality="high")
    req = adapter().build_request(job, InputUrls(images=["https://s3/a", "https://s3/b"]),
                                  "https://hooks.example/webhooks/wavespeed?job=job_1")
    assert (req.method, req.path) == ("POST", "/api/v3/openai/gpt-image-2/edit")
    assert req.json == {
        "images": ["https://s3/a", "https://s3/b"], "prompt": "make it sepia", "resolution": "1k",
        "quality": "high", "output_format": "jpeg",
    }
    assert req.params == {"webhook": "https://hooks.example/webhooks/wavespeed?job=job_1"}
    assert req.headers == {}  # auth is added at send time, never stored in the request


def test_build_request_maps_size_to_aspect_ratio_and_resolution() -> None:
    req = adapter().build_request(make_job(size="3840x2160"), InputUrls(images=["https://s3/a"]), None)
    assert req.json is not None
    assert (req.json["aspect_ratio"], req.json["resolution"]) == ("16:9", "4k")
    assert req.params == {}
    assert "num_images" not in req.json and "enable_base64_output" not in req.json


def test_build_request_never_drops_a_mask_silently() -> None:
    with pytest.raises(ValueError, match="masked job"):
        adapter().build_request(make_job(), InputUrls(images=["https://s3/a"], mask="https://s3/m"), None)


# ------------------------------------------------------------------------------------------------ errors (in-process)
async def _submit_with(handler: Callable[[httpx.Request], httpx.Response]) -> ProviderError:
    a = adapter()
    job = make_job()
    req = a.build_request(job, InputUrls(images=["https://s3/a"]), None)
    client = mock_client(SPEC, a, handler)
    async with client.http:
        with pytest.raises(ProviderError) as info:
            await a.submit(client, job, req)
    return info.value


def test_auth_error_is_terminal_and_never_contains_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(401, json={"code": 401, "message": f"invalid api key {KEY}", "data": None})

    err = run(_submit_with(handler))
    assert err.kind is ErrorKind.terminal and err.status_code == 401
    assert KEY not in err.reason and "invalid api key ***" in err.reason
    assert KEY not in repr(err) and KEY not in err.info().model_dump_json()


def test_rate_limit_is_retryable_with_retry_after() -> None:
    err = run(_submit_with(lambda r: httpx.Response(429, json={"code": 429, "message": "slow down"},
                                                   headers={"Retry-After": "7"})))
    assert err.kind is ErrorKind.retryable and err.retry_after_s == 7.0
    assert err.reason == "wavespeed submit: HTTP 429: slow down"


def test_server_error_and_timeout_are_retryable() -> None:
    assert run(_submit_with(lambda r: httpx.Response(502, text="bad gateway"))).kind is ErrorKind.retryable

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    err = run(_submit_with(boom))
    assert err.kind is ErrorKind.retryable and err.maybe_billed


def test_envelope_without_id_is_unknown_and_maybe_billed() -> None:
    err = run(_submit_with(lambda r: httpx.Response(200, json={"code": 200, "message": "success", "data": {}})))
    assert err.kind is ErrorKind.unknown and err.maybe_billed


async def _poll_with(data: dict[str, Any], status: int = 200) -> Any:
    a = adapter()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v3/predictions/abc/result"
        return httpx.Response(status, json={"code": status, "message": "x", "data": data})

    client = mock_client(SPEC, a, handler)
    async with client.http:
        return await a.poll(client, "abc", {"id": "abc"})


def test_poll_outcomes() -> None:
    running = run(_poll_with({"id": "abc", "status": "processing", "outputs": []}))
    assert not running.done
    done = run(_poll_with({"id": "abc", "status": "completed", "outputs": ["https://cdn/x.png"],
                           "has_nsfw_contents": [False], "timings": {"inference": 1200}}))
    assert done.done and [o.url for o in done.result.outputs] == ["https://cdn/x.png"]
    assert done.result.raw["timings"] == {"inference": 1200}
    transient = run(_poll_with({"id": "abc", "status": "failed", "error": "upstream HTTP 503 Service Unavailable"}))
    assert transient.done and transient.error.kind is ErrorKind.retryable
    policy = run(_poll_with({"id": "abc", "status": "failed", "error": "content policy violation"}))
    assert policy.error.kind is ErrorKind.terminal
    assert policy.error.reason == "wavespeed: task failed: content policy violation"
    missing = run(_poll_with({}, status=404))
    assert missing.done and missing.error.kind is ErrorKind.terminal


# ------------------------------------------------------------------------------------------------ the sandbox
@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_process("--seed", "11", "--render-workers", "4") as url:
        yield url


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    yield from peer_fixture()


@pytest.fixture()
def http(sandbox_url: str) -> Iterator[httpx.Client]:
    yield from provider_http(sandbox_url, "wavespeed", "Bearer test", {
        "latency_s": 0.05, "jitter_s": 0.0, "job_failure_rate": 0.0, "submit_429_rate": 0.0,
        "webhook_retry_backoff_s": 0.05, "webhook_lost_rate": 0.0, "render": "real"})


def _submit(http: httpx.Client, body: dict[str, Any], **params: str) -> httpx.Response:
    return http.post(f"/api/v3/{MODEL}", json=body, params=params or None)


def _wait_done(http: httpx.Client, rid: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        data = http.get(f"/api/v3/predictions/{rid}/result").json()["data"]
        return data if data["status"] in ("completed", "failed") else None

    return wait_for(done, what=f"task {rid}")


def test_sandbox_submit_envelope_and_result(http: httpx.Client) -> None:
    resp = _submit(http, {"images": [data_uri(EXAMPLES / "mug.png")], "prompt": "sepia", "aspect_ratio": "3:2",
                          "output_format": "jpeg", "quality": "low"})
    assert resp.status_code == 200
    env = resp.json()
    assert (env["code"], env["message"]) == (200, "success")
    data = env["data"]
    assert data["status"] == "created" and data["outputs"] == [] and data["error"] == ""
    assert data["urls"]["get"].endswith(f"/wavespeed/api/v3/predictions/{data['id']}/result")
    done = _wait_done(http, data["id"])
    assert done["status"] == "completed" and len(done["outputs"]) == 1 and done["has_nsfw_contents"] == [False]
    img = Image.open(io.BytesIO(httpx.get(done["outputs"][0]).content))
    assert (img.format, img.size) == ("JPEG", (1536, 1024))
    # the newer path without /result answers the same
    assert http.get(f"/api/v3/predictions/{data['id']}").json()["data"]["outputs"] == done["outputs"]


@pytest.mark.parametrize(("body", "params", "code", "message"), [
    ({"prompt": "x"}, {}, 400, "images is required and must be a non-empty array of image URLs"),
    ({"images": ["https://x/a.png"]}, {}, 400, "prompt is required"),
    ({"images": ["https://x/a.png"], "prompt": "x", "aspect_ratio": "7:5"}, {}, 400,
     "aspect_ratio must be one of 1:1, 1:2, 2:1, 1:3, 3:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 9:21, 21:9; "
     "got '7:5'"),
    ({"images": ["https://x/a.png"], "prompt": "x", "resolution": "8k"}, {}, 400,
     "resolution must be one of 1k, 2k, 4k; got '8k'"),
    ({"images": ["https://x/a.png"], "prompt": "x", "enable_base64_output": True}, {"webhook": "http://h/x"}, 400,
     "enable_base64_output cannot be used together with a webhook"),
])
def test_sandbox_refuses_what_wavespeed_refuses(http: httpx.Client, body: dict[str, Any], params: dict[str, str],
                                                 code: int, message: str) -> None:
    resp = _submit(http, body, **params)
    assert resp.status_code == code
    assert resp.json() == {"code": code, "message": message, "data": None}


def test_sandbox_auth_and_unknown_ids(http: httpx.Client, sandbox_url: str) -> None:
    resp = httpx.post(f"{sandbox_url}/wavespeed/api/v3/{MODEL}", json={"images": ["a"], "prompt": "x"})
    assert resp.status_code == 401 and resp.json()["code"] == 401
    assert http.get("/api/v3/predictions/nope/result").status_code == 404
    assert _submit(http, {"images": ["a"], "prompt": "x"}).status_code == 200  # (fails later: not an image)
    other = http.post("/api/v3/openai/gpt-image-9/edit", json={"images": ["a"], "prompt": "x"})
    assert other.status_code == 404


def test_sandbox_base64_output_and_unusable_input(http: httpx.Client) -> None:
    sub = _submit(http, {"images": [data_uri(EXAMPLES / "mug.png")], "prompt": "x", "enable_base64_output": True,
                         "output_format": "png", "resolution": "1k"}).json()["data"]
    done = _wait_done(http, sub["id"])
    img = Image.open(io.BytesIO(base64.b64decode(done["outputs"][0])))
    assert (img.format, img.size) == ("PNG", (1024, 1024))
    bad = _submit(http, {"images": ["data:image/png;base64,AAAA"], "prompt": "x"}).json()["data"]
    failed = _wait_done(http, bad["id"])
    assert failed["status"] == "failed" and failed["outputs"] == []
    assert failed["error"].startswith("failed to load images[0]")


def test_wavespeed_sdk_contract(sandbox_url: str, http: httpx.Client) -> None:
    """The official SDK, pointed at the sandbox by base URL only, runs the edit flow unmodified."""
    import wavespeed

    client = wavespeed.Client(api_key="sdk-key", base_url=f"{sandbox_url}/wavespeed")
    inputs = {"images": [data_uri(EXAMPLES / "mug.png"), data_uri(EXAMPLES / "bottle.png")],
              "prompt": "put the mug on a table", "aspect_ratio": "2:3", "resolution": "1k", "quality": "low",
              "output_format": "png"}
    out = client.run(MODEL, inputs, timeout=60, poll_interval=0.05)
    assert list(out) == ["outputs"] and len(out["outputs"]) == 1
    img = Image.open(io.BytesIO(httpx.get(out["outputs"][0]).content))
    assert (img.format, img.size) == ("PNG", (1024, 1536))
    sync = client.run(MODEL, {**inputs, "aspect_ratio": "1:1"}, timeout=60, enable_sync_mode=True)
    assert Image.open(io.BytesIO(httpx.get(sync["outputs"][0]).content)).size == (1024, 1024)
    entries = httpx.get(f"{sandbox_url}/_sandbox/requests", params={"provider": "wavespeed"}).json()["requests"]
    assert entries[-1]["headers"]["x-client-name"] == "wavespeed-python"
    # a failed task: HTTP 200 with data.status failed; the SDK raises with the task's error
    assert http.patch(f"{sandbox_url}/_sandbox/config", json={"job_failure_rate": 1.0}).status_code == 200
    with pytest.raises(RuntimeError, match="sandbox injected job failure"):
        client.run(MODEL, inputs, timeout=60, poll_interval=0.05, max_retries=0)


# ------------------------------------------------------------------------------------------------ adapter <-> sandbox
def test_adapter_submits_polls_and_verifies_a_real_delivery(sandbox_url: str, http: httpx.Client, peer: Peer) -> None:
    a = WaveSpeedProtocol(WaveSpeedSettings(api_key=SecretStr(KEY), base_url=f"{sandbox_url}/wavespeed"))
    job = make_job(images=["a.png", "b.png", "c.png"], inputs=[record(), record("b.png"), record("c.png")],
                   output_format="jpeg", size="1024x1536")
    urls = [data_uri(EXAMPLES / n) for n in ("mug.png", "bottle.png", "backpack.png")]
    hook = f"{peer.url}/webhooks/wavespeed?job=job_1"

    async def flow() -> tuple[Any, Any, WebhookEvent, list[str]]:
        async with httpx.AsyncClient() as http:
            client = client_of(a, http)
            sub = await a.submit(client, job, a.build_request(job, InputUrls(images=urls), hook))
            outcome = await a.poll(client, sub.request_id, sub.handle)
            while not outcome.done:
                await asyncio.sleep(0.02)
                outcome = await a.poll(client, sub.request_id, sub.handle)
            path, headers, body = await asyncio.to_thread(
                wait_for, lambda: next(iter(peer.for_id(sub.request_id)), None), 20.0, "webhook")
            event = await a.verify_webhook(client, headers, body, now=time.time())
            rejected = []
            for hdrs, raw, now in (
                (headers, body.replace(b'"completed"', b'"failed"', 1), time.time()),  # tampered body
                ({**headers, "webhook-signature": sign_v3("whsec_wrong", headers["webhook-id"],
                                                          int(headers["webhook-timestamp"]), body)}, body, time.time()),
                (headers, body, time.time() + 301),  # stale
            ):
                try:
                    await a.verify_webhook(client, hdrs, raw, now=now)
                except WebhookRejected as exc:
                    rejected.append(str(exc))
            assert path == "/webhooks/wavespeed?job=job_1"
            return sub, outcome, event, rejected

    sub, outcome, event, rejected = run(flow())
    assert outcome.done and len(outcome.result.outputs) == 1
    assert event.request_id == sub.request_id and event.payload["status"] == "completed"
    assert event.payload["outputs"] == [o.url for o in outcome.result.outputs]
    assert event.payload["input"]["aspect_ratio"] == "2:3"
    assert rejected == ["signature does not match", "signature does not match", "timestamp outside tolerance"]
    same = run(a.webhook_outcome(client_of(a), event, sub.handle))
    assert [o.url for o in same.result.outputs] == [o.url for o in outcome.result.outputs]
    img = Image.open(io.BytesIO(httpx.get(outcome.result.outputs[0].url).content))
    assert (img.format, img.size) == ("JPEG", (1024, 1536))


def test_configured_secret_is_used_as_raw_utf8_not_base64() -> None:
    secret = "whsec_QUJD"  # base64 of "ABC": WaveSpeed keys with the text "QUJD" itself
    a = adapter(webhook_secret=secret)
    body = json.dumps({"id": "t1", "status": "completed", "outputs": []}).encode()
    ts = int(time.time())
    good = {"webhook-id": "m1", "webhook-timestamp": str(ts), "webhook-signature": sign_v3(secret, "m1", ts, body)}
    event = run(a.verify_webhook(client_of(a), good, body, now=ts))
    assert (event.delivery_id, event.request_id) == ("m1", "t1")
    b64_keyed = "v3," + hmac.new(b"ABC", f"m1.{ts}.".encode() + body, hashlib.sha256).hexdigest()
    with pytest.raises(WebhookRejected):
        run(a.verify_webhook(client_of(a), {**good, "webhook-signature": b64_keyed}, body, now=ts))
    with pytest.raises(WebhookRejected, match="missing header webhook-id"):
        run(a.verify_webhook(client_of(a), {"webhook-timestamp": str(ts)}, body, now=ts))


def test_bad_signature_fault_is_refused_by_the_adapter(sandbox_url: str, http: httpx.Client, peer: Peer) -> None:
    assert http.patch(f"{sandbox_url}/_sandbox/config", json={"webhook_bad_signature_rate": 1.0}).status_code == 200
    try:
        sub = _submit(http, {"images": [data_uri(EXAMPLES / "mug.png")], "prompt": "x"},
                      webhook=f"{peer.url}/bad").json()["data"]
        _, headers, body = wait_for(lambda: next(iter(peer.for_id(sub["id"])), None), what="webhook")
    finally:
        http.patch(f"{sandbox_url}/_sandbox/config", json={"webhook_bad_signature_rate": 0.0})
    a = WaveSpeedProtocol(WaveSpeedSettings(api_key=SecretStr(KEY), base_url=f"{sandbox_url}/wavespeed"))
    with pytest.raises(WebhookRejected, match="signature does not match"):
        run(a.verify_webhook(client_of(a), headers, body, now=time.time()))


def test_the_webhook_secret_is_fetched_through_the_client_once_and_a_failed_fetch_keeps_the_door_shut() -> None:
    secret = "whsec_fetched-secret-1"
    calls: list[httpx.Request] = []
    answers = [httpx.Response(500, text="down"), httpx.Response(200, json={"code": 200, "data": {"secret": secret}})]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return answers.pop(0)

    a = adapter()
    client = mock_client(SPEC, a, handler)
    body = json.dumps({"id": "t1", "status": "completed", "outputs": []}).encode()
    ts = int(time.time())
    headers = {"webhook-id": "m1", "webhook-timestamp": str(ts), "webhook-signature": sign_v3(secret, "m1", ts, body)}
    with pytest.raises(WebhookRejected, match="signature does not match"):
        run(a.verify_webhook(client, headers, body, now=ts))  # the fetch failed: nothing verifies
    event = run(a.verify_webhook(client, headers, body, now=ts + 61))  # a minute later it is fetched again
    assert event.request_id == "t1"
    run(a.verify_webhook(client, {**headers, "webhook-timestamp": str(ts + 62),
                                  "webhook-signature": sign_v3(secret, "m1", ts + 62, body)}, body, now=ts + 62))
    assert [(r.method, str(r.url)) for r in calls] == [("GET", "https://api.wavespeed.test/api/v3/webhook/secret")] * 2
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in calls)
    assert calls[0].extensions["timeout"]["read"] == 10.0


def test_spec_matches_the_old_adapter() -> None:
    assert (SPEC.name, SPEC.synchronous, SPEC.webhooks, SPEC.batches, SPEC.auth_scheme) == (
        "wavespeed", False, True, False, "Bearer")
    assert SPEC.local_env("http://sb:1") == {"EDITQ_WAVESPEED_BASE_URL": "http://sb:1/wavespeed",
                                             "EDITQ_WAVESPEED_API_KEY": "ws-sandbox-key"}
    assert isinstance(SPEC.load_protocol(), WaveSpeedProtocol)


def test_contract_cases_hold_against_validate() -> None:
    from editq.providers.wavespeed.cases import CASES

    a = adapter()
    for fields in CASES.accepted:
        assert a.validate(make_job(**fields)) == [], fields
    for fields, words in CASES.refused:
        extra: dict[str, Any] = {"mask_input": record("mask.png")} if "mask" in fields else {}
        problems = a.validate(make_job(**fields, **extra))
        assert any(p.startswith("wavespeed: ") and words in p for p in problems), (fields, problems)


# ------------------------------------------------------------------------------------------------ emulator faithfulness
def test_emulator_output_sizes_are_ones_gpt_image_2_makes() -> None:
    from editq.providers.wavespeed.emulator import ASPECT_RATIOS, RESOLUTIONS, output_size

    for aspect in ASPECT_RATIOS:
        for resolution in RESOLUTIONS:
            size = output_size(aspect, resolution)
            assert size_problems(*size) == [], (aspect, resolution, size)
    w, h = output_size("21:9", "2k")  # 4778x2048 before the caps
    assert max(w, h) <= 3840 and w * h <= 8_294_400


@pytest.mark.parametrize(("body", "message"), [
    ({"images": "https://x/a.png", "prompt": "x"}, "images is required and must be a non-empty array of image URLs"),
    ({"images": [5], "prompt": "x"}, "images must contain image URL strings"),
    ({"images": ["https://x/a.png"], "prompt": 5}, "prompt is required"),
    ({"images": ["https://x/a.png"], "prompt": "x", "quality": "auto"},
     "quality must be one of low, medium, high; got 'auto'"),
    ({"images": ["https://x/a.png"], "prompt": "x", "resolution": "1K"},
     "resolution must be one of 1k, 2k, 4k; got '1K'"),
    ({"images": ["https://x/a.png"], "prompt": "x", "aspect_ratio": 1}, "aspect_ratio must be one of 1:1, 1:2, 2:1, "
     "1:3, 3:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 9:21, 21:9; got 1"),
    ({"images": ["https://x/a.png"], "prompt": "x", "enable_sync_mode": 1}, "enable_sync_mode must be a boolean"),
    ({"images": ["https://x/a.png"], "prompt": "x", "enable_base64_output": "false"},
     "enable_base64_output must be a boolean"),
])
def test_emulator_refuses_wrong_types_as_wavespeed(body: dict[str, Any], message: str) -> None:
    from editq.providers.wavespeed.emulator import Problem, check_body

    with pytest.raises(Problem, match="^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        check_body(body)


def test_emulator_accepts_documented_defaults_and_explicit_null() -> None:
    from editq.providers.wavespeed.emulator import check_body

    body = {"images": ["https://x/a.png"], "prompt": "x", "resolution": "1k", "quality": "medium",
            "enable_sync_mode": False, "enable_base64_output": False}
    assert check_body(body) == body
    nulls = {"images": ["https://x/a.png"], "prompt": "x", "aspect_ratio": None, "resolution": None,
             "quality": None, "output_format": None}
    assert check_body(nulls) == nulls
