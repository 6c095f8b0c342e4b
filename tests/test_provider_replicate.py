"""Replicate protocol: pure translation (validate, build_request, answers -> Outcome, errors, webhook
verification, output auth), its calls through a ProviderClient on a mock transport, and its I/O against
the real sandbox over HTTP (a `python -m editq.sandbox` process)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import SecretStr

from editq.providers.replicate import SPEC, ReplicateSettings
from editq.providers.replicate.protocol import ReplicateProtocol, answer_error, api_url, parse_get
from editq.providers.types import Answer, InputUrls, Outcome
from editq.schemas.job import EditJob, InputRecord
from editq.worker import redact
from editq.worker.errors import ErrorKind, ProviderError, WebhookRejected
from tests.factories import client_of as _client_of
from tests.factories import data_uri as _data_uri
from tests.factories import make_job as _make_job
from tests.factories import mock_client as _mock_client
from tests.factories import patched_sandbox, record
from tests.sandbox_proc import sandbox_process
from tests.webhook_peer import Peer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KEY = "r8_TopSecretToken123"
SECRET_BYTES = b"0123456789abcdef01234567"
SECRET = "whsec_" + base64.b64encode(SECRET_BYTES).decode()
T = TypeVar("T")


def _record(name: str = "a") -> InputRecord:
    return record(f"{name}.png", sha256=hashlib.sha256(name.encode()).hexdigest(), bytes=10)


make_job = partial(_make_job, "replicate", prompt="Put the mug on a table", images=["a.png"], inputs=[_record()],
                   idempotency_key="k1")
client_of = partial(_client_of, SPEC)
mock_client = partial(_mock_client, SPEC)


def adapter(**kw: Any) -> ReplicateProtocol:
    settings = ReplicateSettings(api_key=SecretStr(KEY), base_url="https://api.replicate.com", **kw)
    return ReplicateProtocol(settings)


def _ans(status: int, json_body: Any = None, text: str = "", headers: dict[str, str] | None = None) -> Answer:
    body = json.dumps(json_body).encode() if json_body is not None else text.encode()
    return Answer(status, headers or {}, body)


# ================================================================ validate
def test_validate_accepts_the_supported_job() -> None:
    a = adapter()
    assert a.validate(make_job()) == []
    for size in ("auto", "1024x1024", "1536x1024", "1024x1536"):
        assert a.validate(make_job(size=size, output_format="jpeg", quality="high", background="opaque")) == []
    assert a.validate(make_job(model="openai/gpt-image-2")) == []


def test_validate_refuses_mask_with_a_precise_message() -> None:
    job = make_job(mask="mask.png", mask_input=_record("m"))
    assert adapter().validate(job) == [
        "replicate: mask is not supported: openai/gpt-image-2 on Replicate has no mask input; "
        "remove the mask or route the job to a provider that accepts masks (e.g. fal)"
    ]


def test_validate_refuses_other_values_naming_field_and_allowed_values() -> None:
    a = adapter()
    assert a.validate(make_job(num_images=2)) == ["replicate: num_images=2 is not allowed; allowed values: 1"]
    assert a.validate(make_job(size="2048x2048")) == [
        "replicate: size=2048x2048 is not allowed; allowed values: auto, 1024x1024 (1:1), 1536x1024 (3:2), "
        "1024x1536 (2:3)"
    ]
    assert a.validate(make_job(background="transparent")) == [
        "replicate: background=transparent is not allowed; allowed values: auto, opaque"
    ]
    assert a.validate(make_job(model="black-forest-labs/flux-kontext")) == [
        "replicate: model=black-forest-labs/flux-kontext is not available; allowed values: "
        "openai/gpt-image-2/edit, openai/gpt-image-2"
    ]
    problems = a.validate(make_job(num_images=3, size="1024x768", mask="m.png", mask_input=_record("m")))
    assert len(problems) == 3 and all(p.startswith("replicate: ") for p in problems)


def test_max_num_images_is_a_setting() -> None:
    a = adapter(max_num_images=4)
    assert a.validate(make_job(num_images=4)) == []
    assert a.validate(make_job(num_images=5)) == ["replicate: num_images=5 is not allowed; allowed values: 1 to 4"]


# ================================================================ build_request
def test_build_request_exact_body_with_webhook() -> None:
    job = make_job(size="1536x1024", quality="low", output_format="jpeg", background="opaque",
                   inputs=[_record("a"), _record("b"), _record("c")], images=["a.png", "b.png", "c.png"])
    urls = InputUrls(images=["https://s3/a?sig", "https://s3/b?sig", "https://s3/c?sig"])
    req = adapter().build_request(job, urls, "https://hooks.example/webhooks/replicate?job=job_1")
    assert (req.method, req.path, req.params, req.headers) == (
        "POST", "/v1/models/openai/gpt-image-2/predictions", {}, {})
    assert req.json == {
        "input": {
            "prompt": "Put the mug on a table",
            "input_images": ["https://s3/a?sig", "https://s3/b?sig", "https://s3/c?sig"],
            "aspect_ratio": "3:2",
            "quality": "low",
            "output_format": "jpeg",
            "background": "opaque",
            "number_of_images": 1,
        },
        "webhook": "https://hooks.example/webhooks/replicate?job=job_1",
        "webhook_events_filter": ["completed"],
    }
    assert KEY not in json.dumps(req.json)


def test_build_request_without_webhook_and_auto_size() -> None:
    req = adapter(cancel_after="45m").build_request(make_job(), InputUrls(images=["https://s3/a"]), None)
    assert req.json is not None
    assert "webhook" not in req.json and "webhook_events_filter" not in req.json
    assert req.json["input"]["aspect_ratio"] == "auto"
    assert req.json["input"]["output_format"] == "png" and req.json["input"]["quality"] == "medium"
    assert req.headers == {"Cancel-After": "45m"}


def test_cancel_after_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="cancel_after"):
        ReplicateSettings(cancel_after="soon")
    assert ReplicateSettings(cancel_after="1h30m").cancel_after == "1h30m"


# ================================================================ answers -> Outcome
def _pred(status: str, **kw: Any) -> dict[str, Any]:
    return {"id": "p1", "model": "openai/gpt-image-2", "version": "hidden", "status": status, "input": {},
            "output": None, "error": None, "logs": "", "metrics": {}, "data_removed": False,
            "created_at": "2026-01-01T00:00:00Z", "urls": {}, **kw}


def test_outcome_running_and_succeeded_with_usage() -> None:
    a = adapter()
    assert a.outcome(_pred("starting")).done is False
    assert a.outcome(_pred("processing")).done is False
    logs = "Generating...\nInput text token count: 100\nInput image token count: 1000\nOutput token count: 2000"
    out = a.outcome(_pred("succeeded", output=["https://replicate.delivery/x/out-0.png"], logs=logs,
                          metrics={"predict_time": 12.5}))
    assert out.done and out.result is not None and out.error is None
    assert [o.url for o in out.result.outputs] == ["https://replicate.delivery/x/out-0.png"]
    usage = out.result.usage
    assert usage is not None
    assert (usage.input_text_tokens, usage.input_image_tokens, usage.output_tokens) == (100, 1000, 2000)
    assert usage.cost_usd == pytest.approx((100 * 5 + 1000 * 8 + 2000 * 30) / 1e6)
    assert usage.cost_source == "tokens"
    assert out.result.raw["metrics"] == {"predict_time": 12.5}
    single = a.outcome(_pred("succeeded", output="https://replicate.delivery/y.webp"))
    assert single.result is not None and [o.url for o in single.result.outputs] == ["https://replicate.delivery/y.webp"]


def _err(out: Outcome) -> ProviderError:
    assert out.done and out.result is None and out.error is not None
    return out.error


def test_outcome_terminal_failures_are_classified() -> None:
    a = adapter()
    gone = _err(a.outcome(_pred("succeeded", output=None, data_removed=True)))
    assert gone.kind is ErrorKind.terminal and gone.provider_code == "data_removed"
    assert "deleted (data_removed) before editq collected them" in gone.reason
    mod = _err(a.outcome(_pred("failed", error="Your request was rejected by the safety system (moderation)")))
    assert mod.kind is ErrorKind.terminal and "safety system" in mod.reason
    assert _err(a.outcome(_pred("failed", error="OpenAI request timed out"))).kind is ErrorKind.retryable
    assert _err(a.outcome(_pred("failed", error="something odd"))).kind is ErrorKind.unknown
    aborted = _err(a.outcome(_pred("aborted")))
    assert aborted.kind is ErrorKind.retryable and aborted.provider_code == "aborted" and not aborted.maybe_billed
    assert _err(a.outcome(_pred("canceled"))).kind is ErrorKind.terminal
    assert _err(a.outcome(_pred("canceled", deadline="2026-01-01T00:05:00Z"))).kind is ErrorKind.retryable
    assert _err(a.outcome(_pred("exploded"))).kind is ErrorKind.unknown


# ================================================================ HTTP errors
def test_error_429_keeps_retry_after_from_header_or_body() -> None:
    body = {"title": "Too Many Requests", "detail": "Request was throttled. Your rate limit resets in ~30s.",
            "status": 429}
    with_header = answer_error(_ans(429, body, headers={"Retry-After": "7"}), "create")
    assert with_header.kind is ErrorKind.retryable and with_header.retry_after_s == 7.0
    assert not with_header.maybe_billed and with_header.provider_code == "rate_limited"
    from_body = answer_error(_ans(429, body), "create")
    assert from_body.retry_after_s == 30.0
    assert from_body.reason == ("replicate create: HTTP 429 Too Many Requests: Request was throttled. "
                                "Your rate limit resets in ~30s.")


def test_error_classes_and_no_key_in_messages() -> None:
    redact.register(KEY)  # a ProviderClient registers its key; the reason is redacted centrally
    r422 = answer_error(_ans(422, {"title": "Input validation failed", "status": 422,
                                   "detail": "- input.aspect_ratio: must be one of 1:1"}), "create")
    assert r422.kind is ErrorKind.terminal and r422.provider_code == "invalid_input"
    assert "input.aspect_ratio" in r422.reason
    r401 = answer_error(_ans(401, {"title": "Unauthenticated", "status": 401, "detail": f"Invalid token {KEY}"}),
                        "create")
    assert r401.kind is ErrorKind.terminal and KEY not in r401.reason and "***" in r401.reason
    r402 = answer_error(_ans(402, {"detail": "Insufficient credit", "status": 402}), "create")
    assert r402.kind is ErrorKind.terminal and r402.provider_code == "insufficient_credit"
    assert answer_error(_ans(504, text="gateway"), "create").maybe_billed is True
    assert answer_error(_ans(504, text="gateway"), "get").maybe_billed is False
    r503 = answer_error(_ans(503, text="<html>down</html>"), "create")
    assert r503.kind is ErrorKind.retryable and r503.maybe_billed is False
    assert answer_error(_ans(409, {"detail": "busy"}), "create").kind is ErrorKind.retryable


# ================================================================ webhook verification (pure, configured secret)
def _sign(body: bytes, msg_id: str, ts: int, secret_bytes: bytes = SECRET_BYTES) -> dict[str, str]:
    mac = hmac.new(secret_bytes, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": "v1," + base64.b64encode(mac).decode()}


def _verify(a: ReplicateProtocol, headers: dict[str, str], body: bytes, now: float) -> Any:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"a configured secret needs no request: {request.url}")

    async def go() -> Any:
        return await a.verify_webhook(mock_client(a, refuse), headers, body, now=now)

    return asyncio.run(go())


def test_verify_webhook_accepts_valid_and_refuses_forgeries() -> None:
    a = adapter(webhook_secret=SecretStr(SECRET))
    now = 1_800_000_000
    body = json.dumps(_pred("succeeded", output=["https://replicate.delivery/o.png"])).encode()
    event = _verify(a, _sign(body, "msg_abc", now), body, now + 3)
    assert (event.delivery_id, event.request_id, event.payload["status"]) == ("msg_abc", "p1", "succeeded")
    rotated = _sign(body, "msg_abc", now)
    rotated["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + rotated["webhook-signature"]
    assert _verify(a, rotated, body, now).request_id == "p1"

    cases = {
        "tampered": (_sign(body, "msg_abc", now), body.replace(b"o.png", b"evil.png")),
        "wrong key": (_sign(body, "msg_abc", now, b"another-secret-key-bytes"), body),
        "stale": (_sign(body, "msg_abc", now - 301), body),
        "future": (_sign(body, "msg_abc", now + 301), body),
        "other id": ({**_sign(body, "msg_abc", now), "webhook-id": "msg_other"}, body),
        "missing": ({k: v for k, v in _sign(body, "msg_abc", now).items() if k != "webhook-signature"}, body),
        "v2 only": ({**_sign(body, "msg_abc", now),
                     "webhook-signature": _sign(body, "msg_abc", now)["webhook-signature"].replace("v1,", "v2,")},
                    body),
    }
    for what, (headers, sent) in cases.items():
        with pytest.raises(WebhookRejected):
            _verify(a, headers, sent, now)
            pytest.fail(what)


def test_output_headers_only_for_trusted_hosts() -> None:
    a = adapter()
    client = client_of(a, httpx.AsyncClient())
    auth = {"Authorization": f"Bearer {KEY}"}

    def headers(url: str) -> dict[str, str]:
        return client.output_headers(url, a.output_auth(url))

    assert headers("https://replicate.delivery/xezq/abc/out-0.png") == auth
    assert headers("https://pbxt.replicate.delivery/abc/out-0.webp") == auth
    assert headers("https://api.replicate.com/v1/files/abc") == auth
    assert headers("https://replicate.delivery.evil.com/x.png") == {}
    assert headers("https://evil.com/replicate.delivery/x.png") == {}
    assert headers("http://replicate.delivery/x.png") == {}
    assert a.output_auth("http://replicate.delivery/x.png") is False
    # any subdomain of replicate.delivery (the default `.replicate.delivery` entry), nothing beside it
    assert a.output_auth("https://tjzk.replicate.delivery/x.png") is True
    assert headers("https://tjzk.replicate.delivery/x.png") == auth
    assert headers("https://notreplicate.delivery/x.png") == {}
    narrow = adapter(auth_hosts=["replicate.delivery"])  # an exact entry covers that host only
    assert client_of(narrow, httpx.AsyncClient()).output_headers("https://tjzk.replicate.delivery/x.png", True) == {}
    # a urls.get on another host is never trusted with the token
    assert api_url(a.settings.base_url, "https://evil.com/v1/predictions/p1", "/v1/predictions/p1") == \
        "https://api.replicate.com/v1/predictions/p1"


def test_auth_hosts_default_and_both_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ReplicateSettings().auth_hosts == [".replicate.delivery"]
    monkeypatch.setenv("EDITQ_REPLICATE_OUTPUT_AUTH_HOSTS", '["cdn.example"]')
    assert ReplicateSettings().auth_hosts == ["cdn.example"]
    monkeypatch.setenv("EDITQ_REPLICATE_AUTH_HOSTS", '["cdn2.example"]')
    assert ReplicateSettings().auth_hosts == ["cdn2.example"]


# ================================================================ calls through the client (mock transport)
def test_poll_cancel_and_secret_go_through_the_client_with_the_token() -> None:
    seen: list[tuple[str, str, str | None]] = []
    pred = _pred("succeeded", output=["https://replicate.delivery/o.png"])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.headers.get("authorization")))
        if request.url.path == "/v1/webhooks/default/secret":
            return httpx.Response(200, json={"key": SECRET})
        return httpx.Response(200, json=pred)

    a = adapter()
    now = 1_800_000_000
    body = json.dumps(pred).encode()

    async def go() -> None:
        client = mock_client(a, handler)
        out = await a.poll(client, "p1", {"get": "https://evil.com/v1/predictions/p1"})
        assert out.result is not None
        await a.cancel(client, "p1", {})
        event = await a.verify_webhook(client, _sign(body, "msg_1", now), body, now=now)
        assert event.request_id == "p1"
        await a.verify_webhook(client, _sign(body, "msg_2", now), body, now=now + 1)  # cached

    asyncio.run(go())
    bearer = f"Bearer {KEY}"
    assert seen == [
        ("GET", "https://api.replicate.com/v1/predictions/p1", bearer),
        ("POST", "https://api.replicate.com/v1/predictions/p1/cancel", bearer),
        ("GET", "https://api.replicate.com/v1/webhooks/default/secret", bearer),
    ]


def test_secret_fetch_failure_refuses_the_delivery_and_is_retried() -> None:
    calls: list[str] = []
    answers = [httpx.Response(500, json={"detail": "down"}), httpx.Response(200, json={"nokey": 1}),
               httpx.Response(200, json={"key": SECRET})]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return answers.pop(0)

    a = adapter()
    now = 1_800_000_000
    body = json.dumps(_pred("succeeded")).encode()

    async def go() -> None:
        client = mock_client(a, handler)
        with pytest.raises(WebhookRejected):  # the fetch failed: refused
            await a.verify_webhook(client, _sign(body, "m", now), body, now=now)
        assert len(calls) == 1
        # a failed fetch counts towards the limit: with no key held it is retried after 1 s, then 2 s, 4 s ...
        # (up to once a minute), so the deliveries in between fetch nothing
        for t in (0.2, 0.5, 0.9):
            with pytest.raises(WebhookRejected):
                await a.verify_webhook(client, _sign(body, "m", now), body, now=now + t)
        assert len(calls) == 1
        with pytest.raises(WebhookRejected):  # a second later: one more fetch (no key in the answer)
            await a.verify_webhook(client, _sign(body, "m", now + 1), body, now=now + 1)
        assert len(calls) == 2
        with pytest.raises(WebhookRejected):  # the next one is 2 s after that
            await a.verify_webhook(client, _sign(body, "m", now + 2), body, now=now + 2)
        assert len(calls) == 2
        later = now + 3
        assert (await a.verify_webhook(client, _sign(body, "m", later), body, now=later)).request_id == "p1"

    asyncio.run(go())
    assert calls == ["/v1/webhooks/default/secret"] * 3


def test_unreadable_answers_are_malformed_errors_never_crashes() -> None:
    bad = parse_get
    with pytest.raises(ProviderError) as info:
        bad(_ans(200, text="<html>oops</html>"))
    assert info.value.kind is ErrorKind.unknown and "malformed answer" in info.value.reason
    with pytest.raises(ProviderError) as info:
        bad(_ans(503, {"detail": "busy"}))
    assert info.value.kind is ErrorKind.retryable
    gone = bad(_ans(404, {"title": "Not found", "detail": "no such prediction", "status": 404}))
    assert gone.done and gone.error is not None and gone.error.provider_code == "not_found"

    a = adapter()

    async def go() -> None:
        created = mock_client(a, lambda r: httpx.Response(201, json={"status": "starting"}))
        job = make_job()
        with pytest.raises(ProviderError) as info:
            await a.submit(created, job, a.build_request(job, InputUrls(images=["https://s3/a"]), None))
        assert info.value.maybe_billed is True and "no prediction id" in info.value.reason

        def lost(request: httpx.Request) -> httpx.Response:
            raise httpx.ReadTimeout("slow", request=request)

        with pytest.raises(ProviderError) as info:
            await a.submit(mock_client(a, lost), job, a.build_request(job, InputUrls(images=["https://s3/a"]), None))
        assert info.value.kind is ErrorKind.retryable and info.value.maybe_billed is True

        def refused(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        with pytest.raises(ProviderError) as info:
            await a.submit(mock_client(a, refused), job,
                           a.build_request(job, InputUrls(images=["https://s3/a"]), None))
        assert info.value.kind is ErrorKind.retryable and info.value.maybe_billed is False
        # cancel never raises: a failed cancel changes nothing
        await a.cancel(mock_client(a, refused), "p1", {})

    asyncio.run(go())


# ================================================================ I/O against the real sandbox
BASELINE = {"latency_s": 0.05, "jitter_s": 0.0, "concurrency": 8, "submit_5xx_rate": 0.0, "submit_429_rate": 0.0,
            "submit_timeout_rate": 0.0, "job_failure_rate": 0.0, "webhook_lost_rate": 0.0, "retry_after_s": 2.0,
            "webhook_retry_backoff_s": 0.05}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[str]:
    with sandbox_process("--seed", "3", keep_sandbox_env=True) as url:
        yield url


@pytest.fixture
def sb(sandbox: str) -> Iterator[str]:
    yield from patched_sandbox(sandbox, BASELINE)


def _live(base: str, **kw: Any) -> ReplicateProtocol:
    return ReplicateProtocol(ReplicateSettings(api_key=SecretStr(KEY), base_url=base + "/replicate", **kw))


async def _run_to_end(a: ReplicateProtocol, http: httpx.AsyncClient, job: EditJob, webhook: str | None = None,
                      timeout: float = 20) -> tuple[str, Outcome]:
    req = a.build_request(job, InputUrls(images=[_data_uri()]), webhook)
    sub = await a.submit(client_of(a, http), job, req)
    deadline = time.monotonic() + timeout
    while True:
        out = await a.poll(client_of(a, http), sub.request_id, sub.handle)
        if out.done or time.monotonic() > deadline:
            return sub.request_id, out
        await asyncio.sleep(0.02)


def test_submit_poll_and_authenticated_output_download(sb: str) -> None:
    a = _live(sb)

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            rid, out = await _run_to_end(a, http, make_job(output_format="jpeg", size="1024x1024"))
            assert out.done and out.result is not None, out
            (ref,) = out.result.outputs
            assert ref.url and ref.url.startswith(f"{sb}/replicate/delivery/")
            assert out.result.usage is not None and out.result.usage.output_tokens
            headers = client_of(a, http).output_headers(ref.url, a.output_auth(ref.url))
            assert headers == {"Authorization": f"Bearer {a.settings.api_key.get_secret_value()}"}  # we send it
            got = await http.get(ref.url, headers=headers)
            assert got.status_code == 200 and got.content[:3] == b"\xff\xd8\xff"
            # the sandbox takes it without the token too (Replicate's JS client sends none), not a bad one
            assert (await http.get(ref.url)).content == got.content
            assert (await http.get(ref.url, headers={"Authorization": "Basic x"})).status_code == 401
            log = httpx.get(f"{sb}/_sandbox/requests/{rid}").json()
            assert log["input"]["input"]["aspect_ratio"] == "1:1"

    asyncio.run(go())


def test_sandbox_webhook_verifies_with_fetched_and_cached_secret(sb: str) -> None:
    hooks = Peer()
    a = _live(sb)  # no secret configured: fetched from GET /v1/webhooks/default/secret
    try:
        async def go() -> None:
            async with httpx.AsyncClient() as http:
                rid, out = await _run_to_end(a, http, make_job(), hooks.url + "/hook")
                assert out.done and out.result is not None
                headers, body = await asyncio.to_thread(hooks.wait, "/hook")
                now = time.time()
                event = await a.verify_webhook(client_of(a, http), headers, body, now=now)
                assert event.request_id == rid and event.delivery_id == f"msg_{rid}"
                assert json.loads(body)["status"] == "succeeded"
                polled = await a.webhook_outcome(client_of(a, http), event, {})
                assert polled.result is not None
                assert [o.url for o in polled.result.outputs] == [o.url for o in out.result.outputs]
                with pytest.raises(WebhookRejected):
                    await a.verify_webhook(client_of(a, http), headers, body.replace(b"succeeded", b"succeedes"),
                                           now=now)

        asyncio.run(go())
    finally:
        hooks.close()


def test_create_429_is_not_retried_and_creates_nothing(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"submit_429_rate": 1.0, "retry_after_s": 2.0}).raise_for_status()
    before = httpx.get(sb + "/_sandbox/stats").json()["providers"]["replicate"]
    a = _live(sb)

    async def go() -> ProviderError:
        async with httpx.AsyncClient() as http:
            job = make_job()
            with pytest.raises(ProviderError) as info:
                await a.submit(client_of(a, http), job, a.build_request(job, InputUrls(images=[_data_uri()]), None))
            return info.value

    err = asyncio.run(go())
    after = httpx.get(sb + "/_sandbox/stats").json()["providers"]["replicate"]
    assert err.kind is ErrorKind.retryable and err.status_code == 429 and err.retry_after_s == 2.0
    assert err.maybe_billed is False
    assert after["accepted"] == before["accepted"]
    assert after["rejected"].get("429", 0) == before["rejected"].get("429", 0) + 1  # exactly one POST


def test_create_timeout_is_maybe_billed_and_bad_token_is_terminal(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"submit_timeout_rate": 1.0, "timeout_hold_s": 2.0}).raise_for_status()
    job = make_job()

    async def go(a: ReplicateProtocol) -> ProviderError:
        async with httpx.AsyncClient() as http:
            with pytest.raises(ProviderError) as info:
                await a.submit(client_of(a, http), job, a.build_request(job, InputUrls(images=[_data_uri()]), None))
            return info.value

    slow = asyncio.run(go(_live(sb, timeout_s=0.3)))
    assert slow.kind is ErrorKind.retryable and slow.maybe_billed is True
    httpx.patch(sb + "/_sandbox/config", json={"submit_timeout_rate": 0.0}).raise_for_status()
    anonymous = ReplicateProtocol(ReplicateSettings(api_key=None, base_url=sb + "/replicate"))
    denied = asyncio.run(go(anonymous))
    assert denied.kind is ErrorKind.terminal and denied.status_code == 401
    assert denied.reason.startswith("replicate create: HTTP 401 Unauthenticated")


def test_cancel_running_and_cancel_after_aborts_a_queued_prediction(sb: str) -> None:
    httpx.patch(sb + "/_sandbox/config", json={"latency_s": 30.0, "concurrency": 1}).raise_for_status()
    a = _live(sb)
    deadline_adapter = _live(sb, cancel_after="5s")

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            job = make_job()
            inputs = InputUrls(images=[_data_uri()])
            blocker = await a.submit(client_of(a, http), job, a.build_request(job, inputs, None))
            queued = await deadline_adapter.submit(
                client_of(deadline_adapter, http), job, deadline_adapter.build_request(job, inputs, None))
            assert (await a.poll(client_of(a, http), queued.request_id, queued.handle)).info["status"] == "starting"
            end = time.monotonic() + 15
            while True:  # Cancel-After is at least 5 s
                out = await a.poll(client_of(a, http), queued.request_id, queued.handle)
                if out.done or time.monotonic() > end:
                    break
                await asyncio.sleep(0.05)
            err = out.error
            assert out.done and err is not None and err.provider_code == "aborted", out
            assert err.kind is ErrorKind.retryable and not err.maybe_billed
            assert (await a.poll(client_of(a, http), blocker.request_id, blocker.handle)).info["status"] == "processing"
            await a.cancel(client_of(a, http), blocker.request_id, blocker.handle)
            out = await a.poll(client_of(a, http), blocker.request_id, blocker.handle)
            err = out.error
            assert out.done and err is not None and err.provider_code == "canceled"
            assert err.kind is ErrorKind.terminal

    asyncio.run(go())


# ================================================================ the poll safety net stays far under the retention
def test_poll_safety_net_is_capped_for_replicate_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """With webhooks on and a global safety-net interval of 50 min, a Replicate prediction is still polled
    within `poll_safety_net_s` (outputs are deleted 1 h after completion); fal keeps the global interval."""
    import secrets
    from types import SimpleNamespace

    from editq.providers.fal.protocol import FalProtocol
    from editq.providers.types import Submitted
    from editq.schemas.settings import Settings, get_settings
    from editq.worker.pipeline import Pipeline
    from editq.worker.state import JobStore, State

    monkeypatch.setenv("EDITQ_KEY_PREFIX", f"editq-rcap-{secrets.token_hex(4)}")
    get_settings.cache_clear()
    try:
        settings = Settings(  # type: ignore[call-arg]
            webhook_base_url="http://hooks.local", webhook_secret="test-webhook-secret", poll_interval_webhook_s=3000,
            poll_max_s=3000)
        store = JobStore()
        kick = SimpleNamespace(collect=lambda: None, dispatch=lambda *a: None, poll=lambda *a: None,
                               send_collect=lambda: None, send_dispatch=lambda *a: None)
        pipe = Pipeline(store=store, storage=object(), settings=settings, kick=kick)  # type: ignore[arg-type]
        rep = adapter(poll_safety_net_s=120)
        fal = FalProtocol()
        scores = {}
        for name, adp in (("replicate", rep), ("fal", fal)):
            job = make_job(job_id=f"job_{name}", idempotency_key=f"k_{name}", provider=name)
            store.create(job)
            assert store.move(job.job_id, [State.queued], State.submitting, score=time.time() + 60).ok
            view = store.get(job.job_id)
            assert view is not None
            t0 = time.time()
            asyncio.run(pipe.submitted(adp, view, Submitted(request_id=f"rid_{name}", handle={})))
            first = store.r.zscore(store.k.inflight, job.job_id) - t0
            view = store.get(job.job_id)
            assert view is not None and view.state is State.submitted
            t1 = time.time()
            asyncio.run(pipe._after_poll(adp, view, Outcome.running()))
            scores[name] = (first, store.r.zscore(store.k.inflight, job.job_id) - t1)
        assert all(0 < s <= 121 for s in scores["replicate"]), scores
        assert all(s >= 2999 for s in scores["fal"]), scores
        store.r.delete(*store.k.scan(store.r))
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(("message", "kind"), [
    # the model could not fetch our own presigned input (our S3 was unreachable): our outage, retried
    ("Failed to load input_images[0]: Failed to download the file: ReadTimeout.", "retryable"),
    ("Failed to load input image: failed to download https://s3/x.png", "retryable"),
    ("Failed to load input_images[0]: The file is too large.", "terminal"),
    ("The input was flagged by moderation", "terminal"),
])
def test_input_fetch_failures_are_retried(message: str, kind: str) -> None:
    from editq.providers.replicate.protocol import model_error

    assert model_error(message, "p1").kind.value == kind
