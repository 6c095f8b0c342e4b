"""Replicate HTTP API for the official model `openai/gpt-image-2`.

Facts: shared/reference/provider-replicate-wavespeed-oxen.md §1-4 (Replicate's OpenAPI document,
its docs pages and the official `replicate` 1.0.7 client). Choices where they are silent: README.md
beside this file.

* Create: `POST {base}/v1/models/openai/gpt-image-2/predictions` with `{"input": {...}, "webhook": url,
  "webhook_events_filter": ["completed"]}` -> 201 (or 202), the prediction object. No `Prefer: wait`:
  editq never holds a worker on a running model.
* Poll: `GET urls.get` (`{base}/v1/predictions/{id}`); statuses `starting`, `processing` (running),
  `succeeded`, `failed`, `canceled`, `aborted` (terminal). Cancel: `POST urls.cancel`.
* Webhooks (Standard Webhooks, symmetric v1), keyed with the base64-decoded `whsec_<...>` from
  `EDITQ_REPLICATE_WEBHOOK_SECRET` or, if unset, `GET /v1/webhooks/default/secret` (cached; fetched
  again at most once a minute when a signature does not match, to follow a rotation).
* Outputs are `https://replicate.delivery/...` URLs that need the token (`output_auth`); the client
  sends it only to the API host and the configured `auth_hosts`.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from editq.providers import types as pt
from editq.providers.protocol import ProviderProtocol
from editq.providers.replicate import ReplicateSettings
from editq.providers.signatures import (
    WebhookSecret,
    fetch_key,
    v1_matches,
    v1_signatures,
    webhook_headers,
    webhook_json,
)
from editq.providers.spec import ProviderSettings
from editq.schemas.job import EditJob
from editq.schemas.manifest import Usage
from editq.schemas.params import parse_size
from editq.worker.errors import ErrorKind, ProviderError, WebhookMalformed, WebhookRejected

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "replicate"
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
SECRET_MAX_AGE_S = 24 * 3600.0
SECRET_PATH = "/v1/webhooks/default/secret"
_RESETS_IN = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_TOKENS = {
    "input_text_tokens": re.compile(r"input text token count:\s*(\d+)", re.IGNORECASE),
    "input_image_tokens": re.compile(r"input image token count:\s*(\d+)", re.IGNORECASE),
    "output_tokens": re.compile(r"output token count:\s*(\d+)", re.IGNORECASE),
}
# The model could not fetch an input. editq's inputs are its own presigned S3 URLs, checked to be images
# at enqueue: that is our storage being unreachable, not the user's error (the sandbox, like Replicate,
# says "Failed to load input_images[0]: ..."). Checked before the terminal hints.
_INPUT_FETCH_HINTS = ("failed to load input", "failed to download")
_TERMINAL_HINTS = ("moderation", "safety", "content policy", "flagged", "nsfw", "invalid", "not allowed",
                   "unsupported", "too large", "could not load")
_RETRYABLE_HINTS = ("timed out", "timeout", "rate limit", "temporarily", "unavailable", "try again",
                    "internal server error", "overloaded", "connection", "e6716", "director:")
_PROVIDER_CODES = {401: "unauthenticated", 402: "insufficient_credit", 403: "forbidden", 404: "not_found",
                   422: "invalid_input", 429: "rate_limited"}


# ---- pure translation ---------------------------------------------------------------------------------
def validate(job: EditJob, max_num_images: int = 1) -> list[str]:
    problems = []
    if job.model not in MODELS:
        problems.append(f"replicate: model={job.model} is not available; allowed values: {', '.join(MODELS)}")
    if job.mask is not None or job.mask_input is not None:
        problems.append(
            "replicate: mask is not supported: openai/gpt-image-2 on Replicate has no mask input; "
            "remove the mask or route the job to a provider that accepts masks (e.g. fal)"
        )
    if job.num_images > max_num_images:
        allowed = "1" if max_num_images == 1 else f"1 to {max_num_images}"
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


def prediction_body(job: EditJob, inputs: pt.InputUrls, webhook_url: str | None) -> dict[str, Any]:
    dims = parse_size(job.size)
    aspect = "auto" if dims is None else ASPECT_RATIOS[dims]
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
    return body


def api_url(base_url: str, given: Any, path: str) -> str:
    """`given` if it is on the configured API base (the token goes there), else base + path."""
    base = base_url.rstrip("/")
    if isinstance(given, str) and given.startswith(base + "/v1/"):
        return given
    return base + path


def wants_output_auth(url: str, base_url: str, hosts: list[str]) -> bool:
    """An output on the API base, or an https output on one of `hosts` or a subdomain of one."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    api = urlsplit(base_url)
    if url.startswith(base_url.rstrip("/") + "/") and host == (api.hostname or "").lower():
        return True
    if parts.scheme != "https":
        return False
    for allowed in hosts:
        allowed = allowed.lower().strip(".")
        if allowed and (host == allowed or host.endswith("." + allowed)):
            return True
    return False


# ---- parsing answers (pure) -----------------------------------------------------------------------------
def answer_error(answer: pt.Answer, what: str) -> ProviderError:
    """A non-2xx answer (RFC 7807 body: title, detail, status), classified by the one status table."""
    body = answer.obj
    title = str(body.get("title") or "").strip()
    detail = body.get("detail")
    text = str(detail if detail is not None else answer.text[:300]).strip()
    reason = f"replicate {what}: HTTP {answer.status}" + (f" {title}" if title else "") + (
        f": {text[:1500]}" if text else "")
    base = answer.error(NAME, what, provider_code=_PROVIDER_CODES.get(answer.status),
                        maybe_billed=what == "create" and answer.status in (502, 504))
    retry_after = base.retry_after_s
    if answer.status == 429 and retry_after is None:
        m = _RESETS_IN.search(text)
        retry_after = float(m.group(1)) if m else None
    return ProviderError(base.kind, reason, status_code=base.status_code, provider_code=base.provider_code,
                         retry_after_s=retry_after, maybe_billed=base.maybe_billed)


def parse_create(answer: pt.Answer, base_url: str, settings: ReplicateSettings | None = None) -> pt.Submitted:
    if answer.status not in (200, 201, 202):
        raise answer_error(answer, "create")
    data = answer.obj
    pid = data.get("id")
    if not pid or not isinstance(pid, str):
        # accepted but unreadable: a prediction may exist that we cannot follow
        raise pt.malformed(NAME, "create", f"no prediction id in HTTP {answer.status}: {answer.text[:200]}",
                        maybe_billed=True)
    urls_any = data.get("urls")
    urls: dict[str, Any] = urls_any if isinstance(urls_any, dict) else {}
    handle = {"get": api_url(base_url, urls.get("get"), f"/v1/predictions/{pid}"),
              "cancel": api_url(base_url, urls.get("cancel"), f"/v1/predictions/{pid}/cancel")}
    out = outcome(data, settings) if data.get("status") in TERMINAL else None
    return pt.Submitted(request_id=pid, handle=handle, outcome=out)


def parse_get(answer: pt.Answer, settings: ReplicateSettings | None = None) -> pt.Outcome:
    if answer.status == 404:
        return pt.Outcome.failed(answer_error(answer, "get"))
    if answer.status != 200:
        raise answer_error(answer, "get")
    data = answer.json
    if not isinstance(data, dict):
        raise pt.malformed(NAME, "get", f"not a JSON object: {answer.text[:200]}")
    return outcome(data, settings)


def outcome(p: Mapping[str, Any], settings: ReplicateSettings | None = None) -> pt.Outcome:
    """A prediction object -> Outcome."""
    status = p.get("status")
    pid = p.get("id")
    if status in RUNNING:
        return pt.Outcome.running(status=status)
    if status == "succeeded":
        outputs = outputs_of(p.get("output"))
        if not outputs:
            if p.get("data_removed"):
                return pt.Outcome.failed(ProviderError(
                    ErrorKind.terminal,
                    f"replicate: prediction {pid} succeeded but its outputs were deleted (data_removed) "
                    "before editq collected them", provider_code="data_removed"))
            return pt.Outcome.failed(ProviderError(
                ErrorKind.unknown, f"replicate: prediction {pid} succeeded without any output URL"))
        return pt.Outcome.succeeded(pt.Result(outputs=outputs, usage=usage(p, settings), raw=raw_of(p)))
    if status == "failed":
        return pt.Outcome.failed(model_error(str(p.get("error") or "no error message"), pid))
    if status == "aborted":
        return pt.Outcome.failed(ProviderError(
            ErrorKind.retryable, f"replicate: prediction {pid} aborted before it started (deadline reached; "
            "not billed)", provider_code="aborted"))
    if status == "canceled":
        kind = ErrorKind.retryable if p.get("deadline") else ErrorKind.terminal
        why = "its Cancel-After deadline passed" if p.get("deadline") else "it was canceled"
        return pt.Outcome.failed(ProviderError(kind, f"replicate: prediction {pid} canceled: {why}",
                                            provider_code="canceled"))
    return pt.Outcome.failed(ProviderError(
        ErrorKind.unknown, f"replicate: prediction {pid} has unknown status {str(status)[:40]!r}"))


def usage(p: Mapping[str, Any], settings: ReplicateSettings | None = None) -> Usage | None:
    """Token counts from `metrics` (if Replicate reports them) or the model's log lines."""
    s = settings or ReplicateSettings()
    metrics_any = p.get("metrics")
    metrics: dict[str, Any] = metrics_any if isinstance(metrics_any, dict) else {}
    logs = p.get("logs") if isinstance(p.get("logs"), str) else ""
    found: dict[str, int] = {}
    for field, names in (("input_text_tokens", ("input_text_token_count", "input_text_tokens")),
                         ("input_image_tokens", ("input_image_token_count", "input_image_tokens")),
                         ("output_tokens", ("output_token_count", "output_tokens"))):
        for name in names:
            value = metrics.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                found[field] = value
                break
        else:
            m = _TOKENS[field].search(str(logs))
            if m:
                found[field] = int(m.group(1))
    if not found:
        return None
    text_in, image_in, out = (found.get("input_text_tokens", 0), found.get("input_image_tokens", 0),
                              found.get("output_tokens", 0))
    cost = (text_in * s.price_text_in_per_m + image_in * s.price_image_in_per_m
            + out * s.price_image_out_per_m) / 1_000_000
    return Usage(
        input_tokens=text_in + image_in, input_text_tokens=text_in, input_image_tokens=image_in,
        output_tokens=out, output_image_tokens=out, total_tokens=text_in + image_in + out,
        cost_usd=round(cost, 6), cost_source="tokens",
    )


def outputs_of(output: Any) -> list[pt.OutputRef]:
    items = output if isinstance(output, list) else [output] if output else []
    refs = []
    for item in items:
        if not isinstance(item, str):
            continue
        if item.startswith("data:"):
            header, _, data = item.partition(",")
            ctype = header[5:].split(";")[0] or None
            refs.append(pt.OutputRef(b64=data, content_type=ctype))
        elif item.startswith(("https://", "http://")):
            refs.append(pt.OutputRef(url=item))
    return refs


def raw_of(p: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("id", "model", "version", "status", "created_at", "started_at", "completed_at", "metrics", "source")
    return {k: p[k] for k in keep if k in p}


def model_error(message: str, pid: Any) -> ProviderError:
    low = message.lower()
    if any(h in low for h in _INPUT_FETCH_HINTS) and "too large" not in low:
        kind = ErrorKind.retryable
    elif any(h in low for h in _TERMINAL_HINTS):
        kind = ErrorKind.terminal
    elif any(h in low for h in _RETRYABLE_HINTS):
        kind = ErrorKind.retryable
    else:
        kind = ErrorKind.unknown
    return ProviderError(kind, f"replicate: prediction {pid} failed: {message}"[:2000], provider_code="failed")


LIST_PATH = "/v1/predictions"


def list_request(start: float, end: float) -> pt.ProviderRequest:
    """The list of predictions created in [start, end) (`created_after` inclusive, `created_before` exclusive),
    newest first, 100 a page."""
    return pt.ProviderRequest("GET", LIST_PATH, params={"created_after": pt.iso_utc(start),
                                                        "created_before": pt.iso_utc(end)}, what="list")


def parse_list(answer: pt.Answer, base_url: str) -> pt.ListedPage:
    """`{next, previous, results}`: a prediction is finished in a terminal status; `next` is followed only
    when it is on the configured API base (the token goes there)."""
    if answer.status != 200:
        raise answer_error(answer, "list")
    results = answer.obj.get("results")
    if not isinstance(results, list):
        raise pt.malformed(NAME, "list", f"no results list in {answer.text[:200]}")
    listed = [pt.Listed(p["id"], done=p.get("status") in TERMINAL, at=pt.parse_instant(p.get("created_at")))
              for p in results if isinstance(p, dict) and isinstance(p.get("id"), str) and p["id"]]
    nxt = answer.obj.get("next")
    on_base = isinstance(nxt, str) and nxt.startswith(base_url.rstrip("/") + LIST_PATH + "?")
    return pt.ListedPage(listed, pt.ProviderRequest("GET", str(nxt), what="list") if on_base else None)


def secret_bytes(secret: str) -> bytes | None:
    """`whsec_<base64>` -> key bytes (the part after the prefix, base64-decoded)."""
    raw = secret.strip()
    if raw.startswith("whsec_"):
        raw = raw[len("whsec_"):]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def parse_secret(answer: pt.Answer) -> str | None:
    """`GET /v1/webhooks/default/secret` -> the `whsec_...` text, or None when the answer has none."""
    if not answer.ok:
        return None
    key = answer.obj.get("key")
    return key if isinstance(key, str) and key else None


def webhook_event(msg_id: str, body: bytes) -> pt.WebhookEvent:
    payload = webhook_json(body)
    if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
        raise WebhookMalformed("body is not a prediction")
    return pt.WebhookEvent(delivery_id=msg_id, request_id=payload["id"], payload=payload)


# ---- the protocol ----------------------------------------------------------------------------------------
class ReplicateProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = ReplicateSettings
    settings: ReplicateSettings

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        # refetched after a day, and on a mismatch (rotated) at most once a minute, failed fetches included
        self._secret = WebhookSecret(secret_bytes, min_refresh_s=SECRET_REFRESH_S, max_age_s=SECRET_MAX_AGE_S)

    # ---- pure ---------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        return validate(job, self.settings.max_num_images)

    def build_request(self, job: EditJob, inputs: pt.InputUrls, webhook_url: str | None) -> pt.ProviderRequest:
        model = MODELS.get(job.model, REPLICATE_MODEL)
        headers = {"Cancel-After": self.settings.cancel_after} if self.settings.cancel_after else {}
        body = prediction_body(job, inputs, webhook_url)
        return pt.ProviderRequest("POST", f"/v1/models/{model}/predictions", json=body, headers=headers, what="create")

    def poll_cap_s(self) -> float | None:
        return self.settings.poll_safety_net_s

    def output_auth(self, url: str) -> bool:
        return wants_output_auth(url, self.settings.base_url, self.settings.auth_hosts)

    def outcome(self, p: Mapping[str, Any]) -> pt.Outcome:
        return outcome(p, self.settings)

    def history_request(self, start: float, end: float) -> pt.ProviderRequest | None:
        return list_request(start, end) if self.settings.sweep else None

    def parse_history(self, answer: pt.Answer, request: pt.ProviderRequest) -> pt.ListedPage:
        return parse_list(answer, self.settings.base_url)

    # ---- calls ---------------------------------------------------------------------------------
    async def submit(self, client: ProviderClient, job: EditJob, req: pt.ProviderRequest) -> pt.Submitted:
        return parse_create(await client.send(req), self.settings.base_url, self.settings)

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> pt.Outcome:
        url = api_url(self.settings.base_url, handle.get("get"), f"/v1/predictions/{request_id}")
        return parse_get(await client.send(pt.ProviderRequest("GET", url, what="get")), self.settings)

    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        url = api_url(self.settings.base_url, handle.get("cancel"), f"/v1/predictions/{request_id}/cancel")
        try:
            await client.send(pt.ProviderRequest("POST", url, what="cancel"))
        except ProviderError:
            return None

    async def webhook_outcome(self, client: ProviderClient, event: pt.WebhookEvent,
                              handle: dict[str, Any]) -> pt.Outcome:
        if event.payload.get("status") in TERMINAL:
            return outcome(event.payload, self.settings)
        return pt.Outcome.running(status=event.payload.get("status"))

    async def verify_webhook(
        self, client: ProviderClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> pt.WebhookEvent:
        msg_id, signed, sigs = webhook_headers(headers, body, now=now, tolerance_s=self.settings.webhook_tolerance_s)
        candidates = v1_signatures(sigs)
        if not candidates:
            raise WebhookRejected("no v1 signature in webhook-signature")
        if not await self._secret.verify(self.settings.webhook_secret, lambda: self._fetch_secret(client),
                                         lambda key: v1_matches(key, signed, candidates), now):
            raise WebhookRejected("signature does not match the webhook secret")
        return webhook_event(msg_id, body)

    async def prepare_webhooks(self, client: ProviderClient) -> None:
        if self.settings.webhook_secret is None and self.settings.api_key is not None and self._secret.key is None:
            await self._secret.load(lambda: self._fetch_secret(client), time.time())

    async def _fetch_secret(self, client: ProviderClient) -> str | None:
        return await fetch_key(client, pt.ProviderRequest("GET", SECRET_PATH, timeout_s=10, what="webhook secret"),
                               parse_secret)


__all__ = ["ReplicateProtocol", "ReplicateSettings"]
