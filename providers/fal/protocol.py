"""fal.ai queue API for `openai/gpt-image-2/edit` (facts: shared/reference/provider-fal-and-modelrunner.md).

Submit with `?fal_webhook=`, poll `status_url` (202 while queued/running, 200 when COMPLETED,
`error` on a failed model), fetch `response_url`, cancel with PUT. Webhooks are Ed25519-signed
over `request_id\\nuser_id\\ntimestamp\\nsha256hex(body)` and checked against fal's JWKS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from editq.providers import types as pt
from editq.providers.fal import FalSettings
from editq.providers.fal.schema import MAX_NUM_IMAGES, QUALITIES, edit_input, size_problem
from editq.providers.protocol import ProviderProtocol
from editq.providers.signatures import KeyFetchLimit, fetch_key, webhook_json
from editq.providers.spec import ProviderSettings
from editq.schemas.job import EditJob
from editq.schemas.params import Background
from editq.worker.errors import ErrorKind, ProviderError, WebhookMalformed, WebhookRejected

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "fal"
JWKS_TTL_S = 24 * 3600
JWKS_MIN_REFRESH_S = 60
TOLERANCE_S = 300.0
# fal's error types that say the platform, not the request, failed: worth another attempt
RETRYABLE_ERROR_TYPES = frozenset({
    "request_timeout", "startup_timeout", "runner_scheduling_failure",
    "runner_connection_timeout", "runner_disconnected", "runner_connection_refused",
    # fal could not fetch an input. editq's inputs are its own presigned S3 URLs, checked to be images at
    # enqueue: a failed download is our storage being unreachable (or slow), not the user's error
    "file_download_error",
})


# ---- pure translation and parsing ----------------------------------------------------------------------
def validate(job: EditJob) -> list[str]:
    problems = []
    if job.num_images > MAX_NUM_IMAGES:
        problems.append(f"fal: num_images={job.num_images} is not allowed; allowed values: 1 to {MAX_NUM_IMAGES}")
    if (bad_size := size_problem(NAME, job.size)) is not None:
        problems.append(bad_size)
    if job.background is Background.transparent:
        problems.append(
            "fal: background=transparent is not supported by openai/gpt-image-2/edit on fal (it has no "
            "background parameter; outputs are opaque); allowed values: auto, opaque"
        )
    if job.quality.value not in QUALITIES:
        problems.append(f"fal: quality={job.quality.value} is not allowed; allowed values: {', '.join(QUALITIES)}")
    return problems


def answer_error(answer: pt.Answer, what: str) -> ProviderError:
    """A non-2xx answer, with fal's `X-Fal-Error-Type` kept as the provider code."""
    return answer.error(NAME, what, provider_code=answer.headers.get("x-fal-error-type"))


def model_error(message: str, error_type: str | None) -> ProviderError:
    kind = ErrorKind.retryable if error_type in RETRYABLE_ERROR_TYPES else ErrorKind.terminal
    return ProviderError(kind, f"fal: {message}"[:2000], provider_code=error_type)


def parse_submit(answer: pt.Answer, base_url: str, model: str) -> pt.Submitted:
    if not answer.ok:
        raise answer_error(answer, "submit")
    data = answer.obj
    rid = data.get("request_id")
    if not rid or not isinstance(rid, str):
        # accepted (2xx) but unreadable: a request may exist that we cannot follow
        raise pt.malformed(NAME, "submit", f"no request_id in {answer.text[:200]}", maybe_billed=True)
    owner_app = "/".join(model.strip("/").split("/")[:2])
    base = f"{base_url.rstrip('/')}/{owner_app}/requests/{rid}"
    handle = {
        "status_url": data.get("status_url") or f"{base}/status",
        "response_url": data.get("response_url") or base,
        "cancel_url": data.get("cancel_url") or f"{base}/cancel",
    }
    return pt.Submitted(request_id=rid, handle=handle)


def parse_status(answer: pt.Answer) -> pt.Outcome | None:
    """A status answer -> running / failed, or None when COMPLETED without error (fetch the result)."""
    if answer.status >= 300 and answer.status != 202:
        err = answer_error(answer, "status")
        if err.kind is ErrorKind.terminal and answer.status == 404:
            return pt.Outcome.failed(err)
        raise err
    data = answer.json
    if not isinstance(data, dict):
        raise pt.malformed(NAME, "status", f"not a JSON object: {answer.text[:200]}")
    status = data.get("status")
    if status != "COMPLETED":
        return pt.Outcome.running(status=status, queue_position=data.get("queue_position"))
    if data.get("error"):
        return pt.Outcome.failed(model_error(str(data["error"]), data.get("error_type")))
    return None


def result_of(payload: Any) -> pt.Result:
    if not isinstance(payload, dict):
        raise pt.malformed(NAME, "result", f"not a JSON object: {str(payload)[:200]}")
    images = payload.get("images") or []
    if not isinstance(images, list):
        raise pt.malformed(NAME, "result", "images is not a list")
    outputs = [pt.OutputRef(url=i.get("url"), content_type=i.get("content_type"))
               for i in images if isinstance(i, dict) and i.get("url")]
    return pt.Result(outputs=outputs, raw={k: v for k, v in payload.items() if k != "images"})


def parse_result(answer: pt.Answer) -> pt.Outcome:
    if answer.status == 200:
        return pt.Outcome.succeeded(result_of(answer.json))
    err = answer_error(answer, "result")
    if err.kind is ErrorKind.retryable:
        raise err
    return pt.Outcome.failed(err)


def error_type_of(p: dict[str, Any]) -> str | None:
    """The error type of an ERROR delivery: a top-level `error_type` if any, else the one of the failed
    result it carries (`payload.error_type` for platform errors, `payload.detail[].type` for a model
    error), as the status and result calls report them."""
    if isinstance(p.get("error_type"), str):
        return str(p["error_type"])
    payload = p.get("payload")
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("error_type"), str):
        return str(payload["error_type"])
    detail = payload.get("detail")
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                return str(item["type"])
    return None


def webhook_payload_outcome(p: dict[str, Any]) -> pt.Outcome | None:
    """A delivery's body -> its outcome, or None when the payload is missing (fetch the result)."""
    if p.get("status") == "OK" and isinstance(p.get("payload"), dict):
        return pt.Outcome.succeeded(result_of(p["payload"]))
    if p.get("status") == "ERROR":
        detail = p.get("payload") if p.get("payload") is not None else p.get("error")
        return pt.Outcome.failed(model_error(f"{p.get('error')}: {str(detail)[:500]}", error_type_of(p)))
    return None


HISTORY_PATH = "/models/requests/by-endpoint"  # fal's "List requests by endpoint(s)" (Platform API v1)
HISTORY_LIMIT = 100  # the most a page holds


def history_request(history_url: str, endpoints: list[str], start: float, end: float) -> pt.ProviderRequest:
    """The request history's first page: requests of `endpoints` in [start, end). No `status` filter (failed
    requests end jobs too), no `expand` (the result is fetched the normal way), the default sort."""
    params = {"endpoint_id": ",".join(endpoints), "start": pt.iso_utc(start), "end": pt.iso_utc(end),
              "limit": str(HISTORY_LIMIT)}
    return pt.ProviderRequest("GET", history_url.rstrip("/") + HISTORY_PATH, params=params, what="history")


def parse_history(answer: pt.Answer, request: pt.ProviderRequest) -> pt.ListedPage:
    """`{items, next_cursor, has_more}`: each item a finished request when it has `ended_at`."""
    if not answer.ok:
        raise answer_error(answer, "history")
    items = answer.obj.get("items")
    if not isinstance(items, list):
        raise pt.malformed(NAME, "history", f"no items list in {answer.text[:200]}")
    listed = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("request_id"), str) and item["request_id"]:
            ended = pt.parse_instant(item.get("ended_at"))
            listed.append(pt.Listed(item["request_id"], done=ended is not None, at=ended))
    cursor = answer.obj.get("next_cursor")
    more = answer.obj.get("has_more") is True and isinstance(cursor, str) and bool(cursor)
    nxt = pt.ProviderRequest("GET", request.url, params={**request.params, "cursor": str(cursor)},
                             what="history") if more else None
    return pt.ListedPage(listed, nxt)


def signed_message(headers: Mapping[str, str], body: bytes, *, now: float, user_id: str | None
                   ) -> tuple[str, str, bytes, bytes]:
    """Headers and body -> (request id, timestamp, the signed message, the signature); raises WebhookRejected."""
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
    if abs(now - ts_i) > TOLERANCE_S:
        raise WebhookRejected("timestamp outside tolerance")
    if not user_id:  # fal signs every account's deliveries with the same keys: the user id is what binds them
        raise WebhookRejected("EDITQ_FAL_USER_ID is not set; fal deliveries cannot be attributed to this account")
    if not hmac.compare_digest(uid.encode("utf-8", "replace"), user_id.encode()):
        raise WebhookRejected("webhook for another fal user")
    return rid, ts, "\n".join([rid, uid, ts, hashlib.sha256(body).hexdigest()]).encode(), sig


def jwks_keys(data: Any) -> list[VerifyKey]:
    keys = data.get("keys", []) if isinstance(data, dict) else []
    return [
        VerifyKey(base64.urlsafe_b64decode(k["x"] + "=" * (-len(k["x"]) % 4)))
        for k in keys
        if isinstance(k, dict) and k.get("kty") == "OKP" and k.get("crv") == "Ed25519" and "x" in k
    ]


def any_key(keys: list[VerifyKey], message: bytes, sig: bytes) -> bool:
    for key in keys:
        try:
            key.verify(message, sig)
            return True
        except (BadSignatureError, ValueError):
            continue
    return False


# ---- the protocol ----------------------------------------------------------------------------------------
class FalProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = FalSettings
    settings: FalSettings

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self._jwks: list[VerifyKey] = []
        self._jwks_at = 0.0  # when the keys were last fetched
        self._jwks_limit = KeyFetchLimit(JWKS_MIN_REFRESH_S)  # once a minute; sooner while no key is held
        self._jwks_loading: asyncio.Task[None] | None = None

    def validate(self, job: EditJob) -> list[str]:
        return validate(job)

    def build_request(self, job: EditJob, inputs: pt.InputUrls, webhook_url: str | None) -> pt.ProviderRequest:
        headers = {"X-Fal-Queue-Priority": "normal" if job.priority.value == "interactive" else "low"}
        if self.settings.request_timeout_s:
            headers["X-Fal-Request-Timeout"] = str(self.settings.request_timeout_s)
        params = {"fal_webhook": webhook_url} if webhook_url else {}
        return pt.ProviderRequest("POST", "/" + job.model.strip("/"), json=edit_input(job, inputs), params=params,
                               headers=headers, what="submit")

    def history_request(self, start: float, end: float) -> pt.ProviderRequest | None:
        s = self.settings
        return history_request(s.history_url, s.history_endpoints, start, end) if s.sweep else None

    def parse_history(self, answer: pt.Answer, request: pt.ProviderRequest) -> pt.ListedPage:
        return parse_history(answer, request)

    async def submit(self, client: ProviderClient, job: EditJob, req: pt.ProviderRequest) -> pt.Submitted:
        return parse_submit(await client.send(req), self.settings.base_url, job.model)

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> pt.Outcome:
        answer = await client.send(pt.ProviderRequest("GET", handle["status_url"], params={"logs": "0"}, what="status"))
        outcome = parse_status(answer)
        if outcome is not None:
            return outcome
        return parse_result(await client.send(pt.ProviderRequest("GET", handle["response_url"], what="result")))

    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        try:
            await client.send(pt.ProviderRequest("PUT", handle["cancel_url"], what="cancel"))
        except ProviderError:
            return None

    async def webhook_outcome(self, client: ProviderClient, event: pt.WebhookEvent,
                              handle: dict[str, Any]) -> pt.Outcome:
        outcome = webhook_payload_outcome(event.payload)
        # payload missing (e.g. too large to serialise): fetch the result the normal way
        return outcome if outcome is not None else await self.poll(client, event.request_id, handle)

    async def verify_webhook(
        self, client: ProviderClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> pt.WebhookEvent:
        rid, ts, message, sig = signed_message(headers, body, now=now, user_id=self.settings.user_id)
        if not await self._verify(client, message, sig, now):
            raise WebhookRejected("signature does not match any fal key")
        payload = webhook_json(body)
        if not isinstance(payload, dict):
            raise WebhookMalformed("body is not a JSON object")
        if payload.get("request_id") not in (None, rid):
            raise WebhookMalformed("body request_id differs from the signed header")
        return pt.WebhookEvent(delivery_id=f"{rid}:{ts}:{sig.hex()[:16]}", request_id=rid, payload=payload)

    async def prepare_webhooks(self, client: ProviderClient) -> None:
        if self.settings.api_key is not None and not self._jwks:
            await self._refresh_jwks(client, time.time())

    # ---- the key set --------------------------------------------------------------------------------
    async def _verify(self, client: ProviderClient, message: bytes, sig: bytes, now: float) -> bool:
        loading = self._jwks_loading
        if loading is not None and not loading.done() and loading.get_loop() is asyncio.get_running_loop():
            await asyncio.shield(loading)  # a fetch is on its way: use its keys rather than refuse the delivery
        may_fetch = self._jwks_limit.may_fetch(now, bool(self._jwks))  # failed fetches count: no fetch per forgery
        if (not self._jwks or now - self._jwks_at > JWKS_TTL_S) and may_fetch:
            await self._refresh_jwks(client, now)
            may_fetch = False
        if any_key(self._jwks, message, sig):
            return True
        if may_fetch:  # keys may have rotated
            await self._refresh_jwks(client, now)
            return any_key(self._jwks, message, sig)
        return False

    async def _refresh_jwks(self, client: ProviderClient, now: float) -> None:
        """One JWKS fetch at a time: the burst of deliveries that arrives when a wave of jobs completes
        right after start-up waits for the same fetch instead of sending one each."""
        task = self._jwks_loading
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = self._jwks_loading = asyncio.ensure_future(self._load_jwks(client, now))
        await task

    async def _load_jwks(self, client: ProviderClient, now: float) -> None:
        self._jwks_limit.started(now)
        keys = await fetch_key(client, pt.ProviderRequest("GET", self.settings.jwks_url, auth=False, timeout_s=10,
                                                          what="jwks"), lambda a: jwks_keys(a.json) if a.ok else None)
        self._jwks_limit.ended(bool(keys))
        if keys is None:
            return  # keep the old keys; a failed refresh must not open the door
        self._jwks, self._jwks_at = keys, now
