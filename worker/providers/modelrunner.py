"""ModelRunner queue API (facts: shared/reference/provider-fal-and-modelrunner.md §6, modelrunner/docs).

Protocol, as documented:
* submit  `POST {base}/{owner}/{model...}` (`Authorization: Key <key>`), the model input at the top level of the
  JSON body plus the reserved keys `webhook`, `webhook_events_filter` and `metadata`; HTTP **201** with
  `{status: "IN_QUEUE", request_id (21 chars), response_url, status_url, cancel_url, queue_position, ...}`.
  Header `x-modelrunner-queue-priority` (not `X-Fal-*`).
* status  `GET status_url` -> 200 with IN_QUEUE / IN_PROGRESS / COMPLETED; a terminal **FAILED answers HTTP 400**
  with the same envelope plus `error` (not billed); CANCELLED is terminal too.
* result  `GET response_url` -> `{id, modelEndpoint, status, billingStatus, input, output, error, ...}`; the model
  output is nested under `output`. **`billingStatus` decides**: `charged`/`partial` = success, `failed` = a failed
  generation (even with status COMPLETED; the result call may answer 422), `pending` = still being finalised.
  422 with `details.code = "INVALID_OUTPUT"`: the provider's output failed validation (not billed).
* webhook the result object plus `event` and `billingStatus`, signed with Standard Webhooks: headers `webhook-id`
  (stable across retries: the dedupe key), `webhook-timestamp`, `webhook-signature` (space-separated `v1,<base64>`
  list, any may match), HMAC-SHA256 over `{id}.{timestamp}.{raw body}` keyed with the base64-decoded text after
  `whsec_`; tolerance 300 s. The secret: `EDITQ_MODELRUNNER_WEBHOOK_SECRET`, else `GET {rest}/webhooks/default/secret`
  (`{"key": "whsec_..."}`), cached.
* errors  `{error, message?, statusCode?, request_id?, details?}`; 400 validation, 401 auth, 402 insufficient
  balance, 403 forbidden, 404 unknown model/request, 422 see above, 429 passed through from providers, 5xx.

Choices where the sources are silent or disagree:
* The model: `openai/gpt-image-2/edit` is NOT confirmed to exist on ModelRunner. The path is configurable
  (`EDITQ_MODELRUNNER_MODEL_PATH`, used for jobs whose model is the canonical one) and the input field names are
  fal's (`image_urls`, `mask_url`, `image_size`, `num_images`, `quality`, `output_format`) by assumption; rename
  them with `EDITQ_MODELRUNNER_FIELD_NAMES='{"image_urls": "images"}'`. A 404 on submit says so in the error.
  validate() applies fal's rules for this model (num_images 1-4, presets or custom WxH, no transparent background).
* Output shape: `output.images[].url` as in the docs' example; a bare list of URLs (or of `{url}`) is accepted too.
* Cancel: documented as a no-op on model endpoints (`PUT` and `GET` alias); editq sends `PUT cancel_url` as the
  official clients do and does not assume it worked (the request may still be charged).
* A FAILED status is classified `unknown` (not billed; retried once by the pipeline); a completed request with
  `billingStatus: failed` is terminal unless its error text names a transient upstream failure (5xx, 429,
  timeout); INVALID_OUTPUT is `unknown`. 402/401/403/404/400 are terminal, 429/5xx retryable.
* A result with status COMPLETED but `billingStatus: pending` (media still uploading) counts as still running.
* The webhook URL must be public HTTPS for the real service (it refuses others with 400 at submit); the sandbox
  accepts loopback http.
* Usage: ModelRunner reports a charge as `totalPrice` (decimal string) on request items; when present it becomes
  `Usage.cost_usd` with `cost_source="provider"`. No token counts are reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from schemas.job import DEFAULT_MODEL, EditJob
from schemas.manifest import Usage
from schemas.params import Background, parse_size, size_problems
from worker.errors import ErrorKind, ProviderError, WebhookRejected
from worker.policy import kind_for_status, parse_retry_after
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
from worker.providers.common import (
    WebhookSecret,
    fal_edit_input,
    json_or_none,
    standard_webhook_key,
    v1_matches,
    v1_signatures,
    webhook_headers,
    webhook_json,
)

MAX_IMAGES = 16
TOLERANCE_S = 300.0
SECRET_MIN_REFRESH_S = 60.0
SUCCESS_BILLING = ("charged", "partial")
RETRYABLE_TEXT = re.compile(r"HTTP 5\d\d|\b5\d\d\b|HTTP 429|\b429\b|timed? ?out|timeout|rate limit|overloaded",
                            re.IGNORECASE)
NOT_COMPLETED = re.compile(r"not (yet )?completed?|still in (queue|progress)", re.IGNORECASE)
FIELDS = ("prompt", "image_urls", "mask_url", "image_size", "quality", "num_images", "output_format")


class ModelRunnerSettings(ProviderSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_MODELRUNNER_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("EDITQ_MODELRUNNER_KEY", "EDITQ_MODELRUNNER_API_KEY", "MODELRUNNER_KEY")
    )
    base_url: str = "https://queue.modelrunner.run"
    rest_url: str = "https://modelrunner.run"  # account API: the webhook secret lives here
    webhook_secret: SecretStr | None = None
    model_path: str = DEFAULT_MODEL  # where the canonical model is served on ModelRunner (unconfirmed)
    field_names: dict[str, str] = Field(default_factory=dict)  # canonical (fal) input name -> ModelRunner name
    concurrency: int = 16


class ModelRunnerAdapter(ProviderAdapter):
    name: ClassVar[str] = "modelrunner"
    settings_cls: ClassVar[type[ProviderSettings]] = ModelRunnerSettings
    settings: ModelRunnerSettings
    auth_scheme: ClassVar[str] = "Key"

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        # refetched on a mismatch (rotated: the old secret verifies for 24 h anyway)
        self._secret = WebhookSecret(standard_webhook_key, min_refresh_s=SECRET_MIN_REFRESH_S)

    # ---- pure -------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        problems = []
        unknown = sorted(set(self.settings.field_names) - set(FIELDS))
        if unknown:
            problems.append(f"modelrunner: EDITQ_MODELRUNNER_FIELD_NAMES renames unknown fields {unknown}; "
                            f"allowed keys: {', '.join(FIELDS)}")
        if job.num_images > MAX_NUM_IMAGES:
            problems.append(
                f"modelrunner: num_images={job.num_images} is not allowed; allowed values: 1 to {MAX_NUM_IMAGES}"
            )
        if len(job.images) > MAX_IMAGES:
            problems.append(f"modelrunner: images has {len(job.images)} entries; allowed: 1 to {MAX_IMAGES}")
        dims = parse_size(job.size)
        if dims is not None and dims not in PRESETS:
            bad = size_problems(*dims)
            if bad:
                presets = ", ".join(f"{w}x{h}" for w, h in PRESETS)
                problems.append(
                    f"modelrunner: size={job.size} is not allowed ({'; '.join(bad)}); allowed values: auto, "
                    f"{presets}, or a custom WxH within those rules"
                )
        if job.quality.value not in QUALITIES:
            problems.append(
                f"modelrunner: quality={job.quality.value} is not allowed; allowed values: {', '.join(QUALITIES)}"
            )
        if job.background is Background.transparent:
            problems.append(
                "modelrunner: background=transparent is not supported (the gpt-image-2 edit input has no "
                "background parameter; outputs are opaque); allowed values: auto, opaque"
            )
        return problems

    def model_path(self, job: EditJob) -> str:
        model = job.model.strip("/")
        return self.settings.model_path.strip("/") if model == DEFAULT_MODEL else model

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        fields = fal_edit_input(job, inputs)
        rename = self.settings.field_names
        body: dict[str, Any] = {rename.get(k, k): v for k, v in fields.items()}
        body["metadata"] = {"editq_job_id": job.job_id, "editq_batch_id": job.batch_id}
        if webhook_url:
            body["webhook"] = webhook_url
            body["webhook_events_filter"] = ["completed"]
        headers = {"x-modelrunner-queue-priority": "normal" if job.priority.value == "interactive" else "low"}
        return ProviderRequest("POST", "/" + self.model_path(job), json=body, headers=headers)

    # ---- I/O ----------------------------------------------------------------------------------
    async def submit(self, http: httpx.AsyncClient, job: EditJob, req: ProviderRequest) -> Submitted:
        resp = await self.send(http, req)
        if resp.status_code >= 300:
            err = self._error(resp, "submit")
            if resp.status_code == 404:
                err.reason = self.scrub(
                    f"{err.reason} (model path {req.path.lstrip('/')!r}; ModelRunner's catalogue is not confirmed to "
                    "serve it: set EDITQ_MODELRUNNER_MODEL_PATH)"
                )
            raise err
        data = json_or_none(resp)
        rid = data.get("request_id") if isinstance(data, dict) else None
        if not rid:
            reason = self.scrub(f"modelrunner submit: no request_id in {str(data)[:200]}")
            raise ProviderError(ErrorKind.unknown, reason, maybe_billed=True)
        base = f"{self.settings.base_url.rstrip('/')}{req.path}/requests/{rid}"
        fallback = {"status_url": f"{base}/status", "response_url": base, "cancel_url": f"{base}/cancel"}
        # the key goes with every status/result call: follow the returned URLs only on the configured API origin
        handle = {k: data[k] if _same_origin(data.get(k), self.settings.base_url) else v for k, v in fallback.items()}
        return Submitted(request_id=str(rid), handle=handle)

    async def poll(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        resp = await self._get(http, handle["status_url"])
        data = json_or_none(resp)
        status = data.get("status") if isinstance(data, dict) else None
        if resp.status_code == 400 and status == "FAILED":
            assert isinstance(data, dict)
            reason = f"modelrunner: request FAILED: {str(data.get('error') or 'no error text')[:500]}"
            return Outcome(done=True, error=ProviderError(ErrorKind.unknown, self.scrub(reason), status_code=400,
                                                          provider_code="FAILED"))
        if resp.status_code >= 300:
            err = self._error(resp, "status")
            if resp.status_code == 404:
                return Outcome(done=True, error=err)
            raise err
        if status == "CANCELLED":
            return Outcome(done=True, error=ProviderError(ErrorKind.terminal, "modelrunner: request CANCELLED",
                                                          provider_code="CANCELLED"))
        if status != "COMPLETED":
            return Outcome.running(status=status)
        return await self._fetch_result(http, handle)

    async def cancel(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> None:
        try:  # best effort: documented as a no-op on model endpoints
            await http.put(handle["cancel_url"], headers=self.auth_headers(), timeout=self.settings.timeout_s)
        except (httpx.HTTPError, KeyError):
            return None

    async def webhook_outcome(
        self, http: httpx.AsyncClient, event: WebhookEvent, handle: dict[str, Any]
    ) -> Outcome:
        outcome = self._result_outcome(event.payload)
        if outcome.done:
            return outcome
        return await self.poll(http, event.request_id, handle)

    async def verify_webhook(
        self, http: httpx.AsyncClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> WebhookEvent:
        msg_id, message, sig_header = webhook_headers(headers, body, now=now, tolerance_s=TOLERANCE_S)
        given = v1_signatures(sig_header)
        if not given:
            raise WebhookRejected("no v1 signature")
        if not await self._secret.verify(self.settings.webhook_secret, lambda: self._fetch_secret(http),
                                         lambda key: v1_matches(key, message, given), now):
            raise WebhookRejected("signature does not match")
        payload = webhook_json(body)
        rid = (payload.get("id") or payload.get("request_id")) if isinstance(payload, dict) else None
        if not rid:
            raise WebhookRejected("body has no request id")
        return WebhookEvent(delivery_id=msg_id, request_id=str(rid), payload=payload)

    # ---- internals ----------------------------------------------------------------------------------
    async def _fetch_result(self, http: httpx.AsyncClient, handle: dict[str, Any]) -> Outcome:
        resp = await self._get(http, handle["response_url"])
        data = json_or_none(resp)
        if resp.status_code == 200 and isinstance(data, dict):
            return self._result_outcome(data)
        if resp.status_code == 422 and isinstance(data, dict):
            details = data.get("details")
            if isinstance(details, dict) and details.get("code") == "INVALID_OUTPUT":
                reason = f"modelrunner: invalid output from the provider (not billed): {data.get('error')}"
                return Outcome(done=True, error=ProviderError(ErrorKind.unknown, self.scrub(reason)[:2000],
                                                              status_code=422, provider_code="INVALID_OUTPUT"))
            return self._result_outcome({**data, "billingStatus": data.get("billingStatus") or "failed"})
        if resp.status_code == 409 or (resp.status_code == 400 and NOT_COMPLETED.search(str(data))):
            return Outcome.running(status="not-completed")  # 409 per openapi.json, 400 per errors.mdx
        err = self._error(resp, "result")
        if err.kind is ErrorKind.retryable:
            raise err
        return Outcome(done=True, error=err)

    def _result_outcome(self, data: dict[str, Any]) -> Outcome:
        status = data.get("status")
        billing = data.get("billingStatus")
        if status == "FAILED" or (status == "COMPLETED" and billing == "failed"):
            error = str(data.get("error") or "generation failed")
            kind = ErrorKind.retryable if RETRYABLE_TEXT.search(error) else ErrorKind.terminal
            if status == "FAILED":
                kind = ErrorKind.unknown
            return Outcome(done=True, error=ProviderError(kind, self.scrub(f"modelrunner: {error}")[:2000],
                                                          provider_code=f"{status}/{billing}"))
        if status == "CANCELLED":
            return Outcome(done=True, error=ProviderError(ErrorKind.terminal, "modelrunner: request CANCELLED",
                                                          provider_code="CANCELLED"))
        if status == "COMPLETED" and billing in SUCCESS_BILLING:
            outputs = _outputs(data.get("output"))
            keep = ("id", "modelEndpoint", "billingStatus", "inferenceTime", "delayTime", "createdAt", "totalPrice")
            raw: dict[str, Any] = {k: data[k] for k in keep if k in data}
            output = data.get("output")
            if isinstance(output, dict):
                raw["output"] = {k: v for k, v in output.items() if k != "images"}
            return Outcome(done=True, result=Result(outputs=outputs, usage=_usage(data), raw=raw))
        return Outcome.running(status=status, billing=billing)

    async def _get(self, http: httpx.AsyncClient, url: str) -> httpx.Response:
        try:
            return await http.get(url, headers=self.auth_headers(), timeout=self.settings.timeout_s)
        except httpx.TimeoutException as exc:
            raise ProviderError(ErrorKind.retryable, f"modelrunner: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.retryable, f"modelrunner: connection error ({type(exc).__name__})") from None

    async def _fetch_secret(self, http: httpx.AsyncClient) -> str | None:
        url = self.settings.rest_url.rstrip("/") + "/webhooks/default/secret"
        try:
            resp = await http.get(url, headers=self.auth_headers(), timeout=10)
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        secret = body.get("key") or body.get("secret") if isinstance(body, dict) else None
        return secret if isinstance(secret, str) else None

    def _error(self, resp: httpx.Response, what: str) -> ProviderError:
        body = json_or_none(resp)
        if isinstance(body, dict):
            text: Any = body.get("error") or body.get("message") or body
            if isinstance(text, list):  # zod issues: [{path, message, ...}]
                text = "; ".join(f"{'.'.join(map(str, i.get('path', [])))}: {i.get('message')}"
                                 if isinstance(i, dict) else str(i) for i in text)
        else:
            text = resp.text[:500]
        code = body.get("details", {}).get("code") if isinstance(body, dict) and isinstance(
            body.get("details"), dict) else None
        return ProviderError(
            kind_for_status(resp.status_code),
            self.scrub(f"modelrunner {what}: HTTP {resp.status_code}: {str(text)[:500]}"),
            status_code=resp.status_code,
            provider_code=code,
            retry_after_s=parse_retry_after(resp.headers),
        )


def _same_origin(url: Any, base: str) -> bool:
    if not isinstance(url, str):
        return False
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _outputs(output: Any) -> list[OutputRef]:
    """`{"images": [{url, content_type}]}` (fal-shaped) or a bare list of URLs / `{url}` objects."""
    items: Any = output.get("images") if isinstance(output, dict) else output
    if isinstance(items, (str, dict)):
        items = [items]
    refs = []
    for item in items or []:
        if isinstance(item, str) and item:
            refs.append(OutputRef(url=item))
        elif isinstance(item, dict) and item.get("url"):
            refs.append(OutputRef(url=str(item["url"]), content_type=item.get("content_type")))
    return refs


def _usage(data: dict[str, Any]) -> Usage | None:
    price = data.get("totalPrice")
    try:
        cost = float(price) if price is not None else None
    except (TypeError, ValueError):
        cost = None
    return Usage(cost_usd=cost, cost_source="provider") if cost is not None else None
