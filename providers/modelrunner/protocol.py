"""ModelRunner queue API (facts: shared/reference/provider-fal-and-modelrunner.md §6; choices: README.md here).

Submit `POST {base}/{model path}` with the input at the top level plus the reserved keys `webhook`,
`webhook_events_filter`, `metadata` (201 IN_QUEUE); poll `status_url` (200 IN_QUEUE / IN_PROGRESS /
COMPLETED, **400** FAILED); fetch `response_url` (the result object, output nested under `output`;
**`billingStatus` decides** success); cancel with `PUT cancel_url` (documented as a no-op). Webhooks are
Standard Webhooks (`v1,` HMAC-SHA256 keyed with the base64-decoded `whsec_` secret, 300 s tolerance); the
secret is configured or fetched from `{rest_url}/webhooks/default/secret`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from editq.providers import types as pt
from editq.providers.fal.schema import MAX_NUM_IMAGES, QUALITIES, edit_input, size_problem
from editq.providers.modelrunner import ModelRunnerSettings
from editq.providers.protocol import ProviderProtocol
from editq.providers.signatures import (
    WebhookSecret,
    fetch_key,
    standard_webhook_key,
    v1_matches,
    v1_signatures,
    webhook_headers,
    webhook_json,
)
from editq.providers.spec import ProviderSettings
from editq.schemas.job import DEFAULT_MODEL, EditJob
from editq.schemas.manifest import Usage
from editq.schemas.params import Background
from editq.worker.errors import ErrorKind, ProviderError, WebhookMalformed, WebhookRejected

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "modelrunner"
MAX_IMAGES = 16
TOLERANCE_S = 300.0
SECRET_MIN_REFRESH_S = 60.0
SECRET_TIMEOUT_S = 10.0
SUCCESS_BILLING = ("charged", "partial")
RETRYABLE_TEXT = re.compile(r"HTTP 5\d\d|\b5\d\d\b|HTTP 429|\b429\b|timed? ?out|timeout|rate limit|overloaded",
                            re.IGNORECASE)
NOT_COMPLETED = re.compile(r"not (yet )?completed?|still in (queue|progress)", re.IGNORECASE)
FIELDS = ("prompt", "image_urls", "mask_url", "image_size", "quality", "num_images", "output_format")
KEPT = ("id", "modelEndpoint", "billingStatus", "inferenceTime", "delayTime", "createdAt", "totalPrice")


# ---- pure translation -------------------------------------------------------------------------------------
def validate(job: EditJob, settings: ModelRunnerSettings) -> list[str]:
    problems = []
    unknown = sorted(set(settings.field_names) - set(FIELDS))
    if unknown:
        problems.append(f"modelrunner: EDITQ_MODELRUNNER_FIELD_NAMES renames unknown fields {unknown}; "
                        f"allowed keys: {', '.join(FIELDS)}")
    if job.num_images > MAX_NUM_IMAGES:
        problems.append(
            f"modelrunner: num_images={job.num_images} is not allowed; allowed values: 1 to {MAX_NUM_IMAGES}"
        )
    if len(job.images) > MAX_IMAGES:
        problems.append(f"modelrunner: images has {len(job.images)} entries; allowed: 1 to {MAX_IMAGES}")
    if (bad_size := size_problem(NAME, job.size)) is not None:
        problems.append(bad_size)
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


def model_path(job: EditJob, settings: ModelRunnerSettings) -> str:
    model = job.model.strip("/")
    return settings.model_path.strip("/") if model == DEFAULT_MODEL else model


def build_request(job: EditJob, inputs: pt.InputUrls, webhook_url: str | None,
                  settings: ModelRunnerSettings) -> pt.ProviderRequest:
    rename = settings.field_names
    body: dict[str, Any] = {rename.get(k, k): v for k, v in edit_input(job, inputs).items()}
    body["metadata"] = {"editq_job_id": job.job_id, "editq_batch_id": job.batch_id}
    if webhook_url:
        body["webhook"] = webhook_url
        body["webhook_events_filter"] = ["completed"]
    headers = {"x-modelrunner-queue-priority": "normal" if job.priority.value == "interactive" else "low"}
    return pt.ProviderRequest("POST", "/" + model_path(job, settings), json=body, headers=headers, what="submit")


# ---- parsing answers --------------------------------------------------------------------------------------
def error_text(answer: pt.Answer) -> str:
    """What an error body says: `error` (zod issues joined as `path: message`), else `message`, else the body."""
    body = answer.json
    if not isinstance(body, dict):
        return answer.text[:500]
    text: Any = body.get("error") or body.get("message") or body
    if isinstance(text, list):  # zod issues: [{path, message, ...}]
        text = "; ".join(f"{'.'.join(map(str, i.get('path', [])))}: {i.get('message')}"
                         if isinstance(i, dict) else str(i) for i in text)
    return str(text)[:500]


def answer_error(answer: pt.Answer, what: str, *, hint: str = "") -> ProviderError:
    """A non-2xx answer: kind by the one status table, reason from ModelRunner's error body, `details.code`
    kept as the provider code."""
    details = answer.obj.get("details")
    code = details.get("code") if isinstance(details, dict) and isinstance(details.get("code"), str) else None
    base = answer.error(NAME, what, provider_code=code)
    return ProviderError(base.kind, f"{NAME} {what}: HTTP {answer.status}: {error_text(answer)}{hint}",
                         status_code=base.status_code, provider_code=code, retry_after_s=base.retry_after_s)


def same_origin(url: Any, base: str) -> bool:
    if not isinstance(url, str):
        return False
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def parse_submit(answer: pt.Answer, base_url: str, path: str) -> pt.Submitted:
    if not answer.ok:
        hint = ""
        if answer.status == 404:
            hint = (f" (model path {path.lstrip('/')!r}; ModelRunner's catalogue is not confirmed to serve it: set "
                    "EDITQ_MODELRUNNER_MODEL_PATH)")
        raise answer_error(answer, "submit", hint=hint)
    data = answer.obj
    rid = data.get("request_id")
    if not rid or not isinstance(rid, str):
        # accepted (2xx) but unreadable: a request may exist that we cannot follow
        raise pt.malformed(NAME, "submit", f"no request_id in {answer.text[:200]}", maybe_billed=True)
    base = f"{base_url.rstrip('/')}{path}/requests/{rid}"
    fallback = {"status_url": f"{base}/status", "response_url": base, "cancel_url": f"{base}/cancel"}
    # the key goes with every status/result call: follow the returned URLs only on the configured API origin
    handle = {k: data[k] if same_origin(data.get(k), base_url) else v for k, v in fallback.items()}
    return pt.Submitted(request_id=rid, handle=handle)


def cancelled() -> pt.Outcome:
    return pt.Outcome.failed(ProviderError(ErrorKind.terminal, "modelrunner: request CANCELLED",
                                        provider_code="CANCELLED"))


def parse_status(answer: pt.Answer) -> pt.Outcome | None:
    """A status answer -> running / failed, or None when COMPLETED (fetch the result)."""
    data = answer.json
    status = data.get("status") if isinstance(data, dict) else None
    if answer.status == 400 and status == "FAILED":
        assert isinstance(data, dict)
        reason = f"modelrunner: request FAILED: {str(data.get('error') or 'no error text')[:500]}"
        return pt.Outcome.failed(ProviderError(ErrorKind.unknown, reason, status_code=400, provider_code="FAILED"))
    if not answer.ok:
        err = answer_error(answer, "status")
        if answer.status == 404:
            return pt.Outcome.failed(err)
        raise err
    if not isinstance(data, dict):
        raise pt.malformed(NAME, "status", f"not a JSON object: {answer.text[:200]}")
    if status == "CANCELLED":
        return cancelled()
    if status != "COMPLETED":
        return pt.Outcome.running(status=status)
    return None


def outputs_of(output: Any) -> list[pt.OutputRef]:
    """`{"images": [{url, content_type}]}` (fal-shaped) or a bare list of URLs / `{url}` objects."""
    items: Any = output.get("images") if isinstance(output, dict) else output
    if isinstance(items, (str, dict)):
        items = [items]
    if not isinstance(items, list):
        return []
    refs = []
    for item in items:
        if isinstance(item, str) and item:
            refs.append(pt.OutputRef(url=item))
        elif isinstance(item, dict) and item.get("url"):
            content_type = item.get("content_type")
            refs.append(pt.OutputRef(url=str(item["url"]),
                                  content_type=content_type if isinstance(content_type, str) else None))
    return refs


def usage_of(data: dict[str, Any]) -> Usage | None:
    price = data.get("totalPrice")
    try:
        cost = float(price) if price is not None else None
    except (TypeError, ValueError):
        cost = None
    return Usage(cost_usd=cost, cost_source="provider") if cost is not None else None


def result_outcome(data: dict[str, Any]) -> pt.Outcome:
    """A result object (or a webhook's body) -> its outcome; `billingStatus` decides success."""
    status = data.get("status")
    billing = data.get("billingStatus")
    if status == "FAILED" or (status == "COMPLETED" and billing == "failed"):
        error = str(data.get("error") or "generation failed")
        kind = ErrorKind.retryable if RETRYABLE_TEXT.search(error) else ErrorKind.terminal
        if status == "FAILED":
            kind = ErrorKind.unknown
        return pt.Outcome.failed(ProviderError(kind, f"modelrunner: {error}"[:2000],
                                               provider_code=f"{status}/{billing}"))
    if status == "CANCELLED":
        return cancelled()
    if status == "COMPLETED" and billing in SUCCESS_BILLING:
        raw: dict[str, Any] = {k: data[k] for k in KEPT if k in data}
        output = data.get("output")
        if isinstance(output, dict):
            raw["output"] = {k: v for k, v in output.items() if k != "images"}
        return pt.Outcome.succeeded(pt.Result(outputs=outputs_of(output), usage=usage_of(data), raw=raw))
    return pt.Outcome.running(status=status, billing=billing)


def parse_result(answer: pt.Answer) -> pt.Outcome:
    data = answer.json
    if answer.status == 200:
        if not isinstance(data, dict):
            raise pt.malformed(NAME, "result", f"not a JSON object: {answer.text[:200]}")
        return result_outcome(data)
    if answer.status == 422 and isinstance(data, dict):
        details = data.get("details")
        if isinstance(details, dict) and details.get("code") == "INVALID_OUTPUT":
            reason = f"modelrunner: invalid output from the provider (not billed): {data.get('error')}"
            return pt.Outcome.failed(ProviderError(ErrorKind.unknown, reason[:2000], status_code=422,
                                                provider_code="INVALID_OUTPUT"))
        return result_outcome({**data, "billingStatus": data.get("billingStatus") or "failed"})
    if answer.status == 409 or (answer.status == 400 and NOT_COMPLETED.search(str(data))):
        return pt.Outcome.running(status="not-completed")  # 409 per openapi.json, 400 per errors.mdx
    err = answer_error(answer, "result")
    if err.kind is ErrorKind.retryable:
        raise err
    return pt.Outcome.failed(err)


def secret_of(answer: pt.Answer) -> str | None:
    """`{"key": "whsec_..."}` (or `secret`) from the secret endpoint; None for anything else."""
    if answer.status != 200:
        return None
    body = answer.obj
    secret = body.get("key") or body.get("secret")
    return secret if isinstance(secret, str) else None


def delivery(headers: Mapping[str, str], body: bytes, *, now: float) -> tuple[str, bytes, list[bytes]]:
    """Headers and body -> (webhook-id, the signed message, the v1 signatures); raises WebhookRejected."""
    msg_id, message, sig_header = webhook_headers(headers, body, now=now, tolerance_s=TOLERANCE_S)
    given = v1_signatures(sig_header)
    if not given:
        raise WebhookRejected("no v1 signature")
    return msg_id, message, given


def event_of(msg_id: str, body: bytes) -> pt.WebhookEvent:
    payload = webhook_json(body)
    if not isinstance(payload, dict):
        raise WebhookMalformed("body is not a JSON object")
    rid = payload.get("id") or payload.get("request_id")
    if not rid or not isinstance(rid, str):
        raise WebhookMalformed("body has no request id")
    return pt.WebhookEvent(delivery_id=msg_id, request_id=rid, payload=payload)


# ---- the protocol -----------------------------------------------------------------------------------------
class ModelRunnerProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = ModelRunnerSettings
    settings: ModelRunnerSettings

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        # refetched on a mismatch (rotated: the old secret verifies for 24 h anyway)
        self._secret = WebhookSecret(standard_webhook_key, min_refresh_s=SECRET_MIN_REFRESH_S)

    def validate(self, job: EditJob) -> list[str]:
        return validate(job, self.settings)

    def build_request(self, job: EditJob, inputs: pt.InputUrls, webhook_url: str | None) -> pt.ProviderRequest:
        return build_request(job, inputs, webhook_url, self.settings)

    async def submit(self, client: ProviderClient, job: EditJob, req: pt.ProviderRequest) -> pt.Submitted:
        return parse_submit(await client.send(req), self.settings.base_url, req.path)

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> pt.Outcome:
        outcome = parse_status(await client.send(pt.ProviderRequest("GET", handle["status_url"], what="status")))
        if outcome is not None:
            return outcome
        return parse_result(await client.send(pt.ProviderRequest("GET", handle["response_url"], what="result")))

    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        url = handle.get("cancel_url")
        if not url:
            return None
        try:  # best effort: documented as a no-op on model endpoints
            await client.send(pt.ProviderRequest("PUT", url, what="cancel"))
        except ProviderError:
            return None

    async def webhook_outcome(self, client: ProviderClient, event: pt.WebhookEvent,
                              handle: dict[str, Any]) -> pt.Outcome:
        outcome = result_outcome(event.payload)
        return outcome if outcome.done else await self.poll(client, event.request_id, handle)

    async def verify_webhook(
        self, client: ProviderClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> pt.WebhookEvent:
        msg_id, message, given = delivery(headers, body, now=now)
        if not await self._secret.verify(self.settings.webhook_secret, lambda: self._fetch_secret(client),
                                         lambda key: v1_matches(key, message, given), now):
            raise WebhookRejected("signature does not match")
        return event_of(msg_id, body)

    async def prepare_webhooks(self, client: ProviderClient) -> None:
        if self.settings.webhook_secret is None and self.settings.api_key is not None and self._secret.key is None:
            await self._secret.load(lambda: self._fetch_secret(client), time.time())

    async def _fetch_secret(self, client: ProviderClient) -> str | None:
        url = self.settings.rest_url.rstrip("/") + "/webhooks/default/secret"
        req = pt.ProviderRequest("GET", url, timeout_s=SECRET_TIMEOUT_S, what="webhook secret")
        return await fetch_key(client, req, secret_of)
