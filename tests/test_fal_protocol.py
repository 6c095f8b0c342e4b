"""fal protocol: pure translation and rules, webhook verification, and error classification.

HTTP error paths use httpx.MockTransport (a narrow in-process fake); the real protocol is exercised
end to end against the sandbox in test_spine_*.py."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from functools import partial
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey

from editq.providers.fal import SPEC, FalSettings
from editq.providers.fal.protocol import FalProtocol
from editq.providers.types import InputUrls
from editq.worker.errors import ErrorKind, ProviderError, WebhookRejected
from editq.worker.provider_client import ProviderClient
from tests.factories import client_of, make_job, record

REC = record("a.png", s3_key="k")
job = partial(make_job, None, job_id="j1", batch_id="b1", prompt="make it blue", images=["a.png"], inputs=[REC])
client_on = partial(client_of, SPEC)


def adapter(**kw: Any) -> FalProtocol:
    settings: dict[str, Any] = {"user_id": "u1", **kw}
    return FalProtocol(FalSettings(api_key="secret-key-123", base_url="https://queue.example", **settings))


def test_build_request_is_exact() -> None:
    req = adapter().build_request(
        job(size="1024x768", quality="low", num_images=2, output_format="jpeg", priority="interactive",
            mask="m.png"),
        InputUrls(images=["https://s3/a?sig"], mask="https://s3/m?sig"),
        "https://hooks.example/webhooks/fal?job=j1",
    )
    assert (req.method, req.path) == ("POST", "/openai/gpt-image-2/edit")
    assert req.json == {"prompt": "make it blue", "image_urls": ["https://s3/a?sig"], "image_size": "landscape_4_3",
                        "quality": "low", "num_images": 2, "output_format": "jpeg", "mask_url": "https://s3/m?sig"}
    assert req.params == {"fal_webhook": "https://hooks.example/webhooks/fal?job=j1"}
    assert req.headers == {"X-Fal-Queue-Priority": "normal"}
    bulk = adapter().build_request(job(size="1040x1040"), InputUrls(images=["u"]), None)
    assert bulk.json is not None and bulk.json["image_size"] == {"width": 1040, "height": 1040}
    assert bulk.params == {} and bulk.headers == {"X-Fal-Queue-Priority": "low"}
    auto = adapter().build_request(job(), InputUrls(images=["u"]), None).json
    assert auto is not None and auto["image_size"] == "auto"


def test_validate_names_provider_field_and_allowed_values() -> None:
    a = adapter()
    assert a.validate(job()) == []
    assert a.validate(job(size="512x512")) == []  # a fal preset (square)
    assert a.validate(job(num_images=5)) == ["fal: num_images=5 is not allowed; allowed values: 1 to 4"]
    (msg,) = a.validate(job(size="640x640"))
    assert msg.startswith("fal: size=640x640 is not allowed (total pixels must be between 655,360 and 8,294,400)")
    assert a.validate(job(background="transparent"))[0].startswith("fal: background=transparent is not supported")


def _signed(
    key: SigningKey, body: bytes, rid: str = "req-1", user: str = "u1", ts: int | None = None
) -> dict[str, str]:
    import hashlib

    ts = int(time.time()) if ts is None else ts
    msg = "\n".join([rid, user, str(ts), hashlib.sha256(body).hexdigest()]).encode()
    return {"X-Fal-Webhook-Request-Id": rid, "X-Fal-Webhook-User-Id": user, "X-Fal-Webhook-Timestamp": str(ts),
            "X-Fal-Webhook-Signature": key.sign(msg).signature.hex()}


def _jwks_http(*keys: SigningKey) -> httpx.AsyncClient:
    doc = {"keys": [{"kty": "OKP", "crv": "Ed25519",
                     "x": base64.urlsafe_b64encode(bytes(k.verify_key)).rstrip(b"=").decode()} for k in keys]}
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=doc)))


def test_webhook_verification() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    body = json.dumps({"request_id": "req-1", "status": "OK", "payload": {"images": []}}).encode()

    async def run() -> None:
        a = adapter(user_id="u1")
        async with _jwks_http(key) as raw:
            http = client_on(a, raw)
            ev = await a.verify_webhook(http, _signed(key, body), body, now=time.time())
            assert ev.request_id == "req-1" and ev.payload["status"] == "OK"
            for headers, b, why in [
                (_signed(other, body), body, "signature"),
                (_signed(key, body), body + b" ", "signature"),
                (_signed(key, body, ts=int(time.time()) - 301), body, "timestamp"),
                (_signed(key, body, user="u2"), body, "another fal user"),
                ({}, body, "missing header"),
            ]:
                with pytest.raises(WebhookRejected, match=why):
                    await a.verify_webhook(http, headers, b, now=time.time())

    asyncio.run(run())


def test_a_burst_of_first_deliveries_fetches_the_jwks_once() -> None:
    """A wave of jobs finishing right after start-up: 200 deliveries arrive before any key is cached."""
    key = SigningKey.generate()
    doc = {"keys": [{"kty": "OKP", "crv": "Ed25519",
                     "x": base64.urlsafe_b64encode(bytes(key.verify_key)).rstrip(b"=").decode()}]}
    fetches = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.01)  # the fetch is in flight while the other deliveries arrive
        return httpx.Response(200, json=doc)

    async def run() -> list[str]:
        a = adapter(user_id="u1")
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as raw:
            http = client_on(a, raw)
            bodies = [json.dumps({"request_id": f"r{i}", "status": "OK", "payload": {}}).encode() for i in range(200)]
            events = await asyncio.gather(*(
                a.verify_webhook(http, _signed(key, b, rid=f"r{i}"), b, now=time.time()) for i, b in enumerate(bodies)
            ))
        return [e.request_id for e in events]

    assert asyncio.run(run()) == [f"r{i}" for i in range(200)]
    assert fetches == 1


def test_receiver_start_prefetches_the_jwks_so_deliveries_need_no_fetch() -> None:
    key = SigningKey.generate()
    doc = {"keys": [{"kty": "OKP", "crv": "Ed25519",
                     "x": base64.urlsafe_b64encode(bytes(key.verify_key)).rstrip(b"=").decode()}]}
    fetched: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200, json=doc)

    async def run() -> str:
        a = adapter()
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as raw:
            http = client_on(a, raw)
            await a.prepare_webhooks(http)
            assert fetched == [a.settings.jwks_url]
            body = json.dumps({"request_id": "r1", "status": "OK", "payload": {}}).encode()
            ev = await a.verify_webhook(http, _signed(key, body, rid="r1"), body, now=time.time())
        return ev.request_id

    assert asyncio.run(run()) == "r1"
    assert len(fetched) == 1  # the delivery was verified with the prefetched keys
    unconfigured = FalProtocol(FalSettings(api_key=None))
    asyncio.run(unconfigured.prepare_webhooks(client_on(unconfigured, httpx.AsyncClient(
        transport=httpx.MockTransport(handler)))))
    assert len(fetched) == 1  # fal not configured: nothing fetched at start


class _client:
    """A fal client on a mock transport (a narrow in-process fake of fal's answers)."""

    def __init__(self, handler: Any, a: FalProtocol | None = None) -> None:
        self.raw = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        self.client = client_on(a or adapter(), self.raw)

    async def __aenter__(self) -> ProviderClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.raw.aclose()


def test_errors_are_classified_and_never_leak_the_key() -> None:
    a = adapter()
    req = a.build_request(job(), InputUrls(images=["u"]), None)

    async def submit_with(resp: httpx.Response) -> ProviderError:
        async with _client(lambda r: resp) as http:
            with pytest.raises(ProviderError) as exc:
                await a.submit(http, job(), req)
        return exc.value

    async def run() -> None:
        e429 = await submit_with(httpx.Response(429, headers={"retry-after": "7"}, json={"detail": "slow down"}))
        assert e429.kind is ErrorKind.retryable and e429.retry_after_s == 7.0
        e503 = await submit_with(httpx.Response(503, headers={"x-fal-error-type": "runner_scheduling_failure"},
                                                json={"detail": "busy", "error_type": "runner_scheduling_failure"}))
        assert e503.kind is ErrorKind.retryable and e503.provider_code == "runner_scheduling_failure"
        e422 = await submit_with(httpx.Response(422, json={"detail": [{"loc": ["body", "prompt"], "msg": "required"}]}))
        assert e422.kind is ErrorKind.terminal and "prompt" in e422.reason
        e401 = await submit_with(httpx.Response(401, json={"detail": "bad key secret-key-123?"}))
        assert e401.kind is ErrorKind.terminal
        for err in (e429, e503, e422):
            assert "secret-key-123" not in err.reason

        def boom(r: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused")

        async with _client(boom) as http:
            with pytest.raises(ProviderError) as exc:
                await a.submit(http, job(), req)
        assert exc.value.kind is ErrorKind.retryable and "secret-key-123" not in str(exc.value)

    asyncio.run(run())


def test_poll_states() -> None:
    a = adapter()
    handle = {"status_url": "https://queue.example/s", "response_url": "https://queue.example/r",
              "cancel_url": "https://queue.example/c"}

    def handler(status: dict[str, Any], result: httpx.Response | None = None) -> Any:
        def h(r: httpx.Request) -> httpx.Response:
            if r.url.path == "/s":
                return httpx.Response(202 if status["status"] != "COMPLETED" else 200, json=status)
            assert result is not None
            return result
        return h

    async def run() -> None:
        async with _client(handler({"status": "IN_QUEUE", "queue_position": 3})) as http:
            o = await a.poll(http, "r", handle)
            assert not o.done and o.info["queue_position"] == 3
        ok = httpx.Response(200, json={"images": [{"url": "https://cdn/x.png", "content_type": "image/png"}]})
        async with _client(handler({"status": "COMPLETED"}, ok)) as http:
            o = await a.poll(http, "r", handle)
            assert o.done and o.result is not None and o.result.outputs[0].url == "https://cdn/x.png"
        failed = {"status": "COMPLETED", "error": "boom", "error_type": "runner_disconnected"}
        async with _client(handler(failed)) as http:
            o = await a.poll(http, "r", handle)
            assert o.done and o.error is not None and o.error.kind is ErrorKind.retryable
        bad = httpx.Response(422, json={"detail": [{"loc": ["body", "image_urls", 0], "msg": "unreachable"}]})
        async with _client(handler({"status": "COMPLETED"}, bad)) as http:
            o = await a.poll(http, "r", handle)
            assert o.done and o.error is not None and o.error.kind is ErrorKind.terminal

    asyncio.run(run())


@pytest.mark.parametrize(("body", "kind", "code"), [
    # fal could not fetch our own input (our S3 unreachable): retried, by status and by webhook alike
    ({"status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": [
        {"loc": ["body", "image_urls", 0], "msg": "Failed to download the file", "type": "file_download_error"}]}},
     ErrorKind.retryable, "file_download_error"),
    ({"status": "ERROR", "error": "Invalid status code: 500",
      "payload": {"detail": "Internal error", "error_type": "runner_disconnected"}},
     ErrorKind.retryable, "runner_disconnected"),
    ({"status": "ERROR", "error": "Invalid status code: 422", "payload": {"detail": [
        {"loc": ["body", "image_urls", 0], "msg": "not an image", "type": "image_load_error"}]}},
     ErrorKind.terminal, "image_load_error"),
    ({"status": "ERROR", "error": "boom", "error_type": "request_timeout", "payload": None},
     ErrorKind.retryable, "request_timeout"),
])
def test_webhook_failures_keep_their_error_type(body: dict[str, Any], kind: ErrorKind, code: str) -> None:
    from editq.providers.fal.protocol import webhook_payload_outcome

    outcome = webhook_payload_outcome({"request_id": "r", **body})
    assert outcome is not None and outcome.error is not None
    assert (outcome.error.kind, outcome.error.provider_code) == (kind, code)


def test_a_failed_input_download_is_retried_when_polled() -> None:
    a = adapter()
    handle = {"status_url": "https://queue.example/s", "response_url": "https://queue.example/r",
              "cancel_url": "https://queue.example/c"}
    status = {"status": "COMPLETED", "error": "Failed to download the file", "error_type": "file_download_error"}

    async def run() -> None:
        async with _client(lambda r: httpx.Response(200, json=status)) as http:
            o = await a.poll(http, "r", handle)
        assert o.done and o.error is not None and o.error.kind is ErrorKind.retryable

    asyncio.run(run())
