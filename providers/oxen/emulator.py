"""Oxen.ai's synchronous image edit under ``/oxen/api/ai`` (stands in for ``https://hub.oxen.ai/api/ai``).

Route: ``POST /oxen/api/ai/images/edit`` with a JSON body and ``Authorization: Bearer <key>``.
Model ``gpt-image-2`` (the current Oxen page): ``prompt`` (required), ``input_image`` (array of URLs
or ``data:image/...;base64,`` URIs, required here since this is the edit route, at most 16),
``mask_url`` (white = edit, black = keep, per Oxen's docs), ``aspect_ratio`` (auto, 1:1, 16:9 (default),
9:16, 4:3, 3:4, 3:2, 2:3, 21:9, 9:21), ``resolution`` (1K, 2K (default), 4K), ``quality`` (low, medium,
high (default)), ``output_format`` (png (default), jpeg, webp), and the common ``response_format``
(``url`` default, ``b64_json``) and ``target_namespace``. Unknown fields are refused.

The request is held open for the whole edit (queued under ``concurrency``, then ``latency_s + jitter``).
Answer: ``{"model", "created", "images": [{"url"}]}`` (URLs served by this sandbox under ``/files``) or
``[{"b64_json"}]``. Errors: ``{"error": {"type", "title", "detail"}, "status": "error",
"status_message": type}``; an unknown model gets ``{"error": {"message": "Model not found: X"}}`` (404).

Types are refused as Oxen's validation does (``invalid_params``): ``model``, ``prompt``, ``mask_url`` and
``target_namespace`` must be strings, ``input_image`` an array of strings, the choice fields one of their
values. The documented defaults are accepted when sent explicitly; ``null`` is accepted only for the fields
without a default (``mask_url``, ``target_namespace``), as "omitted".

Sandbox choices where Oxen's docs are silent: output size = the ratio (auto: the first image's, held
within 1:3..3:1) with the longest edge 1024 (1K), 2048 (2K) or 3840 (4K), brought within what GPT Image 2
makes (655,360 to 8,294,400 pixels, longest edge 3840, sides multiples of 16: 1K 16:9 is 1088x608, 4K 1:1
is 2880x2880); a mask of
another size is resized to the first image; input download failures are 400 ``invalid_params`` with
the ``"<code> Client Error: <reason> for url: <url>"`` wording; the key ``oxen-no-credits`` gets 402
"Insufficient credits"; faults: 429 ``rate_limit_exceeded`` with ``Retry-After``, 500 ``unknown_error``,
a held request answered 504, and ``job_failure_rate`` -> 500 ``unknown_error``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image

from editq.sandbox.engine import EngineError, render_edit_images, render_placeholder
from editq.sandbox.files import StoredFile
from editq.sandbox.inputs import summarize_for_log
from editq.sandbox.providers.common import (
    InputFailed,
    bearer_key,
    fetch_inputs,
    kept_headers,
    retry_after,
    submit_fault,
)
from editq.sandbox.runner import Job, JobOutcome, ProviderAdapter
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "oxen"
PREFIX = "/oxen/api/ai"
MODELS = frozenset({"gpt-image-2"})
ASPECT_RATIOS = ("auto", "1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3", "21:9", "9:21")
RESOLUTIONS = {"1K": 1024, "2K": 2048, "4K": 3840}
QUALITIES = ("low", "medium", "high")
FORMATS = ("png", "jpeg", "webp")
FIELDS = frozenset({"model", "prompt", "input_image", "mask_url", "aspect_ratio", "resolution", "quality",
                    "output_format", "response_format", "target_namespace"})
MAX_IMAGES = 16
MIN_PIXELS, MAX_PIXELS, MAX_EDGE, MAX_ASPECT = 655_360, 8_294_400, 3840, 3.0  # GPT Image 2's limits
NO_CREDITS_KEY = "oxen-no-credits"
_INVALID_TITLE = "Invalid parameters supplied, please check your request and try again."


class OxenError(Exception):
    def __init__(self, status: int, etype: str, title: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.etype, self.title, self.detail = status, etype, title, detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.etype, "title": self.title, "detail": self.detail}, "status": "error",
                "status_message": self.etype}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _invalid(detail: str) -> OxenError:
    return OxenError(400, "invalid_params", _INVALID_TITLE, detail)


def _unknown_error() -> dict[str, Any]:
    return OxenError(500, "unknown_error", "An unknown error occurred.", "Generation failed; please retry.").body()


@dataclass
class OxenParams:
    model: str
    prompt: str
    input_image: list[str]
    mask_url: str | None
    aspect_ratio: str
    resolution: str
    quality: str
    output_format: str
    response_format: str


def parse_params(body: Any) -> OxenParams:
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("Missing required parameter: model.")
    if model not in MODELS:
        raise OxenError(404, "resource_not_found", "Not found", f"Model not found: {model}")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _invalid(f"Unknown parameter(s) for {model}: {', '.join(unknown)}.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _invalid("prompt is required and must be a non-empty string.")
    images = body.get("input_image")
    if not isinstance(images, list) or not images or not all(isinstance(u, str) and u for u in images):
        raise _invalid("input_image must be a non-empty array of image URLs for images/edit.")
    if len(images) > MAX_IMAGES:
        raise _invalid(f"input_image accepts at most {MAX_IMAGES} images, got {len(images)}.")
    mask = body.get("mask_url")
    if mask is not None and (not isinstance(mask, str) or not mask.startswith(("http://", "https://", "data:"))):
        raise _invalid("mask_url must be a URI.")
    namespace = body.get("target_namespace")
    if namespace is not None and (not isinstance(namespace, str) or not namespace.strip()):
        raise _invalid("target_namespace must be a non-empty string (a user or organization name).")

    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = body.get(name, default)
        if value not in allowed:
            raise _invalid(f"{name} must be one of: {', '.join(allowed)} (got {value!r}).")
        return str(value)

    return OxenParams(
        model=model, prompt=prompt, input_image=list(images), mask_url=mask,
        aspect_ratio=choice("aspect_ratio", ASPECT_RATIOS, "16:9"),
        resolution=choice("resolution", tuple(RESOLUTIONS), "2K"),
        quality=choice("quality", QUALITIES, "high"),
        output_format=choice("output_format", FORMATS, "png"),
        response_format=choice("response_format", ("url", "b64_json"), "url"),
    )


def output_size(aspect: str, resolution: str, first: tuple[int, int]) -> tuple[int, int]:
    """The tier's longest edge at the ratio (auto: the first image's, within 1:3..3:1), then brought within
    what GPT Image 2 makes: 655,360 to 8,294,400 pixels, sides multiples of 16, longest edge 3840 px."""
    rw: float
    rh: float
    if aspect == "auto":
        rw, rh = first
        if max(rw, rh) > MAX_ASPECT * min(rw, rh):
            rw, rh = (MAX_ASPECT, 1.0) if rw > rh else (1.0, MAX_ASPECT)
    else:
        a, b = aspect.split(":")
        rw, rh = int(a), int(b)
    edge = RESOLUTIONS[resolution]
    w, h = (float(edge), edge * rh / rw) if rw >= rh else (edge * rw / rh, float(edge))
    if w * h < MIN_PIXELS:
        grow = math.sqrt(MIN_PIXELS / (w * h))
        w, h = w * grow, h * grow
    if w * h > MAX_PIXELS:
        shrink = math.sqrt(MAX_PIXELS / (w * h))
        w, h = w * shrink, h * shrink
    width, height = max(16, round(w / 16) * 16), max(16, round(h / 16) * 16)
    if width * height < MIN_PIXELS:  # rounding fell below the floor: round up instead
        width, height = math.ceil(w / 16) * 16, math.ceil(h / 16) * 16
    if width * height > MAX_PIXELS or max(width, height) > MAX_EDGE:  # above the cap: round down
        width, height = int(w) // 16 * 16, int(h) // 16 * 16
    return width, height


def white_mask_to_alpha(mask: bytes, size: tuple[int, int]) -> bytes:
    """Oxen's mask (white = edit) -> the engine's grayscale form (luminance >= 128 = edit), resized."""
    with Image.open(io.BytesIO(mask)) as im:
        gray = im.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    gray.save(buf, format="PNG")
    return buf.getvalue()


class OxenSandboxAdapter(ProviderAdapter):
    name = NAME
    signer = None  # Oxen has no webhooks

    def failure_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 500, _unknown_error(), "Generation failed", "unknown_error",
                          reason="injected_failure")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        if isinstance(exc, OxenError):
            return JobOutcome(False, exc.status, exc.body(), exc.detail, exc.etype, reason="error")
        return JobOutcome(False, 500, _unknown_error(), f"{type(exc).__name__}: {exc}", "unknown_error",
                          reason="crash")


class OxenProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.adapter = OxenSandboxAdapter()
        state.runner.register(self.adapter)

    @staticmethod
    def _auth(request: Request) -> OxenError | None:
        key = bearer_key(request)
        if key is None:
            return OxenError(401, "unauthenticated", "Unauthenticated",
                             "A valid API key is required: Authorization: Bearer <OXEN_API_KEY>.")
        if key == NO_CREDITS_KEY:
            return OxenError(402, "insufficient_credits", "Insufficient credits",
                             "Insufficient credits to run this model. Add credits to your account.")
        return None

    async def _faults(self) -> Response | None:
        fault = await submit_fault(self.state, NAME)
        if fault == "timeout":
            return HTMLResponse("<html><body><h1>504 Gateway Time-out</h1></body></html>", status_code=504)
        if fault == "5xx":
            return JSONResponse(_unknown_error(), status_code=500)
        if fault == "429":
            return OxenError(429, "rate_limit_exceeded", "Rate limit exceeded", "Too many requests, slow down.",
                             retry_after(self.state.current)).response()
        return None

    async def edit(self, request: Request) -> Response:
        runner = self.state.runner
        raw = await request.body()
        denied = self._auth(request)
        if denied is not None:
            runner.reject(NAME, "auth")
            return denied.response()
        try:
            try:
                data = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise _invalid("The request body is not valid JSON.") from None
            params = parse_params(data)
        except OxenError as exc:
            runner.reject(NAME, "validation")
            if exc.etype == "resource_not_found":
                return JSONResponse({"error": {"message": exc.detail}}, status_code=404)
            return exc.response()
        fault = await self._faults()
        if fault is not None:
            return fault
        request_id = str(uuid.uuid4())
        job = Job(provider=NAME, request_id=request_id, model=params.model, work=self._work, payload=params,
                  input_summary=summarize_for_log(data), base_url=self.state.base_url(request),
                  headers=kept_headers(request))
        runner.submit(job)
        await job.finished.wait()
        outcome = job.outcome
        assert outcome is not None
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=outcome.headers)

    async def _work(self, job: Job) -> JobOutcome:
        params: OxenParams = job.payload
        try:
            images, mask = await fetch_inputs(self.state, params.input_image, params.mask_url)
        except InputFailed as failed:
            item = failed.error
            code = item.args[0].rsplit("HTTP ", 1)[-1].rstrip(".") if "HTTP " in str(item) else "400"
            raise _invalid(f"{code} Client Error: {item} for url: {failed.url[:200]}") from None
        job.log(f"Editing {len(images)} image(s): aspect_ratio={params.aspect_ratio}, resolution={params.resolution}.")
        entry = await self.state.in_thread(self._render, params, images, mask, job)
        return JobOutcome(True, 200, {"model": params.model, "created": int(time.time()), "images": [entry]})

    def _render(self, params: OxenParams, images: list[bytes], mask: bytes | None, job: Job) -> dict[str, Any]:
        try:
            with Image.open(io.BytesIO(images[0])) as im:
                first = im.size
        except Exception:
            raise _invalid("input_image[0] is not a readable image.") from None
        size = output_size(params.aspect_ratio, params.resolution, first)
        fmt = params.output_format
        if self.state.current.render == "cached":
            data = render_placeholder(size[0], size[1], fmt)
        else:
            engine_mask = white_mask_to_alpha(mask, first) if mask is not None else None
            try:
                data = render_edit_images(images, params.prompt, engine_mask, size, fmt, 1,
                                          quality=params.quality)[0].data
            except EngineError as exc:
                raise _invalid(f"Could not process the input images: {exc}") from None
        if params.response_format == "b64_json":
            return {"b64_json": base64.b64encode(data).decode("ascii")}
        stored: StoredFile = self.state.files.put(data, fmt)
        return {"url": stored.url(job.base_url)}

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["oxen"])

        @router.post("/images/edit", response_model=None)
        async def edit(request: Request) -> Response:
            return await self.edit(request)

        return router


def build(state: SandboxState) -> ProviderMount:
    provider = OxenProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "Oxen.ai hub AI image edit, synchronous (https://hub.oxen.ai/api/ai)")
