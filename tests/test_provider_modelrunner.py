"""ModelRunner: pure translation, error classification, the sandbox emulator over real HTTP, and the adapter
against it (submit -> status -> result, billingStatus semantics, Standard Webhooks deliveries)."""

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
from standardwebhooks import Webhook

from editq.providers.modelrunner import SPEC, ModelRunnerSettings
from editq.providers.modelrunner.protocol import ModelRunnerProtocol
from editq.providers.types import InputUrls, WebhookEvent
from editq.worker.errors import ErrorKind, ProviderError, WebhookRejected
from tests.factories import EXAMPLES, data_uri, mock_http, provider_http, record, run
from tests.factories import client_of as _client_of
from tests.factories import make_job as _make_job
from tests.sandbox_proc import sandbox_process, wait_for
from tests.webhook_peer import Peer, peer_fixture

MODEL = "openai/gpt-image-2/edit"
KEY = "mr-secret-key-456"
make_job = partial(_make_job, "modelrunner", quality="low")
client_of = partial(_client_of, SPEC)
T = TypeVar("T")


def adapter(**settings: Any) -> ModelRunnerProtocol:
    base = {"api_key": KEY, "base_url": "https://queue.modelrunner.test", "rest_url": "https://modelrunner.test"}
    return ModelRunnerProtocol(ModelRunnerSettings(**{**base, **settings}))


def sign_v1(secret: str, msg_id: str, ts: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return "v1," + base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()


# ------------------------------------------------------------------------------------------------ validate
def test_canonical_features_are_allowed() -> None:
    job = make_job(mask="m.png", mask_input=record("m.png"), num_images=2, output_format="jpeg",
                   images=["a", "b", "c"], size="1536x1024", quality="auto")
    assert adapter().validate(job) == []


def test_refusals_name_provider_field_and_allowed_values() -> None:
    job = make_job(num_images=5, size="3840x3840", background="transparent")
    assert adapter().validate(job) == [
        "modelrunner: num_images=5 is not allowed; allowed values: 1 to 4",
        "modelrunner: size=3840x3840 is not allowed (total pixels must be between 655,360 and 8,294,400); "
        "allowed values: auto, 1024x1024, 512x512, 768x1024, 576x1024, 1024x768, 1024x576, or a custom WxH "
        "within those rules",
        "modelrunner: background=transparent is not supported (the gpt-image-2 edit input has no background "
        "parameter; outputs are opaque); allowed values: auto, opaque",
    ]
    assert adapter(field_names={"images": "x"}).validate(make_job()) == [
        "modelrunner: EDITQ_MODELRUNNER_FIELD_NAMES renames unknown fields ['images']; allowed keys: prompt, "
        "image_urls, mask_url, image_size, quality, num_images, output_format"
    ]


# ------------------------------------------------------------------------------------------------ build_request
def test_build_request_body_headers_and_reserved_keys() -> None:
    job = make_job(mask="m.png", mask_input=record("m.png"), num_images=2, output_format="jpeg", size="1024x768",
                   priority="interactive")
    req = adapter().build_request(job, InputUrls(images=["https://s3/a"], mask="https://s3/m"),
                                  "https://hooks.example/webhooks/modelrunner?job=job_1")
    assert (req.method, req.path, req.params) == ("POST", "/openai/gpt-image-2/edit", {})
    assert req.json == {
        "prompt": "make it sepia", "image_urls": ["https://s3/a"], "image_size": "landscape_4_3", "quality": "low",
        "num_images": 2, "output_format": "jpeg", "mask_url": "https://s3/m",
        "metadata": {"editq_job_id": "job_1", "editq_batch_id": "batch_1"},
        "webhook": "https://hooks.example/webhooks/modelrunner?job=job_1", "webhook_events_filter": ["completed"],
    }
    assert req.headers == {"x-modelrunner-queue-priority": "normal"}


def test_build_request_custom_size_model_path_and_field_names() -> None:
    a = adapter(model_path="acme/gpt-image-2-edit", field_names={"image_urls": "images", "image_size": "size"})
    req = a.build_request(make_job(size="1536x1024"), InputUrls(images=["https://s3/a"]), None)
    assert req.path == "/acme/gpt-image-2-edit"
    assert req.json is not None
    assert req.json["images"] == ["https://s3/a"] and req.json["size"] == {"width": 1536, "height": 1024}
    assert "webhook" not in req.json and "image_urls" not in req.json
    assert req.headers == {"x-modelrunner-queue-priority": "low"}
    # a job naming another model goes there verbatim
    assert a.build_request(make_job(model="bfl/flux-edit"), InputUrls(images=["u"]), None).path == "/bfl/flux-edit"


# ------------------------------------------------------------------------------------------------ errors (in-process)
async def _submit_with(handler: Callable[[httpx.Request], httpx.Response]) -> ProviderError:
    a = adapter()
    job = make_job()
    async with mock_http(handler) as http:
        with pytest.raises(ProviderError) as info:
            await a.submit(client_of(a, http), job, a.build_request(job, InputUrls(images=["https://s3/a"]), None))
    return info.value


def test_submit_errors_are_classified_and_never_leak_the_key() -> None:
    def auth(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Key {KEY}"
        return httpx.Response(401, json={"error": f"bad key {KEY}", "message": "x", "statusCode": 401})

    err = run(_submit_with(auth))
    assert err.kind is ErrorKind.terminal and KEY not in err.reason and "bad key ***" in err.reason
    broke = run(_submit_with(lambda r: httpx.Response(402, json={"error": "Insufficient balance"})))
    assert (broke.kind, broke.reason) == (ErrorKind.terminal, "modelrunner submit: HTTP 402: Insufficient balance")
    limited = run(_submit_with(lambda r: httpx.Response(429, json={"error": "busy"}, headers={"Retry-After": "3"})))
    assert limited.kind is ErrorKind.retryable and limited.retry_after_s == 3.0
    invalid = run(_submit_with(lambda r: httpx.Response(
        400, json={"error": [{"path": ["image_urls", 0], "message": "Invalid url", "code": "invalid_string"}]})))
    assert invalid.reason == "modelrunner submit: HTTP 400: image_urls.0: Invalid url"
    missing = run(_submit_with(lambda r: httpx.Response(404, json={"error": "Model not found"})))
    assert missing.kind is ErrorKind.terminal and "EDITQ_MODELRUNNER_MODEL_PATH" in missing.reason


def test_returned_urls_are_followed_only_on_the_api_origin() -> None:
    a = adapter()
    job = make_job()
    req = a.build_request(job, InputUrls(images=["https://s3/a"]), None)
    own = "https://queue.modelrunner.test/openai/gpt-image-2/edit/requests/" + "r" * 21

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"status": "IN_QUEUE", "request_id": "r" * 21, "status_url": own + "/status",
                                         "response_url": "https://evil.example/steal", "cancel_url": own + "/cancel"})

    async def go() -> Any:
        async with mock_http(handler) as http:
            return await a.submit(client_of(a, http), job, req)

    sub = run(go())
    assert sub.handle == {"status_url": own + "/status", "response_url": own, "cancel_url": own + "/cancel"}


def _routes(status: tuple[int, dict[str, Any]], result: tuple[int, dict[str, Any]] | None = None) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            return httpx.Response(status[0], json=status[1])
        assert result is not None, "result fetched before COMPLETED"
        return httpx.Response(result[0], json=result[1])

    return handler


def _poll(handler: Any) -> Any:
    q = "https://queue.modelrunner.test/x/requests/r"
    handle = {"status_url": q + "/status", "response_url": q, "cancel_url": q + "/cancel"}

    async def go() -> Any:
        a = adapter()
        async with mock_http(handler) as http:
            return await a.poll(client_of(a, http), "r", handle)

    return run(go())


def test_billing_status_decides_success() -> None:
    ok = {"id": "r", "status": "COMPLETED", "billingStatus": "partial", "totalPrice": "0.12",
          "output": {"images": [{"url": "https://media/a.png", "content_type": "image/png"}], "seed": 4}}
    out = _poll(_routes((200, {"status": "COMPLETED"}), (200, ok)))
    assert out.done and [o.url for o in out.result.outputs] == ["https://media/a.png"]
    assert out.result.usage.cost_usd == 0.12 and out.result.usage.cost_source == "provider"
    assert out.result.raw["output"] == {"seed": 4}
    bare = _poll(_routes((200, {"status": "COMPLETED"}), (200, {**ok, "billingStatus": "charged",
                                                                "output": ["https://media/b.png"]})))
    assert [o.url for o in bare.result.outputs] == ["https://media/b.png"]
    failed = _poll(_routes((200, {"status": "COMPLETED"}), (422, {**ok, "billingStatus": "failed", "output": None,
                                                                  "error": "Provider error: content policy"})))
    assert failed.done and failed.result is None and failed.error.kind is ErrorKind.terminal
    assert failed.error.reason == "modelrunner: Provider error: content policy"
    pending = _poll(_routes((200, {"status": "COMPLETED"}), (200, {**ok, "billingStatus": "pending"})))
    assert not pending.done
    invalid = _poll(_routes((200, {"status": "COMPLETED"}), (422, {"error": "Invalid output from inference.",
                                                                   "details": {"code": "INVALID_OUTPUT"}})))
    assert invalid.error.kind is ErrorKind.unknown and invalid.error.provider_code == "INVALID_OUTPUT"


def test_failed_status_is_http_400_and_terminal_for_this_request() -> None:
    out = _poll(_routes((400, {"status": "FAILED", "request_id": "r", "error": "Provider error: boom"})))
    assert out.done and out.error.kind is ErrorKind.unknown
    assert out.error.reason == "modelrunner: request FAILED: Provider error: boom"
    assert not _poll(_routes((200, {"status": "IN_PROGRESS"}))).done
    gone = _poll(_routes((404, {"error": "Request not found"})))
    assert gone.done and gone.error.kind is ErrorKind.terminal
    with pytest.raises(ProviderError) as info:
        _poll(_routes((503, {"error": "unavailable"})))
    assert info.value.kind is ErrorKind.retryable


# ------------------------------------------------------------------------------------------------ the sandbox
@pytest.fixture(scope="module")
def sandbox_url() -> Iterator[str]:
    with sandbox_process("--seed", "13", "--render-workers", "4") as url:
        yield url


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    yield from peer_fixture()


@pytest.fixture()
def http(sandbox_url: str) -> Iterator[httpx.Client]:
    yield from provider_http(sandbox_url, "modelrunner", "Key test", {
        "latency_s": 0.05, "jitter_s": 0.0, "job_failure_rate": 0.0, "concurrency": 8,
        "webhook_retry_backoff_s": 0.05, "webhook_lost_rate": 0.0, "render": "real"})


def _wait_status(http: httpx.Client, sub: dict[str, Any], *states: str) -> httpx.Response:
    def reached() -> httpx.Response | None:
        resp = http.get(sub["status_url"])
        return resp if resp.json()["status"] in states else None

    return wait_for(reached, what=f"{sub['request_id']} in {states}")


def test_sandbox_queue_protocol(http: httpx.Client, sandbox_url: str) -> None:
    body = {"prompt": "sepia", "image_urls": [data_uri(EXAMPLES / "mug.png")], "num_images": 2,
            "output_format": "jpeg", "quality": "low", "metadata": {"batch": "b1"}}
    resp = http.post(f"/{MODEL}", json=body, headers={"x-modelrunner-queue-priority": "low"})
    assert resp.status_code == 201
    sub = resp.json()
    assert sub["status"] == "IN_QUEUE" and len(sub["request_id"]) == 21 and sub["queue_position"] == 0
    base = f"{sandbox_url}/modelrunner/{MODEL}/requests/{sub['request_id']}"
    assert (sub["response_url"], sub["status_url"], sub["cancel_url"]) == (base, base + "/status", base + "/cancel")
    status = _wait_status(http, sub, "COMPLETED")
    assert status.status_code == 200 and status.json()["metrics"]["inference_time"] > 0
    result = http.get(sub["response_url"]).json()
    assert (result["status"], result["billingStatus"], result["totalPrice"]) == ("COMPLETED", "charged", "0.02")
    assert result["metadata"] == {"batch": "b1"} and "metadata" not in result["input"]
    images = result["output"]["images"]
    assert len(images) == 2 and all(i["content_type"] == "image/jpeg" for i in images)
    assert Image.open(io.BytesIO(httpx.get(images[0]["url"]).content)).format == "JPEG"
    assert http.get(f"/requests/{sub['request_id']}").json()["output"] == result["output"]
    assert http.put(sub["cancel_url"]).json()["status"] == "COMPLETED"  # cancel is a no-op on models
    entry = httpx.get(f"{sandbox_url}/_sandbox/requests/{sub['request_id']}").json()
    assert entry["priority"] == "low" and entry["headers"]["x-modelrunner-queue-priority"] == "low"


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"prompt": "x"}, 400, [{"path": ["image_urls"], "message": "Field required", "code": "missing"}]),
    ({"prompt": "x", "image_urls": ["https://h/a.png"], "num_images": 9}, 400,
     [{"path": ["num_images"], "message": "Input should be less than or equal to 4", "code": "less_than_equal"}]),
    ({"prompt": "x", "image_urls": ["https://h/a.png"], "webhook_events_filter": ["completed"]}, 400,
     "webhook_events_filter requires webhook"),
    ({"prompt": "x", "image_urls": ["https://h/a.png"], "webhook": "https://h/x", "webhook_events_filter": ["done"]},
     400, "webhook_events_filter must be a list of: completed, start"),
    ({"prompt": "x", "image_urls": ["https://h/a.png"], "webhook": "https://u:p@h/x"}, 400,
     "webhook must not embed credentials"),
])
def test_sandbox_refuses_invalid_submits(http: httpx.Client, body: dict[str, Any], status: int, error: Any) -> None:
    resp = http.post(f"/{MODEL}", json=body)
    assert resp.status_code == status
    assert resp.json()["error"] == error and resp.json()["statusCode"] == status


def test_sandbox_auth_unknown_model_and_early_result(http: httpx.Client, sandbox_url: str) -> None:
    assert httpx.post(f"{sandbox_url}/modelrunner/{MODEL}", json={}).status_code == 401
    unknown = http.post("/acme/unknown-model", json={"prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"] == "Model 'acme/unknown-model' not found"
    assert http.patch(sandbox_url + "/_sandbox/config", json={"latency_s": 5.0}).status_code == 200
    sub = http.post(f"/{MODEL}", json={"prompt": "x", "image_urls": [data_uri(EXAMPLES / "mug.png")]}).json()
    early = http.get(sub["response_url"])
    assert early.status_code == 400 and early.json()["error"] == "Request is not completed yet"
    assert http.get(f"/{MODEL}/requests/nope/status").status_code == 404


def test_sandbox_provider_failure_is_completed_with_billing_failed(http: httpx.Client, sandbox_url: str) -> None:
    assert http.patch(sandbox_url + "/_sandbox/config", json={"job_failure_rate": 1.0}).status_code == 200
    sub = http.post(f"/{MODEL}", json={"prompt": "x", "image_urls": [data_uri(EXAMPLES / "mug.png")]}).json()
    assert _wait_status(http, sub, "COMPLETED", "FAILED").json()["status"] == "COMPLETED"
    result = http.get(sub["response_url"])
    assert result.status_code == 422
    assert (result.json()["billingStatus"], result.json()["output"]) == ("failed", None)
    assert "sandbox injected job failure" in result.json()["error"]


# ------------------------------------------------------------------------------------------------ adapter <-> sandbox
def test_adapter_flow_and_standard_webhooks_delivery(sandbox_url: str, http: httpx.Client, peer: Peer) -> None:
    a = ModelRunnerProtocol(ModelRunnerSettings(api_key=SecretStr(KEY), base_url=f"{sandbox_url}/modelrunner",
                                               rest_url=f"{sandbox_url}/modelrunner"))
    job = make_job(mask="m.png", mask_input=record("m.png"), num_images=2, output_format="png")
    urls = InputUrls(images=[data_uri(EXAMPLES / "mug.png")], mask=data_uri(EXAMPLES / "mask_mug.png"))
    hook = f"{peer.url}/webhooks/modelrunner?job=job_1"

    async def flow() -> tuple[Any, Any, WebhookEvent, dict[str, str], bytes, list[str]]:
        async with httpx.AsyncClient() as http:
            client = client_of(a, http)
            sub = await a.submit(client, job, a.build_request(job, urls, hook))
            outcome = await a.poll(client, sub.request_id, sub.handle)
            while not outcome.done:
                await asyncio.sleep(0.02)
                outcome = await a.poll(client, sub.request_id, sub.handle)
            path, headers, body = await asyncio.to_thread(
                wait_for, lambda: next(iter(peer.for_id(sub.request_id)), None), 20.0, "webhook")
            assert path == "/webhooks/modelrunner?job=job_1"
            event = await a.verify_webhook(client, headers, body, now=time.time())
            rejected = []
            wrong = sign_v1("whsec_" + base64.b64encode(b"not-the-secret").decode(), headers["webhook-id"],
                            int(headers["webhook-timestamp"]), body)
            for hdrs, raw, now in (
                (headers, body.replace(b'"charged"', b'"partial"', 1), time.time()),
                ({**headers, "webhook-signature": wrong}, body, time.time()),
                (headers, body, time.time() + 301),
            ):
                try:
                    await a.verify_webhook(client, hdrs, raw, now=now)
                except WebhookRejected as exc:
                    rejected.append(str(exc))
            return sub, outcome, event, headers, body, rejected

    sub, outcome, event, headers, body, rejected = run(flow())
    assert outcome.done and len(outcome.result.outputs) == 2
    assert outcome.result.usage.cost_usd == 0.02
    assert event.request_id == sub.request_id and event.delivery_id == headers["webhook-id"]
    assert event.payload["event"] == "completed" and event.payload["billingStatus"] == "charged"
    assert rejected == ["signature does not match", "signature does not match", "timestamp outside tolerance"]
    # the reference Standard Webhooks library agrees with the signature
    secret = http.get("/webhooks/default/secret").json()["key"]
    assert Webhook(secret).verify(body, headers)["id"] == sub.request_id
    from_hook = run(a.webhook_outcome(client_of(a), event, sub.handle))
    assert [o.url for o in from_hook.result.outputs] == [o.url for o in outcome.result.outputs]
    # the mask is honoured: pixels outside the editable area are byte-identical to the input
    src = Image.open(EXAMPLES / "mug.png").convert("RGB")
    alpha = Image.open(EXAMPLES / "mask_mug.png").getchannel("A")
    out = Image.open(io.BytesIO(httpx.get(outcome.result.outputs[0].url).content)).convert("RGB")
    keep = [(x, y) for x in range(0, 512, 8) for y in range(0, 512, 8) if alpha.getpixel((x, y)) != 0]
    assert keep and all(out.getpixel(p) == src.getpixel(p) for p in keep)


def test_configured_secret_and_rotation_list() -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()
    old = "whsec_" + base64.b64encode(b"old-secret-old-secret").decode()
    a = adapter(webhook_secret=secret)
    body = json.dumps({"event": "completed", "id": "r" * 21, "status": "COMPLETED"}).encode()
    ts = int(time.time())
    both = f"{sign_v1(old, 'msg_1', ts, body)} {sign_v1(secret, 'msg_1', ts, body)}"
    event = run(a.verify_webhook(client_of(a), {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
                                                        "webhook-signature": both}, body, now=ts))
    assert (event.delivery_id, event.request_id) == ("msg_1", "r" * 21)
    only_old = {"webhook-id": "msg_1", "webhook-timestamp": str(ts),
                "webhook-signature": sign_v1(old, "msg_1", ts, body)}
    with pytest.raises(WebhookRejected, match="signature does not match"):
        run(a.verify_webhook(client_of(a), only_old, body, now=ts))


# ------------------------------------------------------------------------------------------------ official SDK
def test_modelrunner_ai_sdk_contract(sandbox_url: str, http: httpx.Client, peer: Peer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`modelrunner-ai` (0.6.0; optional, not a project dependency), pointed at the sandbox by its URL constants
    only, submits, polls, fetches the result and verifies a delivery unmodified."""
    sdk = pytest.importorskip("modelrunner_ai")
    import modelrunner_ai.client as sdk_client

    monkeypatch.setattr(sdk_client, "QUEUE_URL_FORMAT", f"{sandbox_url}/modelrunner/")
    monkeypatch.setattr(sdk_client, "WEBHOOK_SECRET_URL", f"{sandbox_url}/modelrunner/webhooks/default/secret")
    client = sdk.SyncClient(key="sdk-key")
    handle = client.submit(MODEL, {"prompt": "sepia", "image_urls": [data_uri(EXAMPLES / "watch.png")],
                                   "num_images": 2, "output_format": "webp", "quality": "low"},
                           priority="low", metadata={"sku": "W1"}, webhook_url=f"{peer.url}/hooks/sdk",
                           webhook_events=["completed"])
    result = handle.get()
    assert (result["id"], result["status"], result["billingStatus"]) == (handle.request_id, "COMPLETED", "charged")
    assert result["metadata"] == {"sku": "W1"} and len(result["output"]["images"]) == 2
    assert Image.open(io.BytesIO(httpx.get(result["output"]["images"][0]["url"]).content)).format == "WEBP"
    handle.cancel()  # accepted (a no-op on model endpoints)
    _, headers, body = wait_for(lambda: next(iter(peer.for_id(handle.request_id)), None), what="webhook")
    payload = sdk.verify_webhook(client.get_webhook_secret(), headers, body)
    assert payload["event"] == "completed" and payload["output"] == result["output"]
    entry = httpx.get(f"{sandbox_url}/_sandbox/requests/{handle.request_id}").json()
    assert entry["headers"]["user-agent"].startswith("modelrunner-ai/") and entry["priority"] == "low"


def test_bad_signature_fault_is_refused_by_the_adapter(sandbox_url: str, http: httpx.Client, peer: Peer) -> None:
    assert http.patch(f"{sandbox_url}/_sandbox/config", json={"webhook_bad_signature_rate": 1.0}).status_code == 200
    try:
        sub = http.post(f"/{MODEL}", json={"prompt": "x", "image_urls": [data_uri(EXAMPLES / "mug.png")],
                                           "webhook": f"{peer.url}/bad"}).json()
        _, headers, body = wait_for(lambda: next(iter(peer.for_id(sub["request_id"])), None), what="webhook")
    finally:
        http.patch(f"{sandbox_url}/_sandbox/config", json={"webhook_bad_signature_rate": 0.0})
    a = ModelRunnerProtocol(ModelRunnerSettings(api_key=SecretStr(KEY), base_url=f"{sandbox_url}/modelrunner",
                                               rest_url=f"{sandbox_url}/modelrunner"))
    with pytest.raises(WebhookRejected, match="signature does not match"):
        run(a.verify_webhook(client_of(a), headers, body, now=time.time()))


# ------------------------------------------------------------------------------------------------ the port's rules
def test_rest_url_host_may_receive_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from editq.providers.spec import credential_hosts

    for name in ("EDITQ_MODELRUNNER_BASE_URL", "EDITQ_MODELRUNNER_REST_URL", "EDITQ_MODELRUNNER_AUTH_HOSTS"):
        monkeypatch.delenv(name, raising=False)  # a stack started earlier in this process may have set them
    assert credential_hosts(ModelRunnerSettings()) == {"queue.modelrunner.run", "modelrunner.run"}
    monkeypatch.setenv("EDITQ_MODELRUNNER_REST_URL", "http://127.0.0.1:8900/modelrunner")
    monkeypatch.setenv("EDITQ_MODELRUNNER_AUTH_HOSTS", '["media.modelrunner.ai"]')
    assert credential_hosts(ModelRunnerSettings()) == {"queue.modelrunner.run", "127.0.0.1:8900",
                                                       "media.modelrunner.ai"}
    assert SPEC.load_protocol().settings.auth_hosts == ["media.modelrunner.ai", "127.0.0.1:8900"]


def test_secret_is_fetched_from_the_rest_host_with_the_key() -> None:
    secret = "whsec_" + base64.b64encode(b"fetched-secret-0123").decode()
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        return httpx.Response(200, json={"key": secret})

    a = adapter()
    body = json.dumps({"event": "completed", "id": "r" * 21, "status": "COMPLETED"}).encode()
    ts = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": sign_v1(secret, "msg_1", ts,
                                                                                                 body)}

    async def go() -> WebhookEvent:
        async with mock_http(handler) as http:
            return await a.verify_webhook(client_of(a, http), headers, body, now=ts)

    assert run(go()).request_id == "r" * 21
    assert seen == [("https://modelrunner.test/webhooks/default/secret", f"Key {KEY}")]


def test_a_failed_secret_fetch_refuses_the_delivery() -> None:
    a = adapter()
    body = b'{"id": "r"}'
    ts = int(time.time())
    headers = {"webhook-id": "m", "webhook-timestamp": str(ts),
               "webhook-signature": sign_v1("whsec_" + base64.b64encode(b"x" * 20).decode(), "m", ts, body)}

    async def go(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        async with mock_http(handler) as http:
            await a.verify_webhook(client_of(a, http), headers, body, now=ts)

    for handler in (lambda r: httpx.Response(500, json={"error": "down"}), lambda r: httpx.Response(200, text="x")):
        with pytest.raises(WebhookRejected, match="signature does not match"):
            run(go(handler))
    with pytest.raises(WebhookRejected, match="no v1 signature"):
        run(a.verify_webhook(client_of(a), {**headers, "webhook-signature": "v2,abc"}, body, now=ts))


def test_credentials_never_go_to_another_host() -> None:
    """A handle naming another host (an old record, a tampered one) is refused by the client, not sent."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"status": "IN_PROGRESS"})

    a = adapter()

    async def go() -> Any:
        async with mock_http(handler) as http:
            return await a.poll(client_of(a, http), "r", {"status_url": "https://evil.example/s",
                                                         "response_url": "https://evil.example/r"})

    with pytest.raises(ProviderError, match="refusing to send credentials") as info:
        run(go())
    assert sent == [] and KEY not in info.value.reason


def test_cancel_is_best_effort() -> None:
    calls: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, str(request.url)))
        if len(calls) == 1:
            return httpx.Response(200, json={"status": "IN_PROGRESS"})
        raise httpx.ConnectError("refused")

    a = adapter()
    url = "https://queue.modelrunner.test/x/requests/r/cancel"

    async def go() -> None:
        async with mock_http(handler) as http:
            c = client_of(a, http)
            await a.cancel(c, "r", {"cancel_url": url})
            await a.cancel(c, "r", {"cancel_url": url})  # a transport error is swallowed
            await a.cancel(c, "r", {})  # nothing to cancel

    run(go())
    assert calls == [("PUT", url), ("PUT", url)]


def test_unreadable_answers_are_errors_not_crashes() -> None:
    unreadable = run(_submit_with(lambda r: httpx.Response(201, text="<html>ok</html>")))
    assert unreadable.kind is ErrorKind.unknown and unreadable.maybe_billed and "malformed" in unreadable.reason
    with pytest.raises(ProviderError, match="status: malformed answer"):
        _poll(lambda r: httpx.Response(200, text="not json"))
    with pytest.raises(ProviderError, match="result: malformed answer"):
        _poll(_routes((200, {"status": "COMPLETED"}), (200, ["a"])))  # type: ignore[arg-type]
    # a transport failure after the submit left may have been billed (the client's billing line)
    timed_out = run(_submit_with(lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow"))))
    assert timed_out.kind is ErrorKind.retryable and timed_out.maybe_billed
    refused = run(_submit_with(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused"))))
    assert refused.kind is ErrorKind.retryable and not refused.maybe_billed and "not sent" in refused.reason


def test_webhook_payload_outcomes() -> None:
    from editq.providers.modelrunner.protocol import result_outcome

    ok = result_outcome({"id": "r", "status": "COMPLETED", "billingStatus": "charged",
                         "output": {"images": [{"url": "https://m/a.png"}]}})
    assert ok.done and ok.result is not None and [o.url for o in ok.result.outputs] == ["https://m/a.png"]
    retry = result_outcome({"status": "COMPLETED", "billingStatus": "failed", "error": "upstream HTTP 503"})
    assert retry.error is not None and retry.error.kind is ErrorKind.retryable
    assert result_outcome({"status": "CANCELLED"}).error.provider_code == "CANCELLED"  # type: ignore[union-attr]
    assert not result_outcome({"status": "COMPLETED", "billingStatus": "pending"}).done
