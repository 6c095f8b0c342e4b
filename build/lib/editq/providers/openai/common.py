"""Pure helpers shared by the OpenAI protocols (`openai` = sync `/v1/images/edits`, `openai_batch` = Batch).

Facts: shared/reference/provider-openai.md §1 (edit fields), §3 (errors, rate limits), §4 (prices).
Everything here is pure (no I/O, no clock, no settings lookups) so both protocols and their tests can
use it directly:

* `resolve_model(job_model)`             canonical model id -> OpenAI model id (or None if not supported)
* `validate_edit(job, provider=...)`     OpenAI's edit rules as messages naming provider, field, allowed values
* `edit_fields(job)`                     the scalar edit parameters (model, prompt, n, size, quality, ...)
* `json_edit_body(job, urls)`            the JSON edit form (`images:[{image_url}]`, `mask:{image_url}`) — Batch lines
* `multipart_form(fields, images, mask)` the multipart form (`image[]` parts, each with an explicit image type) — sync
* `answer_error(answer, provider, what)` an OpenAI non-2xx `Answer` -> `ProviderError` (the policy's status table,
                                         refined by OpenAI's error code: quota, moderation, rate limits)
* `classify_error(status, body, headers)` the same from its parts
* `classify_code(code, type_, message)`  the same for an error that has no HTTP status (a Batch output/error line)
* `TokenPrices` + `usage_and_cost(usage)` OpenAI `usage` -> `schemas.manifest.Usage` with a token-priced cost
* `OpenAIPriceSettings`                  settings base with `price_*` fields (USD per 1M tokens) -> `TokenPrices`

Choices where the sources are silent or disagree (safe for the user's money and data):
* `background=transparent` is refused for gpt-image-2: it was rejected at launch and is only "in preview" since
  2026-08-20 (§1.1); a silently opaque output would be paid for and useless.
* `size` is always sent (the multipart schema defaults to 1024x1024, the JSON schema to auto) and so is
  `background`; `input_fidelity` and `moderation` are never sent (gpt-image-2 ignores the first, the second is
  undocumented for multipart).
* Multipart images always go out as repeated `image[]` parts, even a single one (the API accepts both spellings),
  each with an explicit `image/png|jpeg|webp` content type: `application/octet-stream` is refused by OpenAI.
* The mask must be a PNG with the first image's exact dimensions and under 4 MB (checked at enqueue from the
  InputRecords); whether it has an alpha channel can only be seen in its bytes (`providers.masks.mask_alpha_problem`).
* `insufficient_quota` is a 429 but terminal; `rate_limit_exceeded` is retryable with the wait from
  `retry-after-ms` / `retry-after`, else from the message's "Please try again in 240ms / 1.5s".
* Usage without a text/image split is priced entirely at the (higher) image-input rate, so a cost is never
  under-reported; cached input tokens, when reported, are priced at the cached rates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from editq.providers.pricing import IMAGE_IN_PER_M, TEXT_IN_PER_M, TablePriceSettings
from editq.providers.types import Answer
from editq.schemas.job import EditJob
from editq.schemas.manifest import Usage
from editq.schemas.params import Background, parse_size, size_problems
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.policy import kind_for_status, parse_retry_after

# ---- models and limits ---------------------------------------------------------------------------
# Canonical (fal-style) ids a job may carry -> the OpenAI model id. Only the gpt-image-2 family is
# supported: its size rules are the canonical ones and the older models are shut down or differ.
MODEL_ALIASES: dict[str, str] = {
    "openai/gpt-image-2/edit": "gpt-image-2",
    "openai/gpt-image-2": "gpt-image-2",
    "gpt-image-2": "gpt-image-2",
    "gpt-image-2-2026-04-21": "gpt-image-2-2026-04-21",
}
MAX_IMAGES = 16
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_MASK_BYTES = 4 * 1024 * 1024
MAX_N = 10
MAX_PROMPT_CHARS = 32_000
STANDARD_SIZES = ("1024x1024", "1536x1024", "1024x1536")
QUALITIES = ("auto", "low", "medium", "high")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("auto", "opaque")  # transparent: refused for gpt-image-2 (see module docstring)
# PIL format name (InputRecord.format, any case) -> the content type OpenAI accepts for an input part
INPUT_CONTENT_TYPES: dict[str, str] = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
INPUT_EXT: dict[str, str] = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}

FilePart = tuple[str, tuple[str, bytes, str]]  # (field name, (filename, bytes, content type)) as httpx takes it


def resolve_model(model: str) -> str | None:
    """The OpenAI model id for a job's `model`, or None when this family does not serve it."""
    return MODEL_ALIASES.get(model.strip())


# ---- validation ------------------------------------------------------------------------------------
def validate_edit(job: EditJob, provider: str = "openai") -> list[str]:
    """OpenAI `/images/edits` rules for gpt-image-2, checked at enqueue. Each message names the provider,
    the field and what is allowed; an empty list means the job fits."""
    p: list[str] = []
    if resolve_model(job.model) is None:
        allowed = ", ".join(sorted(MODEL_ALIASES))
        p.append(f"{provider}: model={job.model} is not allowed; allowed values: {allowed}")
    if not 1 <= len(job.inputs) <= MAX_IMAGES:
        p.append(f"{provider}: images has {len(job.inputs)} entries; allowed: 1 to {MAX_IMAGES}")
    for i, rec in enumerate(job.inputs):
        if rec.format.upper() not in INPUT_CONTENT_TYPES:
            p.append(f"{provider}: images[{i}] is {rec.format.lower()}; allowed formats: png, jpeg, webp")
        if rec.bytes >= MAX_IMAGE_BYTES:
            p.append(f"{provider}: images[{i}] is {rec.bytes} bytes; allowed: under {MAX_IMAGE_BYTES} bytes (50 MB)")
    if job.mask_input is not None:
        m = job.mask_input
        if m.format.upper() != "PNG":
            p.append(f"{provider}: mask is {m.format.lower()}; allowed format: png (with an alpha channel)")
        if m.bytes >= MAX_MASK_BYTES:
            p.append(f"{provider}: mask is {m.bytes} bytes; allowed: under {MAX_MASK_BYTES} bytes (4 MB)")
        if job.inputs and (m.width, m.height) != (job.inputs[0].width, job.inputs[0].height):
            first = job.inputs[0]
            p.append(
                f"{provider}: mask is {m.width}x{m.height}; allowed: the first image's size "
                f"{first.width}x{first.height}"
            )
    if len(job.prompt) > MAX_PROMPT_CHARS:
        p.append(f"{provider}: prompt has {len(job.prompt)} characters; allowed: 1 to {MAX_PROMPT_CHARS}")
    if not 1 <= job.num_images <= MAX_N:
        p.append(f"{provider}: num_images={job.num_images} is not allowed; allowed values: 1 to {MAX_N}")
    dims = parse_size(job.size)
    if dims is not None:
        bad = size_problems(*dims)
        if bad:
            p.append(
                f"{provider}: size={job.size} is not allowed ({'; '.join(bad)}); allowed: auto, "
                f"{', '.join(STANDARD_SIZES)}, or a custom WxH within those rules"
            )
    if job.quality.value not in QUALITIES:
        p.append(f"{provider}: quality={job.quality.value} is not allowed; allowed values: {', '.join(QUALITIES)}")
    if job.output_format.value not in OUTPUT_FORMATS:
        p.append(
            f"{provider}: output_format={job.output_format.value} is not allowed; "
            f"allowed values: {', '.join(OUTPUT_FORMATS)}"
        )
    if job.background is Background.transparent:
        p.append(
            f"{provider}: background=transparent is not allowed for gpt-image-2 (OpenAI rejected it at launch and "
            f"lists it only as a preview since 2026-08); allowed values: {', '.join(BACKGROUNDS)}"
        )
    return p


# ---- translation --------------------------------------------------------------------------------------
def edit_fields(job: EditJob) -> dict[str, Any]:
    """The scalar parameters of an edit, typed as JSON wants them (n is an int)."""
    return {
        "model": resolve_model(job.model) or job.model,
        "prompt": job.prompt,
        "n": job.num_images,
        "size": job.size,
        "quality": job.quality.value,
        "background": job.background.value,
        "output_format": job.output_format.value,
    }


def json_edit_body(job: EditJob, image_urls: Sequence[str], mask_url: str | None) -> dict[str, Any]:
    """The JSON form of `/v1/images/edits` (what a Batch line's `body` holds).

    `image_urls` are https URLs or `data:image/...;base64,` URIs, in job order; the mask applies to the first.
    """
    body = edit_fields(job)
    body["images"] = [{"image_url": u} for u in image_urls]
    if mask_url:
        body["mask"] = {"image_url": mask_url}
    return body


def multipart_form(
    fields: Mapping[str, Any],
    images: Sequence[tuple[bytes, str]],
    mask: bytes | None,
) -> tuple[dict[str, str], list[FilePart]]:
    """The multipart form of `/v1/images/edits`: (form fields, file parts) as `httpx` takes them.

    `images` are (bytes, format name such as InputRecord.format, any case) in job order; each becomes
    an `image[]` part named `image_<i>.<ext>` with its image content type. The mask goes out as
    `mask` (`mask.png`, image/png).
    """
    data = {k: str(v) for k, v in fields.items() if v is not None and k not in ("images", "mask")}
    files: list[FilePart] = []
    for i, (blob, fmt) in enumerate(images):
        ctype = INPUT_CONTENT_TYPES.get(fmt.upper())
        if ctype is None:
            raise ValueError(f"images[{i}] has format {fmt.lower()}; allowed formats: png, jpeg, webp")
        files.append(("image[]", (f"image_{i}.{INPUT_EXT[fmt.upper()]}", blob, ctype)))
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return data, files


# ---- errors ------------------------------------------------------------------------------------------
TERMINAL_CODES = frozenset({
    "moderation_blocked", "content_policy_violation", "insufficient_quota", "invalid_api_key",
    "model_not_found", "invalid_image_file", "invalid_image", "invalid_request_error", "billing_hard_limit_reached",
    "account_deactivated", "unsupported_file_mimetype", "image_too_large",
})
RETRYABLE_CODES = frozenset({"rate_limit_exceeded", "server_error", "server_is_overloaded", "slow_down", "timeout"})
_TRY_AGAIN = re.compile(r"try again in (\d+(?:\.\d+)?)\s*(ms|s)\b", re.IGNORECASE)


def error_parts(body: Any) -> tuple[str, str | None, str | None, str | None]:
    """(message, type, code, param) from an OpenAI error envelope, or from whatever the body is."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            msg = err.get("message")
            return (
                str(msg) if msg is not None else str(dict(err))[:500],
                _opt_str(err.get("type")),
                _opt_str(err.get("code")),
                _opt_str(err.get("param")),
            )
        if isinstance(err, str):
            return err, None, None, None
    return (body if isinstance(body, str) else repr(body))[:500], None, None, None


def wait_from_message(message: str) -> float | None:
    """Seconds from OpenAI's 'Please try again in 240ms' / '1.5s' wording, if present."""
    m = _TRY_AGAIN.search(message)
    if not m:
        return None
    value = float(m.group(1))
    return value / 1000 if m.group(2).lower() == "ms" else value


MODERATION_CODES = frozenset({"moderation_blocked", "content_policy_violation"})


def moderation_stage(body: Any) -> str | None:
    """`moderation_details.moderation_stage` ('input' or 'output') of an error envelope, if it says."""
    err = body.get("error", body) if isinstance(body, Mapping) else None
    details = err.get("moderation_details") if isinstance(err, Mapping) else None
    stage = details.get("moderation_stage") if isinstance(details, Mapping) else None
    return stage if stage in ("input", "output") else None


def classify_code(
    code: str | None, type_: str | None, message: str, *, status: int | None = None, provider: str = "openai",
    what: str = "edit", stage: str | None = None,
) -> ProviderError:
    """Classify an OpenAI error by its code/type (and HTTP status when there is one)."""
    label = code or type_
    reason = f"{provider} {what}: " + (f"HTTP {status}: " if status else "") + (f"{label}: " if label else "")
    reason += message
    if code in ("moderation_blocked", "content_policy_violation") or type_ == "image_generation_user_error":
        kind = ErrorKind.terminal
    elif code == "insufficient_quota" or type_ == "insufficient_quota":
        kind = ErrorKind.terminal  # a 429 that waiting cannot fix
    elif code in RETRYABLE_CODES or type_ in ("server_error",):
        kind = ErrorKind.retryable
    elif code in TERMINAL_CODES:
        kind = ErrorKind.terminal
    elif status is not None:
        kind = kind_for_status(status)  # the one status table (worker/policy.py)
    elif type_ == "invalid_request_error":
        kind = ErrorKind.terminal
    else:
        kind = ErrorKind.unknown
    retry_after = wait_from_message(message) if kind is ErrorKind.retryable else None
    moderated = code in MODERATION_CODES or type_ == "image_generation_user_error"
    return ProviderError(kind, reason[:2000], status_code=status, provider_code=label, retry_after_s=retry_after,
                         moderation=(stage or "unknown") if moderated else None)


def classify_error(
    status: int, body: Any, headers: Mapping[str, str] | None = None, *, provider: str = "openai",
    what: str = "edit",
) -> ProviderError:
    """An OpenAI non-2xx answer -> ProviderError. Secrets are redacted by ProviderError itself (worker/redact.py)."""
    message, type_, code, param = error_parts(body)
    if param and f"'{param}'" not in message and param not in message:
        message = f"{message} (param: {param})"
    err = classify_code(code, type_, message, status=status, provider=provider, what=what,
                        stage=moderation_stage(body))
    header_wait = parse_retry_after(headers or {})
    if err.kind is ErrorKind.retryable and header_wait is not None:
        err.retry_after_s = header_wait
    if status in (502, 504):
        err.maybe_billed = True  # a gateway gave up; the model may have run (and been billed) behind it
    return err


def answer_error(answer: Answer, provider: str, what: str = "edit") -> ProviderError:
    """A non-2xx `Answer` -> ProviderError (its JSON body, else its first 500 characters of text)."""
    body = answer.json if answer.json is not None else answer.text[:500]
    return classify_error(answer.status, body, answer.headers, provider=provider, what=what)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


# ---- pricing -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenPrices:
    """USD per 1M tokens (gpt-image-2 defaults, §4). `multiplier` scales everything (Batch: 0.5)."""

    text_in: float = TEXT_IN_PER_M
    text_in_cached: float = 1.25
    text_out: float = 10.0
    image_in: float = IMAGE_IN_PER_M
    image_in_cached: float = 2.0
    image_out: float = 30.0
    multiplier: float = 1.0


class OpenAIPriceSettings(TablePriceSettings):
    """Price fields for an OpenAI protocol's settings class (subclass it and set the env prefix):
    `EDITQ_OPENAI_PRICE_IMAGE_OUT=30` etc., USD per 1M tokens (text and image input, the per-image table for
    estimates: providers/pricing.py)."""

    price_text_in_cached: float = TokenPrices.text_in_cached
    price_text_out: float = TokenPrices.text_out
    price_image_in_cached: float = TokenPrices.image_in_cached
    price_image_out: float = TokenPrices.image_out

    def token_prices(self, multiplier: float = 1.0) -> TokenPrices:
        return TokenPrices(
            text_in=self.price_text_in, text_in_cached=self.price_text_in_cached, text_out=self.price_text_out,
            image_in=self.price_image_in, image_in_cached=self.price_image_in_cached,
            image_out=self.price_image_out, multiplier=multiplier,
        )


def usage_and_cost(usage: Mapping[str, Any] | None, prices: TokenPrices) -> Usage | None:
    """OpenAI `ImagesResponse.usage` -> Usage with `cost_usd` computed from tokens (`cost_source='tokens'`)."""
    if not usage:
        return None
    inp = _int(usage.get("input_tokens"))
    out = _int(usage.get("output_tokens"))
    total = _int(usage.get("total_tokens"))
    ind = usage.get("input_tokens_details") or {}
    outd = usage.get("output_tokens_details") or {}
    in_text, in_image = _int(ind.get("text_tokens")), _int(ind.get("image_tokens"))
    out_text, out_image = _int(outd.get("text_tokens")), _int(outd.get("image_tokens"))
    cached = _int(ind.get("cached_tokens")) or 0
    cached_d = ind.get("cached_tokens_details") or {}
    cached_text, cached_image = _int(cached_d.get("text_tokens")), _int(cached_d.get("image_tokens"))

    cost = 0.0
    if in_text is None and in_image is None:
        cost += (inp or 0) * prices.image_in  # no split reported: price at the higher rate
    else:
        if cached_text is None and cached_image is None and cached:
            # cached total without a split: take it from image tokens first (the cheaper discount)
            cached_image = min(cached, in_image or 0)
            cached_text = min(cached - cached_image, in_text or 0)
        ct, ci = cached_text or 0, cached_image or 0
        cost += max(0, (in_text or 0) - ct) * prices.text_in + ct * prices.text_in_cached
        cost += max(0, (in_image or 0) - ci) * prices.image_in + ci * prices.image_in_cached
    if out_text is None and out_image is None:
        cost += (out or 0) * prices.image_out  # images are what an edit outputs
    else:
        cost += (out_text or 0) * prices.text_out + (out_image or 0) * prices.image_out
    cost = cost * prices.multiplier / 1_000_000
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        total_tokens=total if total is not None else (None if inp is None and out is None else (inp or 0) + (out or 0)),
        input_image_tokens=in_image,
        input_text_tokens=in_text,
        output_image_tokens=out_image if out_image is not None else (out if out_text is None else None),
        cost_usd=round(cost, 6),
        cost_source="tokens",
    )


def _int(v: Any) -> int | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None
