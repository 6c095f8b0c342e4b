"""Oxen.ai hub AI API, synchronous `POST /api/ai/images/edit` (facts: provider-replicate-wavespeed-oxen.md §6).

Protocol: one JSON request per job, Bearer auth, base `https://hub.oxen.ai/api/ai`. The request
blocks until the edit is done; the answer is `{"model", "created", "images": [{"url"} | {"b64_json"}]}`
(URLs are temporary: the pipeline stores them in S3 right away). No job id, no webhooks, no polling,
no cancel, no usage or cost in the answer. Errors come as
`{"error": {"type", "title", "detail"}, "status": "error", "status_message"}` or `{"error": {"message"}}`.

Model and fields: the current Oxen page for GPT Image 2 (model id `gpt-image-2`, since Jul 2026)
takes `prompt`, `input_image` (array of URLs), `mask_url`, `aspect_ratio` (auto, 1:1, 16:9, 9:16, 4:3,
3:4, 3:2, 2:3, 21:9, 9:21), `resolution` (1K, 2K, 4K), `quality` (low, medium, high),
`output_format` (png, jpeg, webp), plus the common `response_format` and `target_namespace`. The
older `gpt-image-2-edit` id (with `num_images`, pixel `resolution`s) was removed from the docs; the
model id is configurable (`EDITQ_OXEN_MODEL`) in case Oxen renames it again.

Choices where the sources are silent or conflict (safe for the user's money and data):
* No `num_images`: a job asking for more than one image is refused at enqueue (not fanned out).
* No pixel sizes: `size=auto` sends `aspect_ratio=auto` (the first image's shape) and the
  resolution tier `EDITQ_OXEN_RESOLUTION` (default 1K, the cheapest; Oxen's own default is 2K).
  A `WxH` size is refused unless `EDITQ_OXEN_SIZE_MAPPING=1` asks for mapping, and then only when
  W:H is exactly one of Oxen's ratios (tier by the longest edge: <=1536 1K, <=2560 2K, else 4K).
* `quality=auto` is refused (Oxen has low/medium/high only); `background=transparent` is refused
  (there is no background parameter).
* Mask convention: Oxen documents `mask_url` as white = edit, black = keep, the opposite of the
  canonical (OpenAI) convention, alpha 0 = edit. `submit` converts the mask (alpha 0 -> white,
  anything else -> black), stores it content-addressed in S3 and sends its presigned URL. The mask
  must be a PNG with an alpha channel and the first image's size. The storage reads and writes go
  through `OxenProtocol.masks` (a `MaskStore`; by default the engine's
  `worker/provider_inputs.py:StorageMasks`, editq's S3), so this module stays free of storage and network code.
* The edit call holds the connection for the whole edit: `timeout_s` (300 s) for the answer,
  `connect_timeout_s` (10 s) to connect. The client maps the failures: one to connect is `not sent`;
  a timeout or a dropped connection after sending is `maybe_billed` (the pipeline records an
  `uncertain` request), as for OpenAI's synchronous API. A 2xx answer that is not a JSON object is
  malformed and `maybe_billed` (the edit ran). Input-download failures reported by Oxen
  ("403 Client Error ... for url") are `unknown` (retried once with freshly presigned URLs).
* Output URLs are downloaded without the API key (they are presigned; the key never leaves for
  another host).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from editq.providers.masks import mask_alpha_problem
from editq.providers.oxen import OxenSettings
from editq.providers.protocol import ProviderProtocol, engine_service
from editq.providers.signatures import lost_sync_answer
from editq.providers.spec import ProviderSettings
from editq.providers.types import Answer, InputUrls, Outcome, OutputRef, ProviderRequest, Result, Submitted, malformed
from editq.schemas.job import EditJob, InputRecord
from editq.schemas.params import Background, parse_size
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.policy import parse_retry_after

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "oxen"
EDIT_PATH = "/images/edit"
MODEL_ALIASES = ("openai/gpt-image-2/edit", "openai/gpt-image-2", "gpt-image-2")
ASPECT_RATIOS = ("auto", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
RESOLUTIONS = ("1K", "2K", "4K")
QUALITIES = ("low", "medium", "high")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
INPUT_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGES = 16


ENGINE_MASKS = "editq.worker.provider_inputs:StorageMasks"  # the engine's MaskStore (our S3)

class MaskStore(Protocol):
    """Where the converted mask is kept so Oxen can fetch it (editq's S3 in production)."""

    async def read(self, rec: InputRecord) -> bytes:
        """The canonical mask's bytes; raises ProviderError (retryable) when storage fails."""
        ...

    async def put_png(self, data: bytes, sha256: str) -> str:
        """Store `data` content-addressed (once) and answer a URL Oxen can download; raises ProviderError."""
        ...


# ---- pure translation and parsing ----------------------------------------------------------------------
def aspect_and_tier(width: int, height: int) -> tuple[str, str] | None:
    """(aspect_ratio, resolution) for a WxH whose ratio is exactly one of Oxen's, else None."""
    g = math.gcd(width, height)
    ratio = f"{width // g}:{height // g}"
    if ratio not in ASPECT_RATIOS:
        return None
    edge = max(width, height)
    return ratio, "1K" if edge <= 1536 else "2K" if edge <= 2560 else "4K"


def validate(job: EditJob, settings: OxenSettings) -> list[str]:
    p: list[str] = []
    if job.model not in MODEL_ALIASES:
        p.append(f"oxen: model={job.model} is not allowed; allowed values: {', '.join(MODEL_ALIASES)} "
                 f"(sent to Oxen as {settings.model})")
    if job.num_images != 1:
        p.append(f"oxen: num_images={job.num_images} is not allowed; allowed values: 1")
    dims = parse_size(job.size)
    if dims is not None:
        if not settings.size_mapping:
            p.append(f"oxen: size={job.size} is not allowed; allowed values: auto (Oxen's gpt-image-2 takes an "
                     "aspect ratio and a 1K/2K/4K tier, not pixels; EDITQ_OXEN_SIZE_MAPPING=1 maps WxH sizes "
                     "whose ratio is one of Oxen's)")
        elif aspect_and_tier(*dims) is None:
            p.append(f"oxen: size={job.size} is not allowed; allowed values: auto, or WxH with a ratio of "
                     f"{', '.join(ASPECT_RATIOS[1:])}")
    if job.quality.value not in QUALITIES:
        p.append(f"oxen: quality={job.quality.value} is not allowed; allowed values: {', '.join(QUALITIES)}")
    if job.output_format.value not in OUTPUT_FORMATS:
        p.append(f"oxen: output_format={job.output_format.value} is not allowed; allowed values: "
                 f"{', '.join(OUTPUT_FORMATS)}")
    if job.background is Background.transparent:
        p.append("oxen: background=transparent is not allowed (Oxen's gpt-image-2 has no background parameter); "
                 "allowed values: auto, opaque")
    if len(job.inputs) > MAX_IMAGES:
        p.append(f"oxen: images has {len(job.inputs)} entries; allowed: 1 to {MAX_IMAGES}")
    for i, rec in enumerate(job.inputs):
        if rec.format.upper() not in INPUT_FORMATS:
            p.append(f"oxen: images[{i}] is {rec.format.lower()}; allowed formats: png, jpeg, webp")
    if job.mask_input is not None:
        m = job.mask_input
        if m.format.upper() != "PNG":
            p.append(f"oxen: mask is {m.format.lower()}; allowed format: png (with an alpha channel, "
                     "transparent = edit)")
        if job.inputs and (m.width, m.height) != (job.inputs[0].width, job.inputs[0].height):
            first = job.inputs[0]
            p.append(f"oxen: mask is {m.width}x{m.height}; allowed: the first image's size "
                     f"{first.width}x{first.height}")
    return p


def edit_body(job: EditJob, inputs: InputUrls, settings: OxenSettings) -> dict[str, Any]:
    """The JSON body. With a mask, `submit` replaces `mask_url` by the converted (white = edit) mask."""
    dims = parse_size(job.size)
    mapped = ("auto", settings.resolution) if dims is None else aspect_and_tier(*dims)
    body: dict[str, Any] = {
        "model": settings.model,
        "prompt": job.prompt,
        "input_image": list(inputs.images),
    }
    if mapped is not None:  # else validate() refused it at enqueue, and submit refuses it: never guess
        body["aspect_ratio"], body["resolution"] = mapped
    body |= {
        "quality": job.quality.value,
        "output_format": job.output_format.value,
        "response_format": settings.response_format,
    }
    if inputs.mask:
        body["mask_url"] = inputs.mask
    if settings.target_namespace:
        body["target_namespace"] = settings.target_namespace
    return body


def white_is_edit(mask: bytes) -> bytes:
    """Canonical mask (alpha 0 = edit) -> an opaque grayscale PNG where white = edit, black = keep."""
    from PIL import Image

    with Image.open(io.BytesIO(mask)) as im:
        alpha = im.convert("RGBA").getchannel("A")
    out = alpha.point(lambda a: 255 if a == 0 else 0)
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


def converted_mask(rec: InputRecord, blob: bytes) -> bytes:
    """Check the stored canonical mask and convert it to Oxen's convention; raises ProviderError (terminal)."""
    if hashlib.sha256(blob).hexdigest() != rec.sha256:
        raise ProviderError(ErrorKind.terminal, f"oxen: mask {rec.s3_key} does not match its sha256")
    if problem := mask_alpha_problem(blob, NAME):
        raise ProviderError(ErrorKind.terminal, problem, provider_code="invalid_mask")
    return white_is_edit(blob)


_TRANSIENT_FETCH = re.compile(r"timeout|timed out|connect|\b5\d\d\b")


def classify_oxen_error(status: int, body: Any, headers: Mapping[str, str], *, request_id: str = "") -> ProviderError:
    """An Oxen error answer -> ProviderError (pure; secrets are redacted by ProviderError itself)."""
    etype: str | None = None
    message = body if isinstance(body, str) else repr(body)[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        etype = err.get("type") or body.get("status_message")
        parts = [str(err[k]) for k in ("title", "detail", "message") if err.get(k)]
        message = ": ".join(parts) or message
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    lowered = message.lower()
    kind: ErrorKind
    if "insufficient credits" in lowered or status == 402 or etype in ("insufficient_credits",):
        kind = ErrorKind.terminal
    elif status == 429 or status >= 500:
        kind = ErrorKind.retryable
    elif "client error" in lowered and "for url" in lowered:
        # Oxen could not download an input. Inputs are editq's own presigned URLs, checked at enqueue: a timeout,
        # a lost connection or a 5xx is our storage being unreachable (a 60 s S3 outage failed 13 jobs of a
        # chaos run), retried like any outage; a 4xx (an expired presign?) is retried once, freshly presigned
        transient = _TRANSIENT_FETCH.search(lowered.split(" for url", 1)[0])
        kind = ErrorKind.retryable if transient else ErrorKind.unknown
    elif status in (400, 401, 403, 404, 405, 413, 415, 422):
        kind = ErrorKind.terminal
    else:
        kind = ErrorKind.unknown
    reason = f"oxen edit: HTTP {status}: " + (f"{etype}: " if etype else "") + message
    if request_id:
        reason += f" (request {request_id})"
    return ProviderError(
        kind, reason[:2000], status_code=status, provider_code=etype if isinstance(etype, str) else None,
        retry_after_s=parse_retry_after(headers) if kind is ErrorKind.retryable else None,
        maybe_billed=status in (502, 504),
    )


def answer_error(answer: Answer, request_id: str) -> ProviderError:
    body = answer.json if answer.json is not None else answer.text[:500]
    return classify_oxen_error(answer.status, body, answer.headers, request_id=request_id)


def result_of(body: Mapping[str, Any], fmt: str) -> Result:
    outputs = []
    images = body.get("images") or []
    for item in images if isinstance(images, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("url"):
            outputs.append(OutputRef(url=item["url"], content_type=f"image/{fmt}"))
        elif item.get("b64_json"):
            outputs.append(OutputRef(b64=item["b64_json"], content_type=f"image/{fmt}"))
    raw = {k: v for k, v in body.items() if k != "images"}
    return Result(outputs=outputs, usage=None, raw=raw)


def parse_edit(answer: Answer, fmt: str, request_id: str | None = None) -> Submitted:
    """The edit call's answer -> a finished Submitted (Oxen answers the result at once); raises ProviderError."""
    rid = answer.headers.get("x-request-id") or request_id or f"oxen-{uuid.uuid4()}"
    if answer.status >= 300:
        raise answer_error(answer, rid)
    data = answer.json
    if not isinstance(data, dict):  # the edit ran (and was billed) but its answer cannot be read
        raise malformed(NAME, "edit", f"HTTP {answer.status} with a body that is not a JSON object: "
                        f"{answer.text[:200]}", maybe_billed=True)
    return Submitted(request_id=rid, handle={"sync": True, "created": data.get("created")},
                     outcome=Outcome.succeeded(result_of(data, fmt)))


# ---- the protocol ----------------------------------------------------------------------------------------
class OxenProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = OxenSettings
    settings: OxenSettings

    def __init__(self, settings: ProviderSettings | None = None, masks: MaskStore | None = None) -> None:
        super().__init__(settings)
        self._masks = masks

    @property
    def masks(self) -> MaskStore:
        if self._masks is None:
            self._masks = engine_service(ENGINE_MASKS)  # our storage, kept out of this module
        return self._masks

    def validate(self, job: EditJob) -> list[str]:
        return validate(job, self.settings)

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        return ProviderRequest("POST", EDIT_PATH, json=edit_body(job, inputs, self.settings),
                               timeout_s=self.settings.timeout_s, connect_timeout_s=self.settings.connect_timeout_s,
                               what="edit")

    async def submit(self, client: ProviderClient, job: EditJob, req: ProviderRequest) -> Submitted:
        body = dict(req.json or {})
        if "aspect_ratio" not in body:
            raise ProviderError(ErrorKind.terminal, f"oxen: size={job.size} has no Oxen aspect ratio; "
                                "allowed values: auto")
        if job.mask_input is not None and body.get("mask_url") and self.settings.convert_mask:
            body["mask_url"] = await self.converted_mask_url(job.mask_input)
        sent = replace(req, json=body, timeout_s=req.timeout_s or self.settings.timeout_s,
                       connect_timeout_s=req.connect_timeout_s or self.settings.connect_timeout_s)
        return parse_edit(await client.send(sent), job.output_format.value)

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        """Only reached when a worker died between recording the answer and handing it on."""
        return lost_sync_answer(self.name, request_id)

    async def converted_mask_url(self, rec: InputRecord) -> str:
        """Convert the canonical mask, store it content-addressed next to the inputs, answer its URL."""
        converted = converted_mask(rec, await self.masks.read(rec))
        return await self.masks.put_png(converted, hashlib.sha256(converted).hexdigest())
