"""fal.ai queue API for `openai/gpt-image-2/edit` (facts: shared/reference/provider-fal-and-modelrunner.md).

Submit with `?fal_webhook=`, poll `status_url` (202 while queued/running, 200 when COMPLETED,
`error` on a failed model), fetch `response_url`, cancel with PUT. Webhooks are Ed25519-signed
over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)` and checked against fal's JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from schemas.job import EditJob
from schemas.params import Background, parse_size, size_problems
from worker.errors import ErrorKind, ProviderError, WebhookRejected
from worker.providers.base import (
    InputUrls,
    Outcome,
    OutputRef,
    ProviderAdapter,
    ProviderRequest,
    ProviderSettings,
    Result,
    Submitted,
    WebhookEvent,
)
from worker.providers.common import FAL_MAX_NUM_IMAGES as MAX_NUM_IMAGES
from worker.providers.common import FAL_PRESETS as PRESETS
from worker.providers.common import FAL_QUALITIES as QUALITIES
from worker.providers.common import fal_edit_input, webhook_json

JWKS_TTL_S = 24 * 3600
JWKS_MIN_REFRESH_S = 60


class FalSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_FAL_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_FAL_KEY", "EDITQ_FAL_API_KEY", "FAL_KEY")
    )
    base_url: str = "https://queue.fal.run"
    jwks_url: str = "https://rest.fal.ai/.well-known/jwks.json"
    user_id: str | None = None  # when set, deliveries for another fal user are refused
    concurrency: int = 40
    request_timeout_s: float | None = None  # X-Fal-Request-Timeout: deadline for the job to start


class FalAdapter(ProviderAdapter):
    name: ClassVar[str] = "fal"
    settings_cls: ClassVar[type[ProviderSettings]] = FalSettings
    settings: FalSettings
    auth_scheme: ClassVar[str] = "Key"

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self._jwks: list[VerifyKey] = []
        self._jwks_at = 0.0
        self._jwks_loading: asyncio.Task[None] | None = None

    # ---- pure -------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        problems = []
        if job.num_images > MAX_NUM_IMAGES:
            problems.append(f"fal: num_images={job.num_images} is not allowed; allowed values: 1 to {MAX_NUM_IMAGES}")
        dims = parse_size(job.size)
        if dims is not None and dims not in PRESETS:
            bad = size_problems(*dims)
            if bad:
                presets = ", ".join(f"{w}x{h}" for w, h in PRESETS)
                problems.append(
                    f"fal: size={job.size} is not allowed ({'; '.join(bad)}); allowed: auto, {presets}, "
                    "or a custom WxH within those rules"
                )
        if job.background is Background.transparent:
            problems.append(
                "fal: background=transparent is not supported by openai/gpt-image-2/edit on fal (it has no "
                "background parameter; outputs are opaque); allowed values: auto, opaque"
            )
        if job.quality.value not in QUALITIES:
            problems.append(f"fal: quality={job.quality.value} is not allowed; allowed values: {', '.join(QUALITIES)}")
        return problems

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        body = fal_edit_input(job, inputs)
        headers = {"X-Fal-Queue-Priority": "normal" if job.priority.value == "interactive" else "low"}
        if self.settings.request_timeout_s:
            headers["X-Fal-Request-Timeout"] = str(self.settings.request_timeout_s)
        params = {"fal_webhook": webhook_url} if webhook_url else {}
        return ProviderRequest("POST", "/" + job.model.strip("/"), json=body, params=params, headers=headers)

    # ---- I/O ----------------------------------------------------------------------------------
    async def submit(self, http: httpx.AsyncClient, job: EditJob, req: ProviderRequest) -> Submitted:
        resp = await self.send(http, req)
        if resp.status_code >= 300:
            raise self._error(resp, "submit")
        data = resp.json()
        rid = data.get("request_id")
        if not rid:
            raise ProviderError(ErrorKind.unknown, f"fal submit: no request_id in {str(data)[:200]}")
        owner_app = "/".join(job.model.strip("/").split("/")[:2])
        base = f"{self.settings.base_url.rstrip('/')}/{owner_app}/requests/{rid}"
        handle = {
            "status_url": data.get("status_url") or f"{base}/status",
            "response_url": data.get("response_url") or base,
            "cancel_url": data.get("cancel_url") or f"{base}/cancel",
        }
        return Submitted(request_id=rid, handle=handle)

    async def poll(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        resp = await self._get(http, handle["status_url"], params={"logs": "0"})
        if resp.status_code >= 300 and resp.status_code != 202:
            err = self._error(resp, "status")
            if err.kind is ErrorKind.terminal and resp.status_code == 404:
                return Outcome(done=True, error=err)
            raise err
        data = resp.json()
        status = data.get("status")
        if status != "COMPLETED":
            return Outcome.running(status=status, queue_position=data.get("queue_position"))
        if data.get("error"):
            return Outcome(done=True, error=self._model_error(str(data["error"]), data.get("error_type")))
        return await self._fetch_result(http, handle)

    async def cancel(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> None:
        try:
            await http.put(handle["cancel_url"], headers=self.auth_headers(), timeout=self.settings.timeout_s)
        except httpx.HTTPError:
            return None

    async def webhook_outcome(
        self, http: httpx.AsyncClient, event: WebhookEvent, handle: dict[str, Any]
    ) -> Outcome:
        p = event.payload
        if p.get("status") == "OK" and isinstance(p.get("payload"), dict):
            return Outcome(done=True, result=_result(p["payload"]))
        if p.get("status") == "ERROR":
            detail = p.get("payload") if p.get("payload") is not None else p.get("error")
            return Outcome(done=True, error=self._model_error(f"{p.get('error')}: {str(detail)[:500]}", None))
        # payload missing (e.g. too large to serialise): fetch the result the normal way
        return await self.poll(http, event.request_id, handle)

    async def verify_webhook(
        self, http: httpx.AsyncClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> WebhookEvent:
        h = {k.lower(): v for k, v in headers.items()}
        try:
            rid = h["x-fal-webhook-request-id"]
            uid = h["x-fal-webhook-user-id"]
            ts = h["x-fal-webhook-timestamp"]
            sig_hex = h["x-fal-webhook-signature"]
        except KeyError as exc:
            raise WebhookRejected(f"missing header {exc.args[0]}") from None
        try:
            ts_i = int(ts)
            sig = bytes.fromhex(sig_hex)
        except ValueError:
            raise WebhookRejected("malformed timestamp or signature") from None
        if abs(now - ts_i) > self.tolerance_s:
            raise WebhookRejected("timestamp outside tolerance")
        if self.settings.user_id and uid != self.settings.user_id:
            raise WebhookRejected("webhook for another fal user")
        message = "\n".join([rid, uid, ts, hashlib.sha256(body).hexdigest()]).encode()
        if not await self._verify(http, message, sig, now):
            raise WebhookRejected("signature does not match any fal key")
        payload = webhook_json(body)
        if payload.get("request_id") not in (None, rid):
            raise WebhookRejected("body request_id differs from the signed header")
        return WebhookEvent(delivery_id=f"{rid}:{ts}:{sig_hex[:16]}", request_id=rid, payload=payload)

    tolerance_s: float = 300.0

    # ---- internals ----------------------------------------------------------------------------------
    async def _verify(self, http: httpx.AsyncClient, message: bytes, sig: bytes, now: float) -> bool:
        if now - self._jwks_at > JWKS_TTL_S:
            await self._refresh_jwks(http, now)
        if _any_key(self._jwks, message, sig):
            return True
        if now - self._jwks_at > JWKS_MIN_REFRESH_S:  # keys may have rotated
            await self._refresh_jwks(http, now)
            return _any_key(self._jwks, message, sig)
        return False

    async def prepare_webhooks(self, http: httpx.AsyncClient) -> None:
        if self.settings.api_key is not None and not self._jwks:
            await self._refresh_jwks(http, time.time())

    async def _refresh_jwks(self, http: httpx.AsyncClient, now: float) -> None:
        """One JWKS fetch at a time: the burst of deliveries that arrives when a wave of jobs completes
        right after start-up waits for the same fetch instead of sending one each."""
        task = self._jwks_loading
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._jwks_loading = asyncio.ensure_future(self._load_jwks(http, now))
        await task

    async def _load_jwks(self, http: httpx.AsyncClient, now: float) -> None:
        try:
            resp = await http.get(self.settings.jwks_url, timeout=10)
            resp.raise_for_status()
            keys = [
                VerifyKey(base64.urlsafe_b64decode(k["x"] + "=" * (-len(k["x"]) % 4)))
                for k in resp.json().get("keys", [])
                if k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and "x" in k
            ]
        except (httpx.HTTPError, ValueError, KeyError):
            return  # keep the old keys; a failed refresh must not open the door
        self._jwks, self._jwks_at = keys, now

    async def _get(self, http: httpx.AsyncClient, url: str, params: dict[str, str] | None = None) -> httpx.Response:
        try:
            return await http.get(url, params=params, headers=self.auth_headers(), timeout=self.settings.timeout_s)
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.retryable, f"fal: connection error ({type(exc).__name__})") from None

    async def _fetch_result(self, http: httpx.AsyncClient, handle: dict[str, Any]) -> Outcome:
        resp = await self._get(http, handle["response_url"])
        if resp.status_code == 200:
            return Outcome(done=True, result=_result(resp.json()))
        err = self._error(resp, "result")
        if err.kind is ErrorKind.retryable:
            raise err
        return Outcome(done=True, error=err)

    def _error(self, resp: httpx.Response, what: str) -> ProviderError:
        err = self.http_error(resp, what=what)
        etype = resp.headers.get("x-fal-error-type")
        if etype:
            err.provider_code = etype
        return err

    def _model_error(self, message: str, error_type: str | None) -> ProviderError:
        retryable = error_type in {
            "request_timeout", "startup_timeout", "runner_scheduling_failure",
            "runner_connection_timeout", "runner_disconnected", "runner_connection_refused",
        }
        kind = ErrorKind.retryable if retryable else ErrorKind.terminal
        return ProviderError(kind, f"fal: {message}"[:2000], provider_code=error_type)


def _result(payload: dict[str, Any]) -> Result:
    images = payload.get("images") or []
    outputs = [OutputRef(url=i.get("url"), content_type=i.get("content_type")) for i in images if i.get("url")]
    return Result(outputs=outputs, raw={k: v for k, v in payload.items() if k != "images"})


def _any_key(keys: list[VerifyKey], message: bytes, sig: bytes) -> bool:
    for key in keys:
        try:
            key.verify(message, sig)
            return True
        except (BadSignatureError, ValueError):
            continue
    return False
