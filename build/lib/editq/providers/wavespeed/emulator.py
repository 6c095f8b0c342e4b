"""WaveSpeedAI API v3 under ``/wavespeed`` (stands in for ``https://api.wavespeed.ai``).

``wavespeed.Client(api_key=..., base_url="http://HOST:PORT/wavespeed")`` (SDK 2.0.5 appends ``/api/v3/...``)
runs ``run("openai/gpt-image-2/edit", {...})`` against it unmodified.

Routes:

- ``POST /wavespeed/api/v3/{model}[?webhook=<url>]`` submit, ``Authorization: Bearer <key>`` -> HTTP 200 and
  ``{code: 200, message: "success", data: {id, model, outputs: [], urls: {get}, status: "created", ...}}``;
  with ``enable_sync_mode: true`` it answers once the task is done (``completed`` or ``failed``).
- ``GET /wavespeed/api/v3/predictions/{id}/result`` (and ``/predictions/{id}``) -> HTTP 200 with the same
  envelope; ``data.status`` created / processing / completed / failed (failures are HTTP 200 + ``data.error``).
- ``GET /wavespeed/api/v3/webhook/secret`` -> ``{code: 200, message: "success", data: {secret: "whsec_..."}}``.
- Webhooks (``?webhook=``): the bare ``data`` object (plus ``input`` and ``executionTime``), POSTed when the task
  is completed or failed, signed ``webhook-signature: v3,<hex HMAC-SHA256>`` over ``{id}.{timestamp}.{body}`` with
  the secret minus ``whsec_`` as raw UTF-8 key bytes; retried 3 times with backoff (sandbox config).

Strict like the real API where it is documented: ``images`` (an array of URL strings) and ``prompt`` (a string)
required, ``aspect_ratio`` among the 15 documented ratios, ``resolution`` 1k/2k/4k, ``quality`` low/medium/high,
the two ``enable_*`` flags JSON booleans, ``enable_base64_output`` together with a webhook -> 400; a value of
another type is refused like a value outside the list. The documented defaults (``resolution: "1k"``,
``quality: "medium"``, ``enable_sync_mode: false``, ``enable_base64_output: false``) are accepted when sent, and
an explicit ``null`` for an optional string field means "omitted". Sandbox choices where WaveSpeed is silent: error
bodies are the envelope ``{code, message, data: null}`` with the HTTP status in ``code`` (400 validation, 401 auth,
404 unknown model or prediction, 429 + Retry-After, 500); ``output_format`` accepts jpeg/png/webp (default jpeg);
unknown fields are ignored (and logged); the pixel size of (aspect_ratio, resolution) is: short side 1024/2048 px
at 1k/2k, long side 3840 px at 4k, rounded down to multiples of 16 and scaled down to what GPT Image 2 makes
(8,294,400 pixels, longest edge 3840 px); without ``aspect_ratio`` the documented ratio nearest the first input
image's is used. An injected job failure is a ``failed`` task whose error names an upstream ``HTTP 500`` (the
official SDK re-runs such tasks); an unusable input is a ``failed`` task naming the image.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import math
import re
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from editq.sandbox.engine import EngineError, image_dimensions, render_edit_images, render_placeholder
from editq.sandbox.inputs import summarize_for_log
from editq.sandbox.providers.common import (
    BEARER_AUTH,
    InputFailed,
    admit,
    authorization_matches,
    fetch_inputs,
    iso_utc,
    kept_headers,
    look_up,
    retry_after,
)
from editq.sandbox.runner import Job, JobOutcome, JobState, ProviderAdapter
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "wavespeed"
PREFIX = "/wavespeed"
MODEL = "openai/gpt-image-2/edit"
ASPECT_RATIOS = ("1:1", "1:2", "2:1", "1:3", "3:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9",
                 "9:21", "21:9")
RESOLUTIONS = {"1k": 1024, "2k": 2048, "4k": 3840}
QUALITIES = ("low", "medium", "high")
OUTPUT_FORMATS = ("jpeg", "png", "webp")
MAX_PIXELS = 8_294_400
MAX_EDGE = 3840
SYNC_WAIT_S = 300.0
_STATUS = {JobState.IN_QUEUE: "created", JobState.IN_PROGRESS: "processing"}


def _envelope(code: int, message: str, data: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "data": data}, status_code=code, headers=headers)


def output_size(aspect: str, resolution: str) -> tuple[int, int]:
    """The sandbox's pixel size for an (aspect_ratio, resolution) pair (see the module docstring): never
    beyond what GPT Image 2 makes (longest edge 3840 px, 8,294,400 pixels)."""
    w, h = (int(x) for x in aspect.split(":"))
    base = RESOLUTIONS[resolution]
    scale = base / max(w, h) if resolution == "4k" else base / min(w, h)
    width, height = w * scale, h * scale
    if width * height > MAX_PIXELS:
        shrink = math.sqrt(MAX_PIXELS / (width * height))
        width, height = width * shrink, height * shrink
    if max(width, height) > MAX_EDGE:
        shrink = MAX_EDGE / max(width, height)
        width, height = width * shrink, height * shrink
    return max(16, int(width) // 16 * 16), max(16, int(height) // 16 * 16)


def nearest_aspect(width: int, height: int) -> str:
    target = math.log(width / height)
    return min(ASPECT_RATIOS, key=lambda a: abs(math.log(int(a.split(":")[0]) / int(a.split(":")[1])) - target))


class WaveSpeedSigner:
    """WaveSpeed's own scheme: ``webhook-signature: v3,<hex>``, key = secret minus ``whsec_`` as UTF-8 bytes."""

    def __init__(self, seed: int) -> None:
        self.secret = "whsec_" + hashlib.sha256(f"editq-sandbox:wavespeed:secret:{seed}".encode()).hexdigest()[:32]
        self.unknown = "whsec_" + hashlib.sha256(f"editq-sandbox:wavespeed:unknown:{seed}".encode()).hexdigest()[:32]

    def sign(self, body: bytes, *, request_id: str, timestamp: int, valid: bool = True) -> dict[str, str]:
        msg_id = f"wh_{request_id}"
        key = (self.secret if valid else self.unknown).removeprefix("whsec_").encode("utf-8")
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": f"v3,{mac}"}


class WaveSpeedRunnerAdapter(ProviderAdapter):
    name = NAME

    def __init__(self, signer: WaveSpeedSigner) -> None:
        self.signer = signer

    def webhook_payload(self, job: Job) -> Any:
        data = task_data(job)
        data["input"] = job.extra.get("input")
        data["executionTime"] = data["timings"]["inference"]
        return data

    def failure_outcome(self, job: Job) -> JobOutcome:
        message = "upstream model error: HTTP 500 Internal Server Error (sandbox injected job failure)"
        return JobOutcome(False, 200, None, message, "failed", reason="injected_failure")

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 200, None, "task cancelled", "cancelled", reason="cancelled")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        return JobOutcome(False, 200, None, "internal error", "failed", reason="crash")


def task_data(job: Job) -> dict[str, Any]:
    """The ``data`` object of the envelope (and the webhook body) for a task in its current state."""
    outcome = job.outcome
    done = job.state is JobState.COMPLETED and outcome is not None
    ok = done and outcome is not None and outcome.ok
    outputs: list[str] = list(outcome.body) if ok and outcome is not None else []
    inference = job.inference_time
    return {
        "id": job.request_id,
        "model": job.model,
        "outputs": outputs,
        "urls": {"get": f"{job.base_url}{PREFIX}/api/v3/predictions/{job.request_id}/result"},
        "has_nsfw_contents": [False] * len(outputs),
        "status": ("completed" if ok else "failed") if done else _STATUS.get(job.state, "created"),
        "created_at": iso_utc(job.received_at),
        "error": (outcome.error or "") if done and outcome is not None and not ok else "",
        "timings": {"inference": round((inference or 0.0) * 1000)},
    }


class Problem(ValueError):
    pass


def check_body(data: Any) -> dict[str, Any]:
    """WaveSpeed's documented input rules; raises :class:`Problem` with a one-line message."""
    if not isinstance(data, dict):
        raise Problem("request body must be a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise Problem("prompt is required")
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise Problem("images is required and must be a non-empty array of image URLs")
    if not all(isinstance(u, str) and u.strip() for u in images):
        raise Problem("images must contain image URL strings")
    choices: dict[str, tuple[str, ...]] = {
        "aspect_ratio": ASPECT_RATIOS, "resolution": tuple(RESOLUTIONS), "quality": QUALITIES,
        "output_format": OUTPUT_FORMATS,
    }
    for field, allowed in choices.items():
        value = data.get(field)
        if value is not None and value not in allowed:
            raise Problem(f"{field} must be one of {', '.join(allowed)}; got {value!r}")
    for field in ("enable_sync_mode", "enable_base64_output"):
        if field in data and not isinstance(data[field], bool):
            raise Problem(f"{field} must be a boolean")
    return data


class WaveSpeedProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.signer = WaveSpeedSigner(state.current.seed)
        self.adapter = WaveSpeedRunnerAdapter(self.signer)
        state.runner.register(self.adapter)

    @staticmethod
    def _unauthorized(request: Request) -> JSONResponse | None:
        if authorization_matches(request, BEARER_AUTH):
            return None
        return _envelope(401, "Unauthorized: invalid or missing API key (use 'Authorization: Bearer <key>')")

    # --- submit -----------------------------------------------------------------------------------

    async def submit(self, request: Request, model: str) -> Response:
        runner, cfg = self.state.runner, self.state.current
        raw = await request.body()
        refused = await admit(self.state, NAME, request, self._unauthorized, {
            "timeout": lambda: _envelope(504, "gateway timeout"),
            "5xx": lambda: _envelope(500, "internal server error"),
            "429": lambda: _envelope(429, "too many requests: rate limit exceeded for your account level",
                                     headers=retry_after(cfg)),
        })
        if refused is not None:
            return refused
        model = model.strip("/")
        if model != MODEL:
            runner.reject(NAME, "not_found")
            return _envelope(404, f"model {model} not found")
        try:
            data = check_body(json.loads(raw))
        except json.JSONDecodeError as exc:
            runner.reject(NAME, "validation")
            return _envelope(400, f"invalid JSON body: {exc.msg}")
        except Problem as exc:
            runner.reject(NAME, "validation")
            return _envelope(400, str(exc))
        webhook = request.query_params.get("webhook") or None
        if webhook is not None and not re.match(r"^https?://[^/\s]+", webhook):
            runner.reject(NAME, "validation")
            return _envelope(400, "webhook must be an http(s) URL")
        if webhook and data.get("enable_base64_output"):
            runner.reject(NAME, "validation")
            return _envelope(400, "enable_base64_output cannot be used together with a webhook")
        request_id = uuid.uuid4().hex
        job = Job(
            provider=NAME,
            request_id=request_id,
            model=model,
            work=self._edit,
            payload=data,
            input_summary=summarize_for_log(data),
            webhook_url=webhook,
            base_url=self.state.base_url(request),
            headers=kept_headers(request, prefix="x-client-"),
            extra={"input": summarize_for_log(data)},
        )
        runner.submit(job)
        if data.get("enable_sync_mode"):
            # past the wait WaveSpeed answers with the task still processing; the client fetches it by id
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.finished.wait(), SYNC_WAIT_S)
            return _envelope(200, "success", task_data(job))
        return _envelope(200, "success", {**task_data(job), "status": "created"})  # as WaveSpeed answers a submit

    # --- the model ----------------------------------------------------------------------------------

    async def _edit(self, job: Job) -> JobOutcome:
        data: dict[str, Any] = job.payload
        try:
            blobs, _ = await fetch_inputs(self.state, data["images"])
        except InputFailed as failed:
            return JobOutcome(False, 200, None, f"failed to load images[{failed.index}]: {failed.error}",
                              failed.error.kind, reason="error")
        try:
            first = image_dimensions(blobs[0], index=0)
        except EngineError as exc:
            return JobOutcome(False, 200, None, f"failed to load images[0]: {exc}", exc.kind, reason="error")
        aspect = data.get("aspect_ratio") or nearest_aspect(*first)
        size = output_size(aspect, data.get("resolution") or "1k")
        fmt = data.get("output_format") or "jpeg"
        job.log(f"Editing: size={size[0]}x{size[1]} ({aspect}), format={fmt}.")
        try:
            outputs = await self.state.in_thread(self._render, data, blobs, size, fmt, job)
        except EngineError as exc:
            where = f"images[{exc.index}]" if exc.index is not None else "the request"
            return JobOutcome(False, 200, None, f"failed to process {where}: {exc}", exc.kind, reason="error")
        return JobOutcome(True, 200, outputs)

    def _render(self, data: dict[str, Any], blobs: list[bytes], size: tuple[int, int], fmt: str,
                job: Job) -> list[str]:
        """Runs on a render thread: one output (gpt-image-2/edit has no num_images), URL or bare base64."""
        if self.state.current.render == "cached":
            blob = render_placeholder(size[0], size[1], fmt)
        else:
            blob = render_edit_images(blobs, data["prompt"], None, size, fmt, 1,
                                      quality=data.get("quality") or "medium")[0].data
        if data.get("enable_base64_output"):
            return [base64.b64encode(blob).decode("ascii")]
        return [self.state.files.put(blob, fmt).url(job.base_url)]

    # --- routes --------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["wavespeed"])

        async def result(request_id: str, request: Request) -> JSONResponse:
            job = look_up(request, self._unauthorized, lambda: self.state.runner.get(NAME, request_id),
                          lambda: _envelope(404, f"prediction {request_id} not found"))
            if isinstance(job, Response):
                return job
            return _envelope(200, "success", task_data(job))

        router.add_api_route("/api/v3/predictions/{request_id}/result", result, methods=["GET"],
                             response_model=None)
        router.add_api_route("/api/v3/predictions/{request_id}", result, methods=["GET"], response_model=None)

        @router.get("/api/v3/webhook/secret", response_model=None)
        async def secret(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            return _envelope(200, "success", {"secret": self.signer.secret})

        @router.post("/api/v3/{model:path}", response_model=None)
        async def submit(model: str, request: Request) -> Response:
            return await self.submit(request, model)

        return router


def build(state: SandboxState) -> ProviderMount:
    provider = WaveSpeedProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "WaveSpeedAI API v3 (https://api.wavespeed.ai)")
