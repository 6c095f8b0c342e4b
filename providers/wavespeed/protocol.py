"""WaveSpeedAI API v3 for `openai/gpt-image-2/edit` (facts: shared/reference/provider-replicate-wavespeed-oxen.md §5).

Protocol, as documented:
* submit  `POST {base}/api/v3/openai/gpt-image-2/edit[?webhook=<url>]`, `Authorization: Bearer <key>`,
  JSON body `{images, prompt, aspect_ratio?, resolution?, quality?, output_format?}`; the answer is HTTP 200
  with the envelope `{code, message, data: {id, status: "created", urls.get, ...}}`;
* result  `GET {base}/api/v3/predictions/{id}/result` -> the same envelope; `data.status` is `created`,
  `processing`, `completed` (then `data.outputs` holds URLs) or `failed` (`data.error`), HTTP 200 either way;
* webhook the bare `data` object, POSTed once the task is completed or failed, signed with WaveSpeed's own
  scheme: `webhook-signature: v3,<hex HMAC-SHA256>` over `"{webhook-id}.{webhook-timestamp}.{raw body}"`,
  keyed with the secret minus `whsec_` taken as raw UTF-8 bytes (NOT base64-decoded), max age 300 s.
  The secret comes from `EDITQ_WAVESPEED_WEBHOOK_SECRET`, else from `GET /api/v3/webhook/secret` (cached).

Choices where the sources are silent or disagree (safe for the user's money and data):
* No mask field is documented on gpt-image-2/edit, so a masked job is refused at enqueue (sending the mask
  under a guessed name could be silently ignored and the whole image repainted and billed).
* No `num_images` field: only 1 is allowed. No `background` field: `transparent` is refused.
* `quality=auto` is refused (WaveSpeed allows low/medium/high); the quality is always sent explicitly.
* `size`: WaveSpeed takes `aspect_ratio` + `resolution`, not pixels, and does not publish the pixel size of each
  pair. editq maps a canonical `WxH` only when it is in `SIZE_TABLE` below (its assumption: at 1k/2k the short
  side is 1024/2048 px, at 4k the long side is 3840 px, restricted to pairs whose size is unambiguous); any
  other size is refused with the list. `auto` omits `aspect_ratio` (WaveSpeed then follows the input image) and
  sends `resolution: "1k"` explicitly so the price tier is never implicit. The manifest records the real size.
* `output_format`: the documented value list is cut off; editq passes png/jpeg/webp by default and the setting
  `EDITQ_WAVESPEED_OUTPUT_FORMATS` narrows it. Outputs are stored by their real, sniffed format anyway.
* `enable_sync_mode` and `enable_base64_output` are never sent (base64 + webhook is refused by WaveSpeed).
* Result path: `/predictions/{id}/result` (model docs and SDK) rather than the newer `/predictions/{id}`.
* Cancel: WaveSpeed documents no cancel endpoint, so `cancel` is a no-op (the task may still be billed).
* Errors: HTTP 429/5xx and transport errors are retryable; other 4xx terminal. A `failed` task whose error text
  mentions an upstream `HTTP 5xx`/`429` or a timeout is retryable (as the official SDK re-runs those), every
  other failure terminal; `cancelled`/`deleted` (undocumented states the SDK knows) are terminal, `timeout`
  retryable. The 429 body and `Retry-After` are undocumented; `Retry-After` is honoured when present.
* Usage: WaveSpeed reports no tokens or cost; `Result.usage` stays empty, `timings` and `has_nsfw_contents`
  are kept in `raw`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from editq.providers import types as pt
from editq.providers.protocol import ProviderProtocol
from editq.providers.signatures import WebhookSecret, fetch_key, webhook_headers, webhook_json
from editq.providers.spec import ProviderSettings
from editq.providers.wavespeed import WaveSpeedSettings
from editq.schemas.job import EditJob
from editq.schemas.params import Background, parse_size
from editq.worker.errors import ErrorKind, ProviderError, WebhookMalformed, WebhookRejected
from editq.worker.policy import kind_for_status, parse_retry_after

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "wavespeed"
MODEL = "openai/gpt-image-2/edit"
QUALITIES = ("low", "medium", "high")
ASPECT_RATIOS = ("1:1", "1:2", "2:1", "1:3", "3:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9",
                 "9:21", "21:9")
RESOLUTIONS = ("1k", "2k", "4k")
DEFAULT_RESOLUTION = "1k"

# canonical size -> (aspect_ratio, resolution). editq's mapping; see the module docstring.
SIZE_TABLE: dict[tuple[int, int], tuple[str, str]] = {
    (1024, 1024): ("1:1", "1k"),
    (1536, 1024): ("3:2", "1k"),
    (1024, 1536): ("2:3", "1k"),
    (1280, 1024): ("5:4", "1k"),
    (1024, 1280): ("4:5", "1k"),
    (2048, 1024): ("2:1", "1k"),
    (1024, 2048): ("1:2", "1k"),
    (2048, 2048): ("1:1", "2k"),
    (2560, 2048): ("5:4", "2k"),
    (2048, 2560): ("4:5", "2k"),
    (3840, 2160): ("16:9", "4k"),
    (2160, 3840): ("9:16", "4k"),
    (3840, 1920): ("2:1", "4k"),
    (1920, 3840): ("1:2", "4k"),
}
MAX_IMAGES = 16  # no WaveSpeed limit is documented; this is editq's canonical limit
WEBHOOK_MAX_AGE_S = 300.0
SECRET_MIN_REFRESH_S = 60.0
SECRET_TIMEOUT_S = 10.0
RETRYABLE_TEXT = re.compile(r"HTTP 5\d\d|HTTP 429|timed? ?out|timeout|rate limit|too many requests", re.IGNORECASE)
TERMINAL_TEXT = re.compile(r"insufficient|balance|credit|unauthori[sz]ed|invalid api key|forbidden", re.IGNORECASE)


# ---- pure translation and parsing ----------------------------------------------------------------------
def validate(job: EditJob, formats: list[str]) -> list[str]:
    problems = []
    if job.model != MODEL:
        problems.append(f"wavespeed: model={job.model} is not supported; allowed values: {MODEL}")
    if job.mask is not None or job.mask_input is not None:
        problems.append(
            "wavespeed: mask is not supported by openai/gpt-image-2/edit on WaveSpeed (no mask field is "
            "documented; the edit would repaint the whole image); allowed values: no mask"
        )
    if job.num_images != 1:
        problems.append(f"wavespeed: num_images={job.num_images} is not allowed; allowed values: 1")
    if len(job.images) > MAX_IMAGES:
        problems.append(f"wavespeed: images has {len(job.images)} entries; allowed: 1 to {MAX_IMAGES}")
    dims = parse_size(job.size)
    if dims is not None and dims not in SIZE_TABLE:
        sizes = ", ".join(f"{w}x{h}" for w, h in SIZE_TABLE)
        problems.append(
            f"wavespeed: size={job.size} is not allowed (WaveSpeed takes an aspect ratio and a 1k/2k/4k "
            f"resolution, not pixels); allowed values: auto, {sizes}"
        )
    if job.quality.value not in QUALITIES:
        problems.append(
            f"wavespeed: quality={job.quality.value} is not allowed; allowed values: {', '.join(QUALITIES)}"
        )
    if job.output_format.value not in formats:
        problems.append(
            f"wavespeed: output_format={job.output_format.value} is not allowed; "
            f"allowed values: {', '.join(formats)}"
        )
    if job.background is Background.transparent:
        problems.append(
            "wavespeed: background=transparent is not supported by openai/gpt-image-2/edit on WaveSpeed (it has "
            "no background parameter; outputs are opaque); allowed values: auto, opaque"
        )
    return problems


def edit_body(job: EditJob, inputs: pt.InputUrls) -> dict[str, Any]:
    """Canonical job -> the JSON body of `POST /api/v3/openai/gpt-image-2/edit`."""
    if inputs.mask:
        raise ValueError("wavespeed: a masked job cannot be sent (validate() refuses it)")
    body: dict[str, Any] = {"images": list(inputs.images), "prompt": job.prompt}
    dims = parse_size(job.size)
    if dims is None:
        body["resolution"] = DEFAULT_RESOLUTION
    else:
        aspect, resolution = SIZE_TABLE[dims]
        body["aspect_ratio"] = aspect
        body["resolution"] = resolution
    body["quality"] = job.quality.value
    body["output_format"] = job.output_format.value
    return body


def http_error(answer: pt.Answer, what: str) -> ProviderError:
    """An answer other than HTTP 200: the status table, with WaveSpeed's `message` as the reason."""
    body = answer.json
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message) if message else (str(body)[:500] if isinstance(body, dict) else answer.text[:500])
    code = body.get("code") if isinstance(body, dict) else None
    return ProviderError(
        kind_for_status(answer.status),
        f"wavespeed {what}: HTTP {answer.status}: {text}",
        status_code=answer.status,
        provider_code=str(code) if code is not None else None,
        retry_after_s=parse_retry_after(answer.headers),
    )


def envelope_error(code: int, envelope: dict[str, Any], what: str) -> ProviderError:
    """HTTP 200 whose envelope `code` says otherwise."""
    kind = kind_for_status(code) if 400 <= code < 600 else ErrorKind.unknown
    message = envelope.get("message") or envelope
    return ProviderError(kind, f"wavespeed {what}: code {code}: {str(message)[:500]}", provider_code=str(code))


def parse_submit(answer: pt.Answer) -> pt.Submitted:
    if answer.status != 200:  # as the official SDK: anything but 200 is an error
        raise http_error(answer, "submit")
    envelope = answer.obj
    code = envelope.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and code != 200:
        raise envelope_error(code, envelope, "submit")
    data = envelope.get("data")
    rid = data.get("id") if isinstance(data, dict) else None
    if not rid or not isinstance(rid, (str, int)) or isinstance(rid, bool):
        # HTTP 200 without an id: the task may exist and be billed, but we cannot follow it
        shown = answer.json if answer.json is not None else answer.text
        raise pt.malformed(NAME, "submit", f"no data.id in {str(shown)[:300]}", maybe_billed=True)
    return pt.Submitted(request_id=str(rid), handle={"id": str(rid)})


def parse_result(answer: pt.Answer) -> pt.Outcome:
    if answer.status != 200:
        err = http_error(answer, "result")
        if answer.status == 404:
            return pt.Outcome.failed(err)
        raise err
    envelope = answer.json
    if not isinstance(envelope, dict):
        raise pt.malformed(NAME, "result", f"not a JSON object: {answer.text[:200]}")
    code = envelope.get("code")
    if isinstance(code, int) and not isinstance(code, bool) and code != 200:
        err = envelope_error(code, envelope, "result")
        if err.kind is ErrorKind.retryable:
            raise err
        return pt.Outcome.failed(err)
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise pt.malformed(NAME, "result", f"no data object in {str(envelope)[:200]}")
    return task_outcome(data)


def task_outcome(data: dict[str, Any]) -> pt.Outcome:
    """A task's `data` object (the result's, or a webhook body) -> its outcome."""
    status = data.get("status")
    if status == "completed":
        outputs = data.get("outputs") or []
        if not isinstance(outputs, list):
            raise pt.malformed(NAME, "result", "outputs is not a list")
        refs = [pt.OutputRef(url=u) for u in outputs if isinstance(u, str) and u]
        raw: dict[str, Any] = {k: data[k] for k in ("id", "model", "timings", "has_nsfw_contents", "created_at",
                                                    "executionTime") if k in data}
        return pt.Outcome.succeeded(pt.Result(outputs=refs, raw=raw))
    if status in ("failed", "cancelled", "deleted", "timeout"):
        error = str(data.get("error") or f"task {status}")
        if status == "timeout" or (status == "failed" and RETRYABLE_TEXT.search(error)
                                   and not TERMINAL_TEXT.search(error)):
            kind = ErrorKind.retryable
        else:
            kind = ErrorKind.terminal
        return pt.Outcome.failed(ProviderError(kind, f"wavespeed: task {status}: {error}"[:2000], provider_code=status))
    return pt.Outcome.running(status=status)


def secret_key(secret: str) -> bytes:
    """WaveSpeed: the text after `whsec_` is the key as UTF-8 bytes (not base64-decoded)."""
    return secret.removeprefix("whsec_").encode("utf-8")


def v3_signatures(header: str) -> list[str]:
    out = []
    for part in header.split():
        version, _, sig = part.partition(",")
        if version == "v3" and sig:
            out.append(sig.strip().lower())
    return out


def signature_matches(key: bytes, message: bytes, given: list[str]) -> bool:
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, sig) for sig in given)


def find_secret(body: Any) -> str | None:
    """The secret endpoint's shape is undocumented: accept the envelope or a bare object, any usual key."""
    if isinstance(body, str) and body.startswith("whsec_"):
        return body
    if not isinstance(body, dict):
        return None
    data = body.get("data", body)
    if isinstance(data, str):
        return data or None
    if isinstance(data, dict):
        for key in ("secret", "webhook_secret", "key"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def parse_secret(answer: pt.Answer) -> str | None:
    """The secret endpoint's answer -> the secret, or None (the old key is kept)."""
    if answer.status != 200:
        return None
    return find_secret(answer.json) or None


# ---- the protocol ----------------------------------------------------------------------------------------
class WaveSpeedProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = WaveSpeedSettings
    settings: WaveSpeedSettings

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        # refetched on a mismatch: the secret may have been rotated
        self._secret = WebhookSecret(secret_key, min_refresh_s=SECRET_MIN_REFRESH_S)

    def validate(self, job: EditJob) -> list[str]:
        return validate(job, self.settings.allowed_formats())

    def build_request(self, job: EditJob, inputs: pt.InputUrls, webhook_url: str | None) -> pt.ProviderRequest:
        params = {"webhook": webhook_url} if webhook_url else {}
        return pt.ProviderRequest("POST", f"/api/v3/{MODEL}", json=edit_body(job, inputs), params=params, what="submit")

    async def submit(self, client: ProviderClient, job: EditJob, req: pt.ProviderRequest) -> pt.Submitted:
        return parse_submit(await client.send(req))

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> pt.Outcome:
        return parse_result(await client.send(
            pt.ProviderRequest("GET", f"/api/v3/predictions/{request_id}/result", what="result")))

    async def webhook_outcome(self, client: ProviderClient, event: pt.WebhookEvent,
                              handle: dict[str, Any]) -> pt.Outcome:
        outcome = task_outcome(event.payload)
        if outcome.done:
            return outcome
        return await self.poll(client, event.request_id, handle)  # an intermediate event: ask for the truth

    async def verify_webhook(
        self, client: ProviderClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> pt.WebhookEvent:
        msg_id, message, sig_header = webhook_headers(headers, body, now=now, tolerance_s=WEBHOOK_MAX_AGE_S)
        given = v3_signatures(sig_header)
        if not given:
            raise WebhookRejected("no v3 signature")
        if not await self._secret.verify(self.settings.webhook_secret, lambda: self._fetch_secret(client),
                                         lambda key: signature_matches(key, message, given), now):
            raise WebhookRejected("signature does not match")
        payload = webhook_json(body)
        rid = payload.get("id") if isinstance(payload, dict) else None
        if not rid:
            raise WebhookMalformed("body has no id")
        return pt.WebhookEvent(delivery_id=msg_id, request_id=str(rid), payload=payload)

    async def prepare_webhooks(self, client: ProviderClient) -> None:
        if self.settings.webhook_secret is None and self.settings.api_key is not None and self._secret.key is None:
            await self._secret.load(lambda: self._fetch_secret(client), time.time())

    async def _fetch_secret(self, client: ProviderClient) -> str | None:
        return await fetch_key(client, pt.ProviderRequest("GET", "/api/v3/webhook/secret", timeout_s=SECRET_TIMEOUT_S,
                                                          what="webhook secret"), parse_secret)
