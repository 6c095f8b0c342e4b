"""Helpers several provider adapters share: JSON answers, Standard-Webhooks-style headers and signatures,
a fetched-and-cached webhook secret, synchronous (blocking) edit calls, fal's size presets.

Only logic that is the same for every user lives here; where providers differ in protocol (WaveSpeed's `v3,`
hex HMAC keyed with the raw secret vs Standard Webhooks' `v1,` base64 HMAC keyed with the base64-decoded
secret) the adapters keep their own functions and pass them in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
from pydantic import SecretStr

from schemas.job import EditJob
from schemas.params import parse_size
from worker.errors import ErrorKind, ProviderError, WebhookRejected
from worker.providers.base import InputUrls, Outcome

# ---- fal's input schema for gpt-image-2/edit (ModelRunner assumes the same) -------------------------------
FAL_PRESETS: dict[tuple[int, int], str] = {
    (1024, 1024): "square_hd",
    (512, 512): "square",
    (768, 1024): "portrait_4_3",
    (576, 1024): "portrait_16_9",
    (1024, 768): "landscape_4_3",
    (1024, 576): "landscape_16_9",
}
FAL_QUALITIES = ("auto", "low", "medium", "high")
FAL_MAX_NUM_IMAGES = 4


def fal_image_size(size: str) -> str | dict[str, int]:
    """Canonical size -> fal's `image_size`: `auto`, a preset name, or `{width, height}`."""
    dims = parse_size(size)
    if dims is None:
        return "auto"
    return FAL_PRESETS.get(dims) or {"width": dims[0], "height": dims[1]}


def fal_edit_input(job: EditJob, inputs: InputUrls) -> dict[str, Any]:
    """Canonical job -> the input of fal's `openai/gpt-image-2/edit` (ModelRunner assumes the same fields)."""
    body: dict[str, Any] = {
        "prompt": job.prompt,
        "image_urls": list(inputs.images),
        "image_size": fal_image_size(job.size),
        "quality": job.quality.value,
        "num_images": job.num_images,
        "output_format": job.output_format.value,
    }
    if inputs.mask:
        body["mask_url"] = inputs.mask
    return body


# ---- answers ------------------------------------------------------------------------------------------------
def json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None


def json_or_text(resp: httpx.Response) -> Any:
    """The parsed body, or its first 500 characters when it is not JSON."""
    try:
        return resp.json()
    except ValueError:
        return resp.text[:500]


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


def webhook_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise WebhookRejected("body is not JSON") from None


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
    `min_refresh_s`. `max_age_s` (None = never) refetches a kept secret that old before checking.
    `throttle_failures`: a failed fetch counts towards `min_refresh_s` too (else only a successful one does).
    A failed fetch always keeps the old key: it must not open the door.
    """

    def __init__(self, key_of: Callable[[str], bytes | None], *, min_refresh_s: float = 60.0,
                 max_age_s: float | None = None, throttle_failures: bool = True) -> None:
        self.key_of = key_of
        self.min_refresh_s = min_refresh_s
        self.max_age_s = max_age_s
        self.throttle_failures = throttle_failures
        self.key: bytes | None = None
        self.fetched_at = 0.0

    async def verify(self, configured: SecretStr | None, fetch: Callable[[], Awaitable[str | None]],
                     matches: Callable[[bytes], bool], now: float) -> bool:
        if configured is not None:
            key = self.key_of(configured.get_secret_value())
            return key is not None and matches(key)
        if self.key is None or (self.max_age_s is not None and now - self.fetched_at > self.max_age_s):
            await self.load(fetch, now)
        if self.key is not None and matches(self.key):
            return True
        if now - self.fetched_at > self.min_refresh_s:
            await self.load(fetch, now)
            return self.key is not None and matches(self.key)
        return False

    async def load(self, fetch: Callable[[], Awaitable[str | None]], now: float) -> None:
        """`fetch` answers the secret text, or None when the provider did not give one."""
        if self.throttle_failures:
            self.fetched_at = now
        secret = await fetch()
        key = self.key_of(secret) if secret is not None else None
        if key is not None:
            self.key, self.fetched_at = key, now


# ---- synchronous edit APIs (OpenAI Images, Oxen): the connection stays open while the model works -------------
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


async def post_sync(http: httpx.AsyncClient, provider: str, url: str, *, timeout_s: float, connect_timeout_s: float,
                    **kw: Any) -> httpx.Response:
    """POST one blocking edit call; a request that may have reached the provider but lost its answer is
    `maybe_billed`, one that never left (connect failures) is not."""
    timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
    try:
        return await http.post(url, timeout=timeout, **kw)
    except NOT_SENT as exc:
        raise ProviderError(ErrorKind.retryable, f"{provider} edit: not sent ({type(exc).__name__})") from None
    except httpx.TimeoutException as exc:
        raise ProviderError(
            ErrorKind.retryable,
            f"{provider} edit: no answer within {timeout_s:.0f}s ({type(exc).__name__}); "
            "the request may have been processed and billed",
            maybe_billed=True,
        ) from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            ErrorKind.retryable,
            f"{provider} edit: connection lost before the answer ({type(exc).__name__}); "
            "the request may have been processed and billed",
            maybe_billed=True,
        ) from None


def lost_sync_answer(provider: str, request_id: str) -> Outcome:
    """A synchronous answer recorded but never stored (the worker stopped): billed, to be redone."""
    return Outcome(done=True, error=ProviderError(
        ErrorKind.retryable,
        f"{provider}: the synchronous answer of request {request_id} was lost before it was stored "
        "(worker stopped); it was billed and will be redone",
        maybe_billed=True,
    ))
