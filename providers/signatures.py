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
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from pydantic import SecretStr

from editq.providers.types import Answer, Outcome, ProviderRequest
from editq.worker.errors import ErrorKind, ProviderError, WebhookMalformed, WebhookRejected

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

log = structlog.get_logger("editq.webhooks")
T = TypeVar("T")


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


async def fetch_key(client: ProviderClient, req: ProviderRequest, parse: Callable[[Answer], T | None]) -> T | None:
    """Fetch a provider's webhook key material (a secret, a JWKS): the parsed value, or None, logged with the
    answer's status or the transport error's kind (never the body: it is the key)."""
    try:
        answer = await client.send(req)
    except ProviderError as exc:
        log.warning("webhook key not fetched", provider=client.name, what=req.what, error=exc.kind.value)
        return None
    try:
        value = parse(answer)
    except (ValueError, KeyError, TypeError):
        value = None
    if value is None:
        log.warning("webhook key not fetched", provider=client.name, what=req.what, status=answer.status)
    return value


class KeyFetchLimit:
    """When a provider's webhook key may be fetched again. Every fetch counts, a failed one too.

    * A key is held: at most once every `min_refresh_s` (a mismatch may mean a rotated key, but forged
      deliveries must not cause a fetch each).
    * No key is held (fresh start, or every fetch so far failed): every delivery is refused anyway, so a
      failed fetch is retried sooner, after `first_retry_s`, then twice as long each time up to
      `min_refresh_s`. One failed fetch (a 503 from the key endpoint) then deafens the receiver for a
      second, not a minute; a flood of forgeries at a receiver that holds no key causes at most
      log2(min_refresh_s / first_retry_s) + 1 fetches more (7 with 60 s and 1 s), then one a minute.
    """

    def __init__(self, min_refresh_s: float, first_retry_s: float = 1.0) -> None:
        self.min_refresh_s = min_refresh_s
        self.first_retry_s = min(first_retry_s, min_refresh_s)
        self.tried_at: float | None = None  # last fetch started, failed ones included
        self.failures = 0  # failed fetches since the last one that gave a key

    def wait_s(self, have_key: bool) -> float:
        if have_key:
            return self.min_refresh_s
        return min(self.min_refresh_s, self.first_retry_s * 2 ** max(self.failures - 1, 0))

    def may_fetch(self, now: float, have_key: bool) -> bool:
        return self.tried_at is None or now - self.tried_at >= self.wait_s(have_key)

    def started(self, now: float) -> None:
        self.tried_at = now

    def ended(self, got_key: bool) -> None:
        self.failures = 0 if got_key else self.failures + 1


class WebhookSecret:
    """A webhook signing key: the configured one, else fetched from the provider and kept.

    A signature that does not match fetches the secret again (it may have been rotated), within the limits of
    `KeyFetchLimit`: once every `min_refresh_s` while a key is held, sooner (capped backoff) while none is.
    `max_age_s` (None = never) refetches a kept secret that old before checking. A failed fetch always keeps
    the old key: it must not open the door.
    """

    def __init__(self, key_of: Callable[[str], bytes | None], *, min_refresh_s: float = 60.0,
                 max_age_s: float | None = None, first_retry_s: float = 1.0) -> None:
        self.key_of = key_of
        self.limit = KeyFetchLimit(min_refresh_s, first_retry_s)
        self.max_age_s = max_age_s
        self.key: bytes | None = None
        self.fetched_at = 0.0  # last successful fetch
        self.loading: asyncio.Future[None] | None = None  # the fetch in flight, shared by every delivery

    async def verify(self, configured: SecretStr | None, fetch: Callable[[], Awaitable[str | None]],
                     matches: Callable[[bytes], bool], now: float) -> bool:
        if configured is not None:
            key = self.key_of(configured.get_secret_value())
            return key is not None and matches(key)
        loading = self.loading
        if loading is not None and not loading.done() and loading.get_loop() is asyncio.get_running_loop():
            # a fetch is on its way (the burst of deliveries right after start-up): wait for its key rather
            # than refuse valid deliveries because the limit forbids a fetch of their own
            await asyncio.shield(loading)
        may_fetch = self.limit.may_fetch(now, self.key is not None)
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
        self.limit.started(now)

        async def run() -> None:
            secret = await fetch()
            key = self.key_of(secret) if secret is not None else None
            if key is not None:
                self.key, self.fetched_at = key, now
            self.limit.ended(key is not None)

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
