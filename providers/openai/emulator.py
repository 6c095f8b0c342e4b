"""OpenAI's synchronous image-edit endpoint under ``/openai/v1`` (stands in for ``https://api.openai.com/v1``).

Route: ``POST /openai/v1/images/edits`` in either encoding the API accepts:

- ``multipart/form-data`` (what the official SDK sends): ``image`` or repeated ``image[]`` file parts
  (1-16, each ``image/png|jpeg|webp`` by its part Content-Type and by its bytes, under 50 MB), optional
  ``mask`` (PNG with an alpha channel, the first image's exact size, under 4 MB), ``model``, ``prompt``,
  ``n``, ``size``, ``quality``, ``background``, ``output_format``, ``output_compression``, ``moderation``,
  ``input_fidelity``, ``user``, ``safety_identifier``;
- ``application/json``: ``images: [{"image_url": url | data URI}]`` and ``mask: {"image_url": ...}``
  plus the same scalar fields (``file_id`` references are refused: this sandbox has no Files API here).

The request is held open for the whole edit, exactly like the real API: it waits in the runner's
queue under the ``concurrency`` cap, then takes ``latency_s + jitter``; the answer is an
``ImagesResponse`` (``created``, ``data[].b64_json``, ``background``, ``output_format``, ``quality``,
``size``, ``usage``) with an ``x-request-id`` header (also the id in ``/_sandbox/requests``).
Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``.

Strictness (refused with 400 ``invalid_request_error`` and the field as ``param``): in the JSON encoding,
a value of the wrong JSON type (``invalid_type``; an explicit null where OpenAI's schema allows it means
the default; see ``JSON_TYPES``), unknown fields,
a file part typed ``application/octet-stream`` (OpenAI's wording, see provider-openai.md §1.1), bytes
that are not the declared image type, more than 16 images, n outside 1-10, sizes outside the model's
rules (gpt-image-2: ``auto`` or WxH with sides multiple of 16, longest edge <= 3840, ratio <= 3:1,
655,360-8,294,400 pixels; gpt-image-1.5/1-mini: the three standard sizes), ``background=transparent``
on gpt-image-2 or with jpeg, ``output_compression`` with png, ``stream=true`` (not emulated),
``response_format`` (GPT image models do not take it). ``gpt-image-1``/``dall-e-*`` are shut down: 404
``model_not_found``. A missing ``model`` means ``gpt-image-1.5`` (the multipart schema's default).

Triggers for error paths (sandbox-only): a prompt containing ``sandbox:moderation`` is refused as
``moderation_blocked``; the key ``sk-sandbox-no-quota`` gets 429 ``insufficient_quota``; keys starting
``sk-invalid`` get 401 ``invalid_api_key``. Faults: ``submit_429_rate`` (429 ``rate_limit_exceeded``
with ``retry-after``), ``submit_5xx_rate`` (500 ``server_error``), ``submit_timeout_rate`` (held
``timeout_hold_s``, then a 504 gateway page), ``job_failure_rate`` (500 ``server_error`` after the latency).

Usage numbers are plausible, not OpenAI's: output image tokens per image scale with the pixel area
(1024x1024: low 196, medium 1756, high 7024; auto = medium); input image tokens are 85 + 170 per
512-px tile of each input; text tokens are ceil(len(prompt) / 4).

Reusable by other OpenAI emulators (e.g. Batch): :func:`params_from_json`, :func:`execute_edit`.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from editq.sandbox.engine import EngineError, render_edit_images, render_placeholder, sniff_image_type
from editq.sandbox.providers.common import InputFailed, bearer_key, fetch_inputs, kept_headers, submit_fault
from editq.sandbox.runner import Job, JobOutcome, ProviderAdapter
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "openai"
PREFIX = "/openai/v1"

MAX_IMAGES = 16
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_MASK_BYTES = 4 * 1024 * 1024
MAX_PROMPT = 32_000
STANDARD_SIZES = ("1024x1024", "1536x1024", "1024x1536")
FLEXIBLE_MODELS = frozenset({"gpt-image-2", "gpt-image-2-2026-04-21"})
FIXED_MODELS = frozenset({"gpt-image-1.5", "gpt-image-1-mini"})
RETIRED_MODELS = frozenset({"gpt-image-1", "dall-e-2", "dall-e-3"})
DEFAULT_MODEL = "gpt-image-1.5"
QUALITIES = ("low", "medium", "high", "auto")
BACKGROUNDS = ("transparent", "opaque", "auto")
FORMATS = ("png", "jpeg", "webp")
IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
SCALAR_FIELDS = frozenset({
    "model", "prompt", "n", "size", "quality", "background", "output_format", "output_compression",
    "moderation", "input_fidelity", "user", "safety_identifier", "stream", "partial_images", "response_format",
})
OUTPUT_TOKENS_1024 = {"low": 196, "medium": 1756, "high": 7024}
NO_QUOTA_KEY = "sk-sandbox-no-quota"
MODERATION_TRIGGER = "sandbox:moderation"


# ---- errors ------------------------------------------------------------------------------------------
class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.extra}}

    def response(self, request_id: str) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, "x-request-id": request_id})


def _bad(message: str, param: str | None, code: str | None = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _quote_list(values: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def invalid_value(param: str, value: Any, allowed: tuple[str, ...] | list[str]) -> OpenAIError:
    return _bad(f"Invalid value: '{value}'. Supported values are: {_quote_list(allowed)}.", param)


def missing(param: str) -> OpenAIError:
    return _bad(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def invalid_type(param: str, expected: str, value: Any) -> OpenAIError:
    got = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array",
           dict: "an object", type(None): "null"}.get(type(value), "a value")
    return _bad(f"Invalid type for '{param}': expected {expected}, but got {got} instead.", param, "invalid_type")


def server_error() -> OpenAIError:
    return OpenAIError(500, "The server had an error while processing your request. Sorry about that!",
                       type_="server_error")


def _server_error() -> dict[str, Any]:
    return server_error().body()


def no_api_key() -> OpenAIError:
    return OpenAIError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                       "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")


def incorrect_api_key(masked: str) -> OpenAIError:
    return OpenAIError(401, f"Incorrect API key provided: {masked}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.", code="invalid_api_key")


def moderation_blocked(request_id: str) -> OpenAIError:
    """What the safety system answers to a prompt with :data:`MODERATION_TRIGGER` (a sandbox trigger)."""
    return OpenAIError(
        400, "Your request was rejected by the safety system. If you believe this is an error, contact "
        f"us at help.openai.com and include the request ID {request_id}. safety_violations=[other].",
        type_="image_generation_user_error", code="moderation_blocked",
        extra={"moderation_details": {"moderation_stage": "input", "categories": ["other"]}},
    )


# ---- multipart ---------------------------------------------------------------------------------------
@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


_PARAM = re.compile(r';\s*([\w*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    head, _, rest = value.partition(";")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3) or "")
              for m in _PARAM.finditer(";" + rest)}
    return head.strip().lower(), params


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """Split a multipart/form-data body (RFC 7578) into parts; raises OpenAIError when malformed."""
    _, params = _header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise _bad("Invalid multipart/form-data body: missing boundary.", None, None)
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise _bad("Invalid multipart/form-data body: no closing boundary.", None, None)
    parts: list[Part] = []
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise _bad("Invalid multipart/form-data body: a part has no header block.", None, None)
        headers: dict[str, str] = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                key, _, value = line.decode("utf-8", "replace").partition(":")
                headers[key.strip().lower()] = value.strip()
        disposition, dparams = _header_params(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in dparams:
            raise _bad("Invalid multipart/form-data body: a part has no form-data name.", None, None)
        ctype = headers.get("content-type")
        parts.append(Part(dparams["name"], dparams.get("filename"), ctype.split(";")[0].strip().lower()
                          if ctype else None, data))
    return parts


# ---- parameters --------------------------------------------------------------------------------------
@dataclass
class EditParams:
    model: str
    prompt: str
    n: int
    size: str
    quality: str
    background: str
    output_format: str
    images: list[bytes]
    mask: bytes | None = None
    output_compression: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def target(self) -> tuple[int, int] | None:
        if self.size == "auto":
            return None
        w, h = self.size.split("x")
        return int(w), int(h)


def _int_field(raw: Any, name: str, low: int, high: int) -> int:
    if isinstance(raw, bool):
        raise invalid_type(name, "an integer", raw)
    if isinstance(raw, str):
        if not re.fullmatch(r"-?\d+", raw.strip()):
            raise invalid_type(name, "an integer", raw)
        raw = int(raw.strip())
    if not isinstance(raw, int):
        raise _bad(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if raw < low:
        raise _bad(f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {raw} "
                   "instead.", name, "integer_below_min_value")
    if raw > high:
        raise _bad(f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {raw} "
                   "instead.", name, "integer_above_max_value")
    return raw


def _choice(raw: Any, name: str, allowed: tuple[str, ...]) -> str:
    value = str(raw)
    if value not in allowed:
        raise invalid_value(name, value, allowed)
    return value


def _size_rule_problems(width: int, height: int) -> list[str]:
    problems = []
    if width % 16 or height % 16:
        problems.append("both dimensions must be multiples of 16")
    if max(width, height) > 3840:
        problems.append("the longest edge must be at most 3840 pixels")
    if max(width, height) > 3 * min(width, height):
        problems.append("the aspect ratio must not exceed 3:1")
    if not 655_360 <= width * height <= 8_294_400:
        problems.append("the total pixel count must be between 655360 and 8294400")
    return problems


def check_scalars(fields: dict[str, Any]) -> dict[str, Any]:
    """Validate the scalar fields (shared by both encodings); returns normalised values."""
    unknown = sorted(set(fields) - SCALAR_FIELDS - {"images", "mask", "image", "image[]"})
    if unknown:
        raise _bad(f"Unknown parameter: '{unknown[0]}'.", unknown[0], "unknown_parameter")
    model = str(fields.get("model") or DEFAULT_MODEL)
    if model in RETIRED_MODELS or model not in FLEXIBLE_MODELS | FIXED_MODELS:
        raise OpenAIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                          param="model", code="model_not_found")
    prompt = fields.get("prompt")
    if prompt is None or str(prompt) == "":
        raise missing("prompt")
    prompt = str(prompt)
    if len(prompt) > MAX_PROMPT:
        raise _bad(f"Invalid 'prompt': string too long. Expected a string with maximum length {MAX_PROMPT}, but "
                   f"got a string with length {len(prompt)} instead.", "prompt", "string_above_max_length")
    if "response_format" in fields:
        raise _bad(f"Unknown parameter: 'response_format'. The model '{model}' always returns base64-encoded "
                   "images.", "response_format", "unknown_parameter")
    if str(fields.get("stream", "false")).lower() in ("true", "1"):
        raise _bad("Streaming is not supported by the editq sandbox; send stream=false.", "stream", "unsupported_value")
    n = _int_field(fields.get("n", 1), "n", 1, 10)
    size = str(fields.get("size", "auto"))
    if size != "auto" and size not in STANDARD_SIZES:
        m = re.fullmatch(r"(\d+)x(\d+)", size)
        if model in FIXED_MODELS or not m:
            allowed = ("1024x1024", "1024x1536", "1536x1024", "auto")
            _choice(size, "size", allowed)
        else:
            problems = _size_rule_problems(int(m.group(1)), int(m.group(2)))
            if problems:
                raise _bad(f"Invalid value: '{size}'. Custom sizes for {model}: " + "; ".join(problems) + ".",
                           "size")
    quality = _choice(fields.get("quality", "auto"), "quality", QUALITIES)
    background = _choice(fields.get("background", "auto"), "background", BACKGROUNDS)
    output_format = _choice(fields.get("output_format", "png"), "output_format", FORMATS)
    if background == "transparent":
        if model in FLEXIBLE_MODELS:
            raise _bad(f"Transparent backgrounds are not supported for {model}. Use background 'opaque' or 'auto'.",
                       "background", "unsupported_value")
        if output_format == "jpeg":
            raise _bad("Transparent backgrounds need output_format 'png' or 'webp'.", "background",
                       "unsupported_value")
    compression = None
    if "output_compression" in fields:
        compression = _int_field(fields["output_compression"], "output_compression", 0, 100)
        if output_format == "png":
            raise _bad("output_compression is only supported with output_format 'jpeg' or 'webp'.",
                       "output_compression", "unsupported_value")
    if "moderation" in fields:
        _choice(fields["moderation"], "moderation", ("low", "auto"))
    if "input_fidelity" in fields:
        _choice(fields["input_fidelity"], "input_fidelity", ("high", "low"))
    if "partial_images" in fields:
        _int_field(fields["partial_images"], "partial_images", 0, 3)
    return {"model": model, "prompt": prompt, "n": n, "size": size, "quality": quality, "background": background,
            "output_format": output_format, "output_compression": compression}


def _check_image(data: bytes, declared: str | None, name: str, index: int) -> None:
    kind = sniff_image_type(data)
    if declared is not None and declared not in IMAGE_TYPES:
        raise _bad(f"Invalid file '{name}': unsupported mimetype ('{declared}'). Supported file formats are "
                   "'image/jpeg', 'image/png', and 'image/webp'.", name, "unsupported_file_mimetype")
    if kind not in ("png", "jpeg", "webp") or (declared is not None and IMAGE_TYPES[declared] != kind):
        raise _bad(f"Invalid image file or mode for image {index + 1}, please check your image file.", name,
                   "invalid_image_file")
    if len(data) >= MAX_IMAGE_BYTES:
        raise _bad(f"Invalid file '{name}': image {index + 1} is {len(data)} bytes; each image must be smaller "
                   "than 50 MB.", name, "image_too_large")


def _check_mask(mask: bytes, declared: str | None, first: bytes) -> None:
    if declared is not None and declared not in IMAGE_TYPES:
        raise _bad(f"Invalid file 'mask': unsupported mimetype ('{declared}'). Supported file formats are "
                   "'image/jpeg', 'image/png', and 'image/webp'.", "mask", "unsupported_file_mimetype")
    if sniff_image_type(mask) != "png":
        raise _bad("Invalid mask image: the mask must be a PNG file.", "mask", "invalid_image_file")
    if len(mask) >= MAX_MASK_BYTES:
        raise _bad("Invalid mask image: the mask must be smaller than 4 MB.", "mask", "image_too_large")
    try:
        with Image.open(io.BytesIO(mask)) as m:
            mode, msize, info = m.mode, m.size, m.info
        with Image.open(io.BytesIO(first)) as f:
            fsize = f.size
    except Exception:
        raise _bad("Invalid mask image: the file could not be read.", "mask", "invalid_image_file") from None
    if not (mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in info)):
        raise _bad(f"Invalid mask image: the mask must have an alpha channel (got mode {mode}); fully transparent "
                   "pixels mark the area to edit.", "mask", "invalid_image_file")
    if msize != fsize:
        raise _bad(f"Invalid mask image: the mask ({msize[0]}x{msize[1]}) must have the same dimensions as the "
                   f"image ({fsize[0]}x{fsize[1]}).", "mask", "image_size_mismatch")


def params_from_form(parts: list[Part]) -> EditParams:
    """The multipart encoding -> EditParams (raises OpenAIError like the API would)."""
    fields: dict[str, Any] = {}
    images: list[tuple[Part, str]] = []
    mask: Part | None = None
    for part in parts:
        if part.name in ("image", "image[]"):
            images.append((part, part.name))
        elif part.name == "mask":
            mask = part
        elif part.filename is not None:
            raise _bad(f"Unknown file parameter: '{part.name}'.", part.name, "unknown_parameter")
        else:
            if part.name in fields:
                raise _bad(f"Duplicate parameter: '{part.name}'.", part.name, "duplicate_parameter")
            fields[part.name] = part.data.decode("utf-8", "replace")
    scalars = check_scalars(fields)
    if not images:
        raise missing("image")
    if len(images) > MAX_IMAGES:
        raise _bad(f"Invalid 'image': too many images. Expected at most {MAX_IMAGES}, but got {len(images)}.",
                   "image", "array_above_max_length")
    for i, (part, name) in enumerate(images):
        _check_image(part.data, part.content_type or "application/octet-stream", name, i)
    if mask is not None:
        _check_mask(mask.data, mask.content_type or "application/octet-stream", images[0][0].data)
    summary = {**{k: v for k, v in fields.items() if k != "prompt"}, "prompt": scalars["prompt"][:256],
               "encoding": "multipart",
               "image": [{"field": name, "filename": p.filename, "content_type": p.content_type, "bytes": len(p.data)}
                         for p, name in images]}
    if mask is not None:
        summary["mask"] = {"filename": mask.filename, "content_type": mask.content_type, "bytes": len(mask.data)}
    return EditParams(images=[p.data for p, _ in images], mask=mask.data if mask else None, summary=summary,
                      **scalars)


def _image_url(ref: Any, param: str) -> str:
    if not isinstance(ref, dict):
        raise _bad(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    if set(ref) - {"image_url", "file_id"} or len(ref) != 1:
        raise _bad(f"Invalid '{param}': exactly one of 'image_url' or 'file_id' is required.", param, "invalid_value")
    if "file_id" in ref:
        raise _bad(f"Invalid '{param}': file_id references are not supported by the editq sandbox's images/edits; "
                   "use image_url.", param, "unsupported_value")
    url = ref["image_url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:image/")):
        raise _bad(f"Invalid '{param}.image_url': expected a URL or a base64 data URL.", param, "invalid_value")
    if len(url) > 20_971_520:
        raise _bad(f"Invalid '{param}.image_url': string too long.", param, "string_above_max_length")
    return url


# The JSON encoding's types, from OpenAI's published OpenAPI document (`EditImageBodyJsonParam` in
# components.schemas, the `application/json` body of POST /images/edits). Encoded here, never read at run time.
# Each of these is `anyOf: [<type>, {"type": "null"}]`: an explicit null is accepted and means the default
# (model gpt-image-1.5, n 1, quality auto, size auto, output_format png, moderation auto, background auto,
# stream false; input_fidelity and output_compression have none and are simply not set).
JSON_NULLABLE = frozenset({
    "model", "n", "quality", "input_fidelity", "size", "output_format", "output_compression", "moderation",
    "background", "stream",
})
# JSON types of the scalar fields (`{"type": "integer"}` etc.); multipart sends every field as text, so
# these are checked for the JSON encoding only. `partial_images` has no schema (`{}`) and is left as it is.
JSON_TYPES: dict[str, tuple[str, tuple[type, ...]]] = {
    "model": ("a string", (str,)),
    "prompt": ("a string", (str,)),
    "n": ("an integer", (int,)),
    "quality": ("a string", (str,)),
    "input_fidelity": ("a string", (str,)),
    "size": ("a string", (str,)),
    "user": ("a string", (str,)),
    "output_format": ("a string", (str,)),
    "output_compression": ("an integer", (int,)),
    "moderation": ("a string", (str,)),
    "background": ("a string", (str,)),
    "stream": ("a boolean", (bool,)),
}


def json_scalars(fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON body's scalar fields checked against their schema types: a value of the wrong JSON type
    (the string "2" for `n`, a number for `prompt`, the string "true" for `stream`) is refused with
    400 `invalid_type`; an explicit null where the schema allows it is dropped (the default applies)."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None and name in JSON_NULLABLE:
            continue
        expected = JSON_TYPES.get(name)
        if expected is not None:
            label, types = expected
            wrong_bool = isinstance(value, bool) and bool not in types  # JSON true is not an integer
            if wrong_bool or not isinstance(value, types):
                raise invalid_type(name, label, value)
        out[name] = value
    return out


async def params_from_json(state: SandboxState, body: Any) -> EditParams:
    """The JSON encoding (`images: [{image_url}]`, `mask: {image_url}`) -> EditParams; downloads the inputs."""
    if not isinstance(body, dict):
        raise _bad("Invalid body: expected a JSON object.", None, "invalid_type")
    scalars = check_scalars(json_scalars({k: v for k, v in body.items() if k not in ("images", "mask")}))
    refs = body.get("images")
    if not isinstance(refs, list) or not refs:
        raise missing("images")
    if len(refs) > MAX_IMAGES:
        raise _bad(f"Invalid 'images': array too long. Expected at most {MAX_IMAGES}, but got {len(refs)}.",
                   "images", "array_above_max_length")
    urls = [_image_url(r, f"images[{i}]") for i, r in enumerate(refs)]
    mask_url = _image_url(body["mask"], "mask") if body.get("mask") is not None else None
    try:
        images, mask = await fetch_inputs(state, urls, mask_url)
    except InputFailed as failed:
        param = "mask" if failed.mask else f"images[{failed.index}]"
        raise _bad(f"Error while downloading {param}.image_url: {failed.error}", param, "invalid_image_url") from None
    for i, data in enumerate(images):
        _check_image(data, None, f"images[{i}]", i)
    if mask is not None:
        _check_mask(mask, None, images[0])
    summary = {**{k: v for k, v in body.items() if k not in ("images", "mask", "prompt")},
               "prompt": scalars["prompt"][:256], "encoding": "json",
               "images": [u if not u.startswith("data:") else u[:40] + "..." for u in urls]}
    if mask_url:
        summary["mask"] = mask_url if not mask_url.startswith("data:") else mask_url[:40] + "..."
    return EditParams(images=images, mask=mask, summary=summary, **scalars)


# ---- the edit itself -----------------------------------------------------------------------------------
def _tiles(width: int, height: int) -> int:
    return math.ceil(width / 512) * math.ceil(height / 512)


def usage_for(params: EditParams, out_size: tuple[int, int]) -> dict[str, Any]:
    quality = params.quality if params.quality in OUTPUT_TOKENS_1024 else "medium"
    per_image = max(16, round(OUTPUT_TOKENS_1024[quality] * out_size[0] * out_size[1] / (1024 * 1024)))
    image_in = 0
    for data in params.images:
        with Image.open(io.BytesIO(data)) as im:
            image_in += 85 + 170 * _tiles(*im.size)
    text_in = math.ceil(len(params.prompt) / 4)
    out = per_image * params.n
    return {
        "input_tokens": text_in + image_in, "output_tokens": out, "total_tokens": text_in + image_in + out,
        "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_in},
        "output_tokens_details": {"text_tokens": 0, "image_tokens": out},
    }


def render_images(params: EditParams, mode: str) -> list[tuple[bytes, int, int]]:
    """(bytes, width, height) for each of the n outputs. Raises OpenAIError for an unusable input."""
    try:
        if mode == "cached":
            with Image.open(io.BytesIO(params.images[0])) as im:
                width, height = params.target() or im.size
            blob = render_placeholder(width, height, params.output_format)
            return [(blob, width, height)] * params.n
        rendered = render_edit_images(params.images, params.prompt, params.mask, params.target(),
                                      params.output_format, params.n, quality=params.quality)
    except EngineError as exc:
        raise _bad(f"Invalid image file or mode for image {(exc.index or 0) + 1}, please check your image file.",
                   "image" if exc.index is not None else "mask", "invalid_image_file") from None
    return [(r.data, r.width, r.height) for r in rendered]


def execute_edit(params: EditParams, mode: str, created: int) -> dict[str, Any]:
    """Render and build the `ImagesResponse` body (blocking: call it on a render thread)."""
    outputs = render_images(params, mode)
    width, height = outputs[0][1], outputs[0][2]
    return {
        "created": created,
        "data": [{"b64_json": base64.b64encode(blob).decode("ascii")} for blob, _, _ in outputs],
        "background": "opaque" if params.background == "auto" else params.background,
        "output_format": params.output_format,
        "quality": "medium" if params.quality == "auto" else params.quality,
        "size": f"{width}x{height}",
        "usage": usage_for(params, (width, height)),
    }


# ---- the provider -----------------------------------------------------------------------------------------
class OpenAISandboxAdapter(ProviderAdapter):
    name = NAME
    signer = None  # the synchronous Images API has no webhooks

    def failure_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 500, _server_error(), "The server had an error while processing your request.",
                          "server_error", reason="injected_failure")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        if isinstance(exc, OpenAIError):
            return JobOutcome(False, exc.status, exc.body(), exc.message, exc.code, reason="error")
        return JobOutcome(False, 500, _server_error(), f"{type(exc).__name__}: {exc}", "server_error", reason="crash")

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 499, {"error": {"message": "Request cancelled.", "type": "server_error",
                                                 "param": None, "code": None}},
                          "cancelled", "cancelled", reason="cancelled")


def _masked_key(key: str) -> str:
    return key[:3] + "*" * 8 + key[-4:] if len(key) > 8 else "*" * len(key)


class OpenAIProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.adapter = OpenAISandboxAdapter()
        state.runner.register(self.adapter)

    def _auth(self, request: Request) -> OpenAIError | None:
        key = bearer_key(request)
        if key is None:
            return no_api_key()
        if key.startswith("sk-invalid"):
            return incorrect_api_key(_masked_key(key))
        if key == NO_QUOTA_KEY:
            return OpenAIError(429, "You exceeded your current quota, please check your plan and billing details.",
                               type_="insufficient_quota", code="insufficient_quota")
        return None

    async def _faults(self, model: str) -> Response | OpenAIError | None:
        fault = await submit_fault(self.state, NAME)
        if fault == "timeout":
            return HTMLResponse("<html><head><title>504 Gateway Time-out</title></head><body><center><h1>504 "
                                "Gateway Time-out</h1></center></body></html>", status_code=504)
        if fault == "5xx":
            return server_error()
        if fault == "429":
            wait = max(self.state.current.retry_after_s, 0.0)
            return OpenAIError(
                429, f"Rate limit reached for {model} in organization org-sandbox on images per min (IPM): Limit 5, "
                f"Used 5, Requested 1. Please try again in {wait:g}s.", type_="requests", code="rate_limit_exceeded",
                headers={"retry-after": str(math.ceil(wait)), "x-ratelimit-limit-images": "5",
                         "x-ratelimit-remaining-images": "0", "x-ratelimit-reset-images": f"{wait:g}s"},
            )
        return None

    async def edits(self, request: Request) -> Response:
        runner = self.state.runner
        request_id = "req_" + uuid.uuid4().hex
        started = time.monotonic()
        raw = await request.body()
        denied = self._auth(request)
        if denied is not None:
            runner.reject(NAME, "auth" if denied.status == 401 else "quota")
            return denied.response(request_id)
        ctype, _ = _header_params(request.headers.get("content-type", ""))
        try:
            if ctype == "multipart/form-data":
                params = params_from_form(parse_multipart(request.headers["content-type"], raw))
            elif ctype == "application/json":
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise _bad("We could not parse the JSON body of your request.", None, None) from None
                params = await params_from_json(self.state, body)
            else:
                raise _bad(f"Invalid Content-Type header ({ctype or 'missing'}); expected multipart/form-data or "
                           "application/json.", None, None)
            if MODERATION_TRIGGER in params.prompt:
                raise moderation_blocked(request_id)
            fault = await self._faults(params.model)
        except OpenAIError as exc:
            runner.reject(NAME, "validation" if exc.status < 500 else "5xx")
            return exc.response(request_id)
        if isinstance(fault, OpenAIError):
            return fault.response(request_id)
        if fault is not None:
            return fault
        job = Job(provider=NAME, request_id=request_id, model=params.model, work=self._work, payload=params,
                  input_summary=params.summary, base_url=self.state.base_url(request),
                  headers=kept_headers(request, names=("user-agent", "openai-organization", "openai-project")))
        runner.submit(job)
        await job.finished.wait()
        outcome = job.outcome
        assert outcome is not None
        headers = {**outcome.headers, "x-request-id": request_id, "openai-version": "2020-10-01",
                   "openai-processing-ms": str(int((time.monotonic() - started) * 1000))}
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)

    async def _work(self, job: Job) -> JobOutcome:
        params: EditParams = job.payload
        job.log(f"Editing {len(params.images)} image(s): n={params.n}, size={params.size}, "
                f"format={params.output_format}.")
        body = await self.state.in_thread(execute_edit, params, self.state.current.render, int(time.time()))
        return JobOutcome(True, 200, body)

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["openai"])

        @router.post("/images/edits", response_model=None)
        async def edits(request: Request) -> Response:
            return await self.edits(request)

        return router


def build(state: SandboxState) -> ProviderMount:
    provider = OpenAIProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "OpenAI Images API, synchronous edits (https://api.openai.com/v1)")
