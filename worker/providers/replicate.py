"""Replicate HTTP API for the official model `openai/gpt-image-2`.

Facts: shared/reference/provider-replicate-wavespeed-oxen.md §1-4 (Replicate's OpenAPI document,
its docs pages and the official `replicate` 1.0.7 client).

Protocol
* Create: `POST {base}/v1/models/openai/gpt-image-2/predictions` with `Authorization: Bearer <token>`
  and `{"input": {...}, "webhook": url, "webhook_events_filter": ["completed"]}` -> 201 (or 202), the
  prediction object. No `Prefer: wait`: editq never holds a worker on a running model.
* Poll: `GET urls.get` (`{base}/v1/predictions/{id}`); statuses `starting`, `processing` (running),
  `succeeded`, `failed`, `canceled`, `aborted` (terminal). Cancel: `POST urls.cancel`.
* Webhooks (Standard Webhooks, symmetric v1): headers `webhook-id` (stable across Replicate's resends,
  our dedupe key), `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` over
  `{id}.{timestamp}.{raw body}`, keyed with base64-decoded `whsec_<...>`. The secret comes from
  `EDITQ_REPLICATE_WEBHOOK_SECRET` or, if unset, `GET /v1/webhooks/default/secret` (cached; fetched
  again at most once a minute when a signature does not match, to follow a rotation).
* Outputs are `https://replicate.delivery/...` URLs that need the Authorization header
  (`output_headers`), and Replicate deletes them one hour after an API prediction ends.

Choices where the sources are silent or disagree (see the module README, docs/providers/replicate.md)
* 429 on create: never retried here. It means "not created", so it becomes a retryable ProviderError
  with `retry_after_s` from `Retry-After` (or, since Replicate does not document that header, from the
  "resets in ~30s" text of its body), and the pipeline's shared back-off applies. A timeout, 502 or 504
  on create is `maybe_billed` (a prediction may exist that we never learned of).
* Collection latency: the `completed` webhook moves the job to `ready` and kicks collection at once;
  the poll safety net for this provider is capped at `poll_safety_net_s` (default 300 s), so even with
  webhooks lost the outputs are fetched far inside Replicate's one-hour retention. A prediction whose
  outputs are already gone (`data_removed`) fails with a precise, terminal reason.
* Input schema: published copies disagree (snapshot A: `aspect_ratio` 1:1|3:2|2:3, `number_of_images`
  exactly 1, `background` auto|opaque; snapshot B adds 16:9, 9:16, auto, pixel sizes, 1-10 images,
  transparent). We use what both accept: sizes 1024x1024 (1:1), 1536x1024 (3:2), 1024x1536 (2:3);
  `number_of_images` 1 (raise `EDITQ_REPLICATE_MAX_NUM_IMAGES` once checked against the live schema);
  `background` auto|opaque. Size `auto` is sent as `aspect_ratio: "auto"` (snapshot B): omitting it
  would silently become 1:1, and a model that does not know `auto` refuses it at create (422, nothing
  runs, nothing is billed). No mask input exists in either copy: masked jobs are refused at enqueue.
* `openai_api_key` and `user_id` are never sent (Replicate's proxy key is used; no user data leaves).
* A `failed` prediction is terminal when its error reads like moderation/validation, retryable when it
  reads like a transient upstream fault, otherwise `unknown` (retried once). `aborted` (deadline hit
  before the model started; not billed) is retryable. `canceled` is terminal unless a `Cancel-After`
  deadline caused it (the prediction carries `deadline`), which is retryable.
* The token is only ever sent to the configured API host and to `output_auth_hosts`; a `urls.get` or
  output URL on any other host is not trusted with it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from schemas.job import EditJob
from schemas.manifest import Usage
from schemas.params import parse_size
from worker.errors import ErrorKind, ProviderError, WebhookRejected
from worker.policy import parse_retry_after
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
from worker.providers.common import WebhookSecret, v1_matches, v1_signatures, webhook_headers, webhook_json

REPLICATE_MODEL = "openai/gpt-image-2"
# canonical model names editq accepts for this provider -> Replicate model ref
MODELS: dict[str, str] = {
    "openai/gpt-image-2/edit": REPLICATE_MODEL,
    "openai/gpt-image-2": REPLICATE_MODEL,
}
ASPECT_RATIOS: dict[tuple[int, int], str] = {(1024, 1024): "1:1", (1536, 1024): "3:2", (1024, 1536): "2:3"}
QUALITIES = ("auto", "low", "medium", "high")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("auto", "opaque")
RUNNING = frozenset({"starting", "processing"})
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
SECRET_REFRESH_S = 60.0
_RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_CANCEL_AFTER = re.compile(r"^(?:\d+|(?:\d+h)?(?:\d+m)?(?:\d+s)?)$")
_TOKENS = {
    "input_text_tokens": re.compile(r"input text token count:\s*(\d+)", re.IGNORECASE),
    "input_image_tokens": re.compile(r"input image token count:\s*(\d+)", re.IGNORECASE),
    "output_tokens": re.compile(r"output token count:\s*(\d+)", re.IGNORECASE),
}
_TERMINAL_HINTS = ("moderation", "safety", "content policy", "flagged", "nsfw", "invalid", "not allowed",
                   "unsupported", "too large", "could not load", "failed to download")
_RETRYABLE_HINTS = ("timed out", "timeout", "rate limit", "temporarily", "unavailable", "try again",
                    "internal server error", "overloaded", "connection", "e6716", "director:")


class ReplicateSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_REPLICATE_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("EDITQ_REPLICATE_API_TOKEN", "EDITQ_REPLICATE_API_KEY", "REPLICATE_API_TOKEN"),
    )
    base_url: str = "https://api.replicate.com"  # no /v1: paths carry it, as in the official client
    webhook_secret: SecretStr | None = None  # whsec_...; unset = GET /v1/webhooks/default/secret
    webhook_tolerance_s: float = 300.0
    concurrency: int = 32
    rpm: int = 600  # Replicate's documented create limit per account
    max_num_images: int = Field(default=1, ge=1, le=10)
    cancel_after: str | None = Field(default=None, description="Cancel-After header, e.g. '45m'; unset = none.")
    poll_safety_net_s: float = Field(default=300.0, gt=0, description="Longest gap between polls of one prediction.")
    output_auth_hosts: list[str] = Field(
        default_factory=lambda: ["replicate.delivery"],
        description="Output hosts (and their subdomains) that get the Authorization header.",
    )
    price_text_in_per_m: float = 5.0
    price_image_in_per_m: float = 8.0
    price_image_out_per_m: float = 30.0

    @field_validator("cancel_after")
    @classmethod
    def _cancel_after(cls, v: str | None) -> str | None:
        if v is not None and (not v or not _CANCEL_AFTER.match(v)):
            raise ValueError("cancel_after must look like 30s, 5m, 1h30m or a number of seconds")
        return v


class ReplicateAdapter(ProviderAdapter):
    name: ClassVar[str] = "replicate"
    settings_cls: ClassVar[type[ProviderSettings]] = ReplicateSettings
    settings: ReplicateSettings

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        # refetched after a day, and on a mismatch (rotated) at most once a minute; a failed fetch does not count
        self._secret = WebhookSecret(_secret_bytes, min_refresh_s=SECRET_REFRESH_S, max_age_s=24 * 3600,
                                     throttle_failures=False)

    def auth_headers(self) -> dict[str, str]:
        key = self.secret_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    # ---- pure -------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        s = self.settings
        problems = []
        if job.model not in MODELS:
            problems.append(
                f"replicate: model={job.model} is not available; allowed values: {', '.join(MODELS)}"
            )
        if job.mask is not None or job.mask_input is not None:
            problems.append(
                "replicate: mask is not supported: openai/gpt-image-2 on Replicate has no mask input; "
                "remove the mask or route the job to a provider that accepts masks (e.g. fal)"
            )
        if job.num_images > s.max_num_images:
            allowed = "1" if s.max_num_images == 1 else f"1 to {s.max_num_images}"
            problems.append(f"replicate: num_images={job.num_images} is not allowed; allowed values: {allowed}")
        if job.size != "auto" and parse_size(job.size) not in ASPECT_RATIOS:
            sizes = ", ".join(f"{w}x{h} ({r})" for (w, h), r in ASPECT_RATIOS.items())
            problems.append(f"replicate: size={job.size} is not allowed; allowed values: auto, {sizes}")
        if job.quality.value not in QUALITIES:
            problems.append(f"replicate: quality={job.quality.value} is not allowed; "
                            f"allowed values: {', '.join(QUALITIES)}")
        if job.output_format.value not in OUTPUT_FORMATS:
            problems.append(f"replicate: output_format={job.output_format.value} is not allowed; "
                            f"allowed values: {', '.join(OUTPUT_FORMATS)}")
        if job.background.value not in BACKGROUNDS:
            problems.append(f"replicate: background={job.background.value} is not allowed; "
                            f"allowed values: {', '.join(BACKGROUNDS)}")
        return problems

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        dims = parse_size(job.size)
        aspect = "auto" if dims is None else ASPECT_RATIOS[dims]
        model = MODELS.get(job.model, REPLICATE_MODEL)
        body: dict[str, Any] = {
            "input": {
                "prompt": job.prompt,
                "input_images": list(inputs.images),
                "aspect_ratio": aspect,
                "quality": job.quality.value,
                "output_format": job.output_format.value,
                "background": job.background.value,
                "number_of_images": job.num_images,
            }
        }
        if webhook_url:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        headers = {"Cancel-After": self.settings.cancel_after} if self.settings.cancel_after else {}
        return ProviderRequest("POST", f"/v1/models/{model}/predictions", json=body, headers=headers)

    def poll_cap_s(self) -> float | None:
        return self.settings.poll_safety_net_s

    # ---- I/O ----------------------------------------------------------------------------------
    async def submit(self, http: httpx.AsyncClient, job: EditJob, req: ProviderRequest) -> Submitted:
        resp = await self.send(http, req)
        if resp.status_code not in (200, 201, 202):
            raise self.error(resp, "create")
        data = _json_object(resp) or {}
        pid = data.get("id")
        if not pid or not isinstance(pid, str):
            raise ProviderError(ErrorKind.unknown, f"replicate create: no prediction id in HTTP {resp.status_code}",
                                status_code=resp.status_code, maybe_billed=True)
        handle = {"get": self._api_url(data.get("urls", {}).get("get"), f"/v1/predictions/{pid}"),
                  "cancel": self._api_url(data.get("urls", {}).get("cancel"), f"/v1/predictions/{pid}/cancel")}
        outcome = self.outcome(data) if data.get("status") in TERMINAL else None
        return Submitted(request_id=pid, handle=handle, outcome=outcome)

    async def poll(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        url = self._api_url(handle.get("get"), f"/v1/predictions/{request_id}")
        try:
            resp = await http.get(url, headers=self.auth_headers(), timeout=self.settings.timeout_s)
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.retryable, f"replicate: connection error ({type(exc).__name__})") from None
        if resp.status_code == 404:
            return Outcome(done=True, error=self.error(resp, "get"))
        if resp.status_code != 200:
            raise self.error(resp, "get")
        data = _json_object(resp)
        if data is None:
            raise ProviderError(ErrorKind.retryable, "replicate get: answer is not a JSON object",
                                status_code=resp.status_code)
        return self.outcome(data)

    async def cancel(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> None:
        url = self._api_url(handle.get("cancel"), f"/v1/predictions/{request_id}/cancel")
        try:
            await http.post(url, headers=self.auth_headers(), timeout=self.settings.timeout_s)
        except httpx.HTTPError:
            return None

    async def webhook_outcome(
        self, http: httpx.AsyncClient, event: WebhookEvent, handle: dict[str, Any]
    ) -> Outcome:
        if event.payload.get("status") in TERMINAL:
            return self.outcome(event.payload)
        return Outcome.running(status=event.payload.get("status"))

    async def verify_webhook(
        self, http: httpx.AsyncClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> WebhookEvent:
        msg_id, signed, sigs = webhook_headers(headers, body, now=now, tolerance_s=self.settings.webhook_tolerance_s)
        candidates = v1_signatures(sigs)
        if not candidates:
            raise WebhookRejected("no v1 signature in webhook-signature")
        if not await self._secret.verify(self.settings.webhook_secret, lambda: self._fetch_secret(http),
                                         lambda key: v1_matches(key, signed, candidates), now):
            raise WebhookRejected("signature does not match the webhook secret")
        payload = webhook_json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise WebhookRejected("body is not a prediction")
        return WebhookEvent(delivery_id=msg_id, request_id=payload["id"], payload=payload)

    def output_headers(self, url: str) -> dict[str, str]:
        host = (urlsplit(url).hostname or "").lower()
        api = urlsplit(self.settings.base_url)
        if url.startswith(self.settings.base_url.rstrip("/") + "/") and host == (api.hostname or "").lower():
            return self.auth_headers()
        for allowed in self.settings.output_auth_hosts:
            allowed = allowed.lower().strip(".")
            if host == allowed or host.endswith("." + allowed):
                return self.auth_headers() if urlsplit(url).scheme == "https" else {}
        return {}

    # ---- translation of answers (pure) -----------------------------------------------------------------
    def outcome(self, p: Mapping[str, Any]) -> Outcome:
        """A prediction object -> Outcome."""
        status = p.get("status")
        pid = p.get("id")
        if status in RUNNING:
            return Outcome.running(status=status)
        if status == "succeeded":
            outputs = _outputs(p.get("output"))
            if not outputs:
                if p.get("data_removed"):
                    return Outcome(done=True, error=ProviderError(
                        ErrorKind.terminal,
                        f"replicate: prediction {pid} succeeded but its outputs were deleted (data_removed) "
                        "before editq collected them", provider_code="data_removed"))
                return Outcome(done=True, error=ProviderError(
                    ErrorKind.unknown, f"replicate: prediction {pid} succeeded without any output URL"))
            return Outcome(done=True, result=Result(outputs=outputs, usage=self.usage(p), raw=_raw(p)))
        if status == "failed":
            return Outcome(done=True, error=_model_error(str(p.get("error") or "no error message"), pid))
        if status == "aborted":
            return Outcome(done=True, error=ProviderError(
                ErrorKind.retryable, f"replicate: prediction {pid} aborted before it started (deadline reached; "
                "not billed)", provider_code="aborted"))
        if status == "canceled":
            kind = ErrorKind.retryable if p.get("deadline") else ErrorKind.terminal
            why = "its Cancel-After deadline passed" if p.get("deadline") else "it was canceled"
            return Outcome(done=True, error=ProviderError(
                kind, f"replicate: prediction {pid} canceled: {why}", provider_code="canceled"))
        return Outcome(done=True, error=ProviderError(
            ErrorKind.unknown, f"replicate: prediction {pid} has unknown status {str(status)[:40]!r}"))

    def usage(self, p: Mapping[str, Any]) -> Usage | None:
        """Token counts from `metrics` (if Replicate reports them) or the model's log lines."""
        metrics = p.get("metrics") if isinstance(p.get("metrics"), dict) else {}
        assert isinstance(metrics, dict)
        logs = p.get("logs") if isinstance(p.get("logs"), str) else ""
        found: dict[str, int] = {}
        for field, names in (("input_text_tokens", ("input_text_token_count", "input_text_tokens")),
                             ("input_image_tokens", ("input_image_token_count", "input_image_tokens")),
                             ("output_tokens", ("output_token_count", "output_tokens"))):
            for name in names:
                if isinstance(metrics.get(name), int):
                    found[field] = metrics[name]
                    break
            else:
                m = _TOKENS[field].search(str(logs))
                if m:
                    found[field] = int(m.group(1))
        if not found:
            return None
        s = self.settings
        text_in, image_in, out = (found.get("input_text_tokens", 0), found.get("input_image_tokens", 0),
                                  found.get("output_tokens", 0))
        cost = (text_in * s.price_text_in_per_m + image_in * s.price_image_in_per_m
                + out * s.price_image_out_per_m) / 1_000_000
        return Usage(
            input_tokens=text_in + image_in, input_text_tokens=text_in, input_image_tokens=image_in,
            output_tokens=out, output_image_tokens=out, total_tokens=text_in + image_in + out,
            cost_usd=round(cost, 6), cost_source="tokens",
        )

    def error(self, resp: httpx.Response, what: str) -> ProviderError:
        """Classify a non-2xx answer (RFC 7807 body: title, detail, status)."""
        body = _json_object(resp) or {}
        title = str(body.get("title") or "").strip()
        detail = body.get("detail")
        text = str(detail if detail is not None else resp.text[:300]).strip()
        reason = f"replicate {what}: HTTP {resp.status_code}" + (f" {title}" if title else "") + (
            f": {text[:1500]}" if text else "")
        code = resp.status_code
        retry_after = parse_retry_after(resp.headers)
        if code == 429 and retry_after is None:
            m = _RESETS_IN.search(text)
            retry_after = float(m.group(1)) if m else None
        kind = ErrorKind.retryable if code in (408, 409, 425, 429) or code >= 500 else (
            ErrorKind.terminal if 400 <= code < 500 else ErrorKind.unknown)
        provider_code = {401: "unauthenticated", 402: "insufficient_credit", 403: "forbidden", 404: "not_found",
                         422: "invalid_input", 429: "rate_limited"}.get(code)
        return ProviderError(
            kind, _redact(reason, self.settings.api_key), status_code=code, provider_code=provider_code,
            retry_after_s=retry_after, maybe_billed=what == "create" and code in (502, 504),
        )

    # ---- internals ---------------------------------------------------------------------------------
    def _api_url(self, given: Any, path: str) -> str:
        """`given` if it is on the configured API base (the token goes there), else base + path."""
        base = self.settings.base_url.rstrip("/")
        if isinstance(given, str) and given.startswith(base + "/v1/"):
            return given
        return base + path

    async def _fetch_secret(self, http: httpx.AsyncClient) -> str | None:
        url = self.settings.base_url.rstrip("/") + "/v1/webhooks/default/secret"
        try:
            resp = await http.get(url, headers=self.auth_headers(), timeout=10)
            resp.raise_for_status()
            return str(resp.json().get("key", ""))
        except (httpx.HTTPError, ValueError, AttributeError):
            return None


# ---- helpers ------------------------------------------------------------------------------------------
def _json_object(resp: httpx.Response) -> dict[str, Any] | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _secret_bytes(secret: str) -> bytes | None:
    """`whsec_<base64>` -> key bytes (the part after the prefix, base64-decoded)."""
    raw = secret.strip()
    if raw.startswith("whsec_"):
        raw = raw[len("whsec_"):]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def _outputs(output: Any) -> list[OutputRef]:
    items = output if isinstance(output, list) else [output] if output else []
    refs = []
    for item in items:
        if not isinstance(item, str):
            continue
        if item.startswith("data:"):
            header, _, data = item.partition(",")
            ctype = header[5:].split(";")[0] or None
            refs.append(OutputRef(b64=data, content_type=ctype))
        elif item.startswith(("https://", "http://")):
            refs.append(OutputRef(url=item))
    return refs


def _raw(p: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("id", "model", "version", "status", "created_at", "started_at", "completed_at", "metrics", "source")
    return {k: p[k] for k in keep if k in p}


def _model_error(message: str, pid: Any) -> ProviderError:
    low = message.lower()
    if any(h in low for h in _TERMINAL_HINTS):
        kind = ErrorKind.terminal
    elif any(h in low for h in _RETRYABLE_HINTS):
        kind = ErrorKind.retryable
    else:
        kind = ErrorKind.unknown
    return ProviderError(kind, f"replicate: prediction {pid} failed: {message}"[:2000], provider_code="failed")


def _redact(text: str, key: SecretStr | None) -> str:
    secret = key.get_secret_value() if key else ""
    return text.replace(secret, "[redacted]") if len(secret) >= 4 else text


__all__ = ["ReplicateAdapter", "ReplicateSettings"]
