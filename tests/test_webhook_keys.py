"""Webhook signing keys: a failed fetch counts toward the once-a-minute refetch limit, so forged deliveries (or
a provider whose key endpoint is down) never cause more than one fetch a minute; fal deliveries need the fal
user id. Narrow unit tests on in-process fakes of the key endpoints (the receiver is tested over HTTP in
test_webhook_security.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import httpx
import pytest
from nacl.signing import SigningKey

from editq.providers.fal import SPEC as FAL_SPEC
from editq.providers.fal import FalSettings
from editq.providers.fal.protocol import FalProtocol
from editq.providers.signatures import WebhookSecret
from editq.worker.errors import WebhookRejected
from tests.factories import client_of


def _fal_headers(key: SigningKey, body: bytes, user: str = "u1") -> dict[str, str]:
    ts = str(int(time.time()))
    msg = "\n".join(["r1", user, ts, hashlib.sha256(body).hexdigest()]).encode()
    return {"X-Fal-Webhook-Request-Id": "r1", "X-Fal-Webhook-User-Id": user, "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": key.sign(msg).signature.hex()}


def test_failed_fal_key_fetches_count_toward_the_refetch_limit() -> None:
    fetches: list[float] = []

    def down(request: httpx.Request) -> httpx.Response:
        fetches.append(time.time())
        return httpx.Response(503)

    body = json.dumps({"request_id": "r1", "status": "OK", "payload": {}}).encode()
    forged = _fal_headers(SigningKey.generate(), body)

    async def run() -> None:
        a = FalProtocol(FalSettings(api_key="k" * 12, user_id="u1"))
        async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as raw:
            http = client_of(FAL_SPEC, a, raw)
            now = time.time()
            for i in range(50):  # fifty deliveries within one minute
                with pytest.raises(WebhookRejected):
                    await a.verify_webhook(http, forged, body, now=now + i)
            assert len(fetches) == 1
            with pytest.raises(WebhookRejected):  # a minute later: one more try
                await a.verify_webhook(http, forged, body, now=now + 61)
            assert len(fetches) == 2

    asyncio.run(run())


def test_failed_secret_fetches_count_toward_the_refetch_limit() -> None:
    calls = 0

    async def fetch() -> str | None:
        nonlocal calls
        calls += 1
        return None  # the provider's secret endpoint is down

    async def run() -> None:
        secret = WebhookSecret(lambda s: s.encode(), min_refresh_s=60)
        for i in range(50):
            assert not await secret.verify(None, fetch, lambda key: True, now=1000.0 + i)
        assert calls == 1
        assert not await secret.verify(None, fetch, lambda key: True, now=1061.0)
        assert calls == 2

    asyncio.run(run())


def test_a_kept_secret_is_still_checked_while_a_refetch_is_throttled() -> None:
    calls = 0

    async def fetch() -> str | None:
        nonlocal calls
        calls += 1
        return "right" if calls == 1 else None

    async def run() -> None:
        secret = WebhookSecret(lambda s: s.encode(), min_refresh_s=60)
        assert await secret.verify(None, fetch, lambda key: key == b"right", now=0.0 + 1000)
        for i in range(20):  # forgeries: the first mismatch after the limit refetches, the rest do not
            assert not await secret.verify(None, fetch, lambda key: key == b"forged", now=1100.0 + i)
        assert calls == 2
        assert await secret.verify(None, fetch, lambda key: key == b"right", now=1130.0)  # old key kept

    asyncio.run(run())


def test_fal_deliveries_need_the_fal_user_id() -> None:
    key = SigningKey.generate()
    body = json.dumps({"request_id": "r1", "status": "OK", "payload": {}}).encode()
    doc = {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": __import__("base64").urlsafe_b64encode(
        bytes(key.verify_key)).rstrip(b"=").decode()}]}

    async def run(a: FalProtocol, user: str) -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=doc))) as raw:
            ev = await a.verify_webhook(client_of(FAL_SPEC, a, raw), _fal_headers(key, body, user), body,
                                        now=time.time())
            return ev.request_id

    with pytest.raises(WebhookRejected, match="EDITQ_FAL_USER_ID is not set"):
        asyncio.run(run(FalProtocol(FalSettings(api_key="k" * 12, user_id=None)), "anyone"))
    with pytest.raises(WebhookRejected, match="another fal user"):
        asyncio.run(run(FalProtocol(FalSettings(api_key="k" * 12, user_id="u1")), "u2"))
    assert asyncio.run(run(FalProtocol(FalSettings(api_key="k" * 12, user_id="u1")), "u1")) == "r1"
