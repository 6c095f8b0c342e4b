"""Webhook signature checks several protocols share (Standard Webhooks' headers and v1 HMAC, a fetched
and cached signing secret), and the outcome of a synchronous answer lost in a crash.

Only what is the same for every user of it lives here; where providers differ (WaveSpeed's `v3,` hex
HMAC keyed with the raw secret vs Standard Webhooks' `v1,` base64 HMAC keyed with the decoded secret)
the protocols keep their own functions and pass them in.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import SecretStr

from editq.providers.types import Outcome
from editq.worker.errors import ErrorKind, ProviderError, WebhookMalformed, WebhookRejected


# ---- webhooks -------------------------------------------------------------------------------------------------
def webhook_headers(
    headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float
) -> tuple[str, bytes, str]:
    """`webhook-id`, `webhook-timestamp`, `webhook-signature` (Standard Webhooks' names, WaveSpeed's too) ->
    (id, the signed message `{id}.{timestamp}.{body}`, the signature header); raises WebhookRejected."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts, sig_header = h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"]
    except KeyError as exc:
        raise WebhookRejected(f"missing header {exc.args[0]}") from None
    try:
        ts_i = int(ts)
    except ValueError:
        raise WebhookRejected("malformed webhook-timestamp") from None
    if abs(now - ts_i) > tolerance_s:
        raise WebhookRejected("timestamp outside tolerance")
    return msg_id, f"{msg_id}.{ts}.".encode() + body, sig_header


def webhook_json(body: bytes) -> dict[str, Any]:
    """The body of a verified delivery as a JSON object; raises WebhookMalformed (400) otherwise."""
    try:
        data = json.loads(body)
    except ValueError:
        raise WebhookMalformed("body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookMalformed("body is not a JSON object")
    return data


def standard_webhook_key(secret: str) -> bytes | None:
    """Standard Webhooks: the text after `whsec_` is base64; the key is the decoded bytes."""
    try:
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        return None


def v1_signatures(header: str) -> list[bytes]:
    """Standard Webhooks: the decoded `v1,<base64>` entries of a space-separated `webhook-signature`."""
    out = []
    for part in header.split():
        version, _, sig = part.partition(",")
        if version == "v1" and sig:
            try:
                out.append(base64.b64decode(sig, validate=True))
            except (binascii.Error, ValueError):
                continue
    return out


def v1_matches(key: bytes, message: bytes, given: list[bytes]) -> bool:
    """Standard Webhooks: HMAC-SHA256 digest of the message equals any of the given signatures."""
    expected = hmac.new(key, message, hashlib.sha256).digest()
    return any(hmac.compare_digest(expected, sig) for sig in given)


class WebhookSecret:
    """A webhook signing key: the configured one, else fetched from the provider and kept.

    A signature that does not match fetches the secret again (it may have been rotated), at most once every
    `min_refresh_s`; every fetch counts towards that limit, a failed one too, so forged deliveries (or a
    provider that is down) never cause more than one fetch a minute. `max_age_s` (None = never) refetches a
    kept secret that old before checking. A failed fetch always keeps the old key: it must not open the door.
    """

    def __init__(self, key_of: Callable[[str], bytes | None], *, min_refresh_s: float = 60.0,
                 max_age_s: float | None = None) -> None:
        self.key_of = key_of
        self.min_refresh_s = min_refresh_s
        self.max_age_s = max_age_s
        self.key: bytes | None = None
        self.fetched_at = 0.0  # last successful fetch
        self.tried_at: float | None = None  # last fetch started, failed ones included
        self.loading: asyncio.Future[None] | None = None  # the fetch in flight, shared by every delivery

    async def verify(self, configured: SecretStr | None, fetch: Callable[[], Awaitable[str | None]],
                     matches: Callable[[bytes], bool], now: float) -> bool:
        if configured is not None:
            key = self.key_of(configured.get_secret_value())
            return key is not None and matches(key)
        loading = self.loading
        if loading is not None and not loading.done() and loading.get_loop() is asyncio.get_running_loop():
            # a fetch is on its way (the burst of deliveries right after start-up): wait for its key rather
            # than refuse valid deliveries because the once-a-minute limit forbids a fetch of their own
            await asyncio.shield(loading)
        may_fetch = self.tried_at is None or now - self.tried_at > self.min_refresh_s
        stale = self.key is None or (self.max_age_s is not None and now - self.fetched_at > self.max_age_s)
        if stale and may_fetch:
            await self.load(fetch, now)
            may_fetch = False
        if self.key is not None and matches(self.key):
            return True
        if may_fetch:
            await self.load(fetch, now)
            return self.key is not None and matches(self.key)
        return False

    async def load(self, fetch: Callable[[], Awaitable[str | None]], now: float) -> None:
        """`fetch` answers the secret text, or None when the provider did not give one."""
        self.tried_at = now

        async def run() -> None:
            secret = await fetch()
            key = self.key_of(secret) if secret is not None else None
            if key is not None:
                self.key, self.fetched_at = key, now

        self.loading = asyncio.ensure_future(run())
        await asyncio.shield(self.loading)



def lost_sync_answer(provider: str, request_id: str) -> Outcome:
    """A synchronous answer recorded but never stored (the worker stopped): billed, to be redone."""
    return Outcome(done=True, error=ProviderError(
        ErrorKind.retryable,
        f"{provider}: the synchronous answer of request {request_id} was lost before it was stored "
        "(worker stopped); it was billed and will be redone",
        maybe_billed=True,
    ))
