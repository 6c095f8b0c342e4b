"""Webhook signing keys: every fetch counts toward the refetch limit, a failed one too, so forged deliveries (or a
provider whose key endpoint is down) never cause a fetch each: once a key is held, at most one fetch a minute;
while none is held (every delivery is refused then anyway), a failed fetch is retried after 1 s, 2 s, 4 s ...
up to the minute (providers/signatures.py KeyFetchLimit); fal deliveries need the fal user id.
Narrow unit tests on in-process fakes of the key endpoints (the receiver is tested over HTTP in
test_webhook_security.py and test_webhook_key_retry.py)."""

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
    now = time.time()

    def down(request: httpx.Request) -> httpx.Response:
        fetches.append(clock[0] - now)
        return httpx.Response(503)

    body = json.dumps({"request_id": "r1", "status": "OK", "payload": {}}).encode()
    forged = _fal_headers(SigningKey.generate(), body)
    clock = [now]

    async def run() -> None:
        a = FalProtocol(FalSettings(api_key="k" * 12, user_id="u1"))
        async with httpx.AsyncClient(transport=httpx.MockTransport(down)) as raw:
            http = client_of(FAL_SPEC, a, raw)
            for i in range(200):  # a forgery a second for 200 s, at a receiver that never got a key
                clock[0] = now + i
                with pytest.raises(WebhookRejected):
                    await a.verify_webhook(http, forged, body, now=now + i)

    asyncio.run(run())
    # backoff while no key is held (1, 2, 4, ... 32 s), then once a minute: 9 fetches for 200 deliveries
    assert fetches == [0, 1, 3, 7, 15, 31, 63, 123, 183]


def test_failed_secret_fetches_count_toward_the_refetch_limit() -> None:
    calls: list[float] = []
    clock = [0.0]

    async def fetch() -> str | None:
        calls.append(clock[0])
        return None  # the provider's secret endpoint is down

    async def run() -> None:
        secret = WebhookSecret(lambda s: s.encode(), min_refresh_s=60)
        for i in range(50):
            for _ in range(20):  # twenty deliveries a second
                clock[0] = 1000.0 + i
                assert not await secret.verify(None, fetch, lambda key: True, now=1000.0 + i)
        clock[0] = 1100.0
        assert not await secret.verify(None, fetch, lambda key: True, now=1100.0)

    asyncio.run(run())
    # 1,001 deliveries: a fetch at once, then after 1, 2, 4, 8, 16 s; the next is due at 1063 (32 s)
    assert calls == [1000.0, 1001.0, 1003.0, 1007.0, 1015.0, 1031.0, 1100.0]


def test_a_failed_first_fetch_is_retried_within_seconds_not_a_minute() -> None:
    """The chaos run: the key endpoint answered 503 once, and the receiver, holding no key, refused every
    valid delivery for the next minute."""
    answers = iter([None, "the-key"])  # one 503, then the endpoint is back

    async def fetch() -> str | None:
        return next(answers)

    async def run() -> list[bool]:
        secret = WebhookSecret(lambda s: s.encode(), min_refresh_s=60)
        valid = lambda key: key == b"the-key"  # noqa: E731
        return [await secret.verify(None, fetch, valid, now=t) for t in (1000.0, 1000.5, 1001.0, 1002.0)]

    assert asyncio.run(run()) == [False, False, True, True]


def test_once_a_key_is_held_failed_refetches_wait_a_minute() -> None:
    calls: list[float] = []
    answers = iter(["the-key"])

    async def fetch() -> str | None:
        calls.append(now[0])
        return next(answers, None)  # then the endpoint is down for good

    now = [1000.0]

    async def run() -> None:
        secret = WebhookSecret(lambda s: s.encode(), min_refresh_s=60)
        assert await secret.verify(None, fetch, lambda key: key == b"the-key", now=1000.0)
        for i in range(1, 200):  # a forgery a second: a held key never falls back to the short backoff
            now[0] = 1000.0 + i
            assert not await secret.verify(None, fetch, lambda key: False, now=now[0])
            assert secret.key == b"the-key"

    asyncio.run(run())
    assert calls == [1000.0, 1060.0, 1120.0, 1180.0]


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
