"""ModelRunner's queue API under ``/modelrunner`` (stands in for ``https://queue.modelrunner.run``, and for
``https://modelrunner.run`` for the webhook secret).

Routes (``{endpoint}`` = the model path, e.g. ``openai/gpt-image-2/edit``; ``Authorization: Key <key>``):

- ``POST /modelrunner/{endpoint}`` submit: the model input at the top level plus the reserved keys ``webhook``,
  ``webhook_events_filter``, ``metadata`` (stripped before validation); header ``x-modelrunner-queue-priority``
  (``low`` queues behind ``normal``) -> **201** ``{status: "IN_QUEUE", request_id (21 chars), response_url,
  status_url, cancel_url, queue_position: 0, logs: [], metrics: {}}`` (+ the webhook keys echoed back).
- Status, result and cancel answer under the full model path (``openai/gpt-image-2/edit``, as the submit answer's
  URLs name them) and under ``{owner}/{model name}`` alone (``openai/gpt-image-2``: openapi.json's
  ``/{ownerName}/{modelName}/requests/{id}``, which ``@modelrunner/client`` builds).
- ``GET .../{endpoint}/requests/{id}/status`` -> 200 IN_QUEUE / IN_PROGRESS / COMPLETED; a FAILED request
  answers **400** with the same envelope plus ``error``.
- ``GET .../{endpoint}/requests/{id}`` and ``GET /modelrunner/requests/{id}`` -> the result object
  ``{id, modelEndpoint, status, billingStatus, input, output, error, metadata, inferenceTime, delayTime,
  createdAt, updatedAt, totalPrice}`` with the model output nested under ``output``; **400** before completion;
  **422** (``billingStatus: "failed"``) when the generation failed at the provider.
- ``PUT|GET .../{endpoint}/requests/{id}/cancel`` -> the status envelope; cancels nothing (as documented for
  model endpoints).
- ``GET /modelrunner/webhooks/default/secret`` -> ``{"key": "whsec_<base64>"}``.
- Webhooks: the result object plus ``event: "completed"``, signed with Standard Webhooks (``webhook-id`` stable
  across retries, ``v1,<base64>`` HMAC-SHA256 keyed with the base64-decoded secret).

Sandbox choices where ModelRunner is silent or unconfirmed: the model is assumed to take fal's
``openai/gpt-image-2/edit`` input (same schema and rules as ``/fal``); validation errors are 400 with ``error`` as a
list of zod-like issues ``{path, message, code}``, repeated in ``details.validationErrors`` (errors.mdx shows
``details: {code, validationErrors}``; ``@modelrunner/client`` raises ``ValidationError`` only when it is there);
error bodies carry ``error``, ``message``, ``statusCode`` and ``request_id``; an injected job failure or an unusable
input is a provider failure (COMPLETED + ``billingStatus: "failed"``, result 422); a crash of the emulated model is
FAILED (status 400); ``totalPrice`` is a per-image sandbox price by quality; the ``start`` webhook event (best
effort on ModelRunner) is never sent; ``webhook`` may be plain http on loopback (the real service requires public
HTTPS). Input types are checked strictly, as a JavaScript (zod) service reads JSON: ``"2"`` is not a number and
``"true"`` not a boolean, but ``2.0`` is the integer 2; explicit ``null`` is allowed where the field is optional
(``mask_url`` and the reserved keys), refused elsewhere. An explicit ``webhook_events_filter: []`` asks for no
deliveries. Cancel answers exactly what the status URL answers in every state (400 for FAILED, 404 for an unknown
request) and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from editq.providers.fal.emulator_schema import GptImage2EditInput
from editq.sandbox.engine import CONTENT_TYPES, EngineError, image_dimensions, render_edit_images, render_placeholder
from editq.sandbox.inputs import summarize_for_log
from editq.sandbox.providers.common import (
    KEY_AUTH,
    InputFailed,
    admit,
    authorization_matches,
    fetch_inputs,
    iso_utc,
    kept_headers,
    look_up,
    queue_priority,
    queue_urls,
    random_id,
    retry_after,
)
from editq.sandbox.runner import Job, JobOutcome, JobState, ProviderAdapter
from editq.sandbox.signing import StandardWebhookSigner
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "modelrunner"
PREFIX = "/modelrunner"
MODELS = ("openai/gpt-image-2/edit",)
RESERVED = ("webhook", "webhook_events_filter", "metadata")
EVENTS = ("completed", "start")
PRICES = {"low": "0.01", "medium": "0.06", "high": "0.22", "auto": "0.22"}  # sandbox price per image (USD)
_ID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"


def _new_id() -> str:
    return random_id(_ID_ALPHABET, 21)


def _error(status: int, error: Any, *, request_id: str | None = None, details: Any = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    message = error if isinstance(error, str) else "Invalid request body"
    body: dict[str, Any] = {"error": error, "message": message, "statusCode": status,
                            "request_id": request_id or _new_id()}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def js_numbers(value: Any) -> Any:
    """JSON as a JavaScript service reads it: one number type, so `2.0` is the integer 2."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [js_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: js_numbers(v) for k, v in value.items()}
    return value


def validate_input(model_input: dict[str, Any]) -> GptImage2EditInput:
    """fal's input schema with JSON types checked strictly (a zod-validated API does not coerce `"2"` to 2 or
    `"true"` to true); raises ValidationError."""
    return GptImage2EditInput.model_validate_json(json.dumps(js_numbers(model_input)), strict=True)


def _issues(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"path": list(err["loc"]), "message": err["msg"], "code": err["type"]}
            for err in exc.errors(include_url=False, include_input=False)]


class Refused(ValueError):
    pass


def split_reserved(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model input, reserved keys), checking the reserved keys the way ModelRunner documents them."""
    reserved = {k: data[k] for k in RESERVED if k in data}
    model_input = {k: v for k, v in data.items() if k not in RESERVED}
    webhook = reserved.get("webhook")
    if webhook is not None:
        parts = urlsplit(webhook) if isinstance(webhook, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or len(webhook) > 2048:
            raise Refused("webhook must be an absolute URL of at most 2048 characters")
        if parts.username or parts.password:
            raise Refused("webhook must not embed credentials")
    events = reserved.get("webhook_events_filter")
    if events is not None:
        if webhook is None:
            raise Refused("webhook_events_filter requires webhook")
        if not isinstance(events, list) or not all(e in EVENTS for e in events):
            raise Refused(f"webhook_events_filter must be a list of: {', '.join(EVENTS)}")
    metadata = reserved.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 16:
            raise Refused("metadata must be an object with at most 16 keys")
        for key, value in metadata.items():
            if not 1 <= len(key) <= 64 or not isinstance(value, str) or len(value) > 512:
                raise Refused("metadata keys must be 1-64 characters and values strings of at most 512")
    return model_input, reserved


def events_of(reserved: dict[str, Any]) -> list[str]:
    """The events a request is delivered: its filter, `["completed"]` when absent or null (the documented
    default); an explicit empty list asks for none."""
    events = reserved.get("webhook_events_filter")
    return ["completed"] if events is None else list(events)


class ModelRunnerRunnerAdapter(ProviderAdapter):
    name = NAME

    def __init__(self, signer: StandardWebhookSigner) -> None:
        self.signer = signer

    def webhook_payload(self, job: Job) -> Any:
        if "completed" not in job.extra.get("events", ["completed"]):
            return None
        return {"event": "completed", **result_object(job)}

    def failure_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 422, None, "Provider error: the model failed to process the request (sandbox "
                          "injected job failure)", "provider_error", reason="injected_failure")

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 400, None, "Request was cancelled.", "CANCELLED", reason="cancelled")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        return JobOutcome(False, 400, None, "Request force-failed: internal error", "FAILED", reason="crash")


def _request_paths(model: str) -> tuple[str, str]:
    """The endpoint prefixes a request of ``model`` answers under: the full model path (the ``status_url`` /
    ``response_url`` / ``cancel_url`` of the submit answer) and ``{owner}/{model name}`` alone (openapi.json's
    ``/{ownerName}/{modelName}/requests/...``, which is what ``@modelrunner/client`` builds: it drops the path)."""
    return model, "/".join(model.split("/")[:2])


def _status(job: Job) -> str:
    if job.state is not JobState.COMPLETED or job.outcome is None:
        return job.state.value
    if job.outcome.error_type in ("FAILED", "CANCELLED"):
        return job.outcome.error_type
    return "COMPLETED"


def _billing(job: Job) -> str:
    outcome = job.outcome
    if job.state is not JobState.COMPLETED or outcome is None:
        return "pending"
    return "charged" if outcome.ok else "failed"


def result_object(job: Job) -> dict[str, Any]:
    outcome = job.outcome
    ok = outcome is not None and outcome.ok
    started = job.started_at
    return {
        "id": job.request_id,
        "modelEndpoint": job.model,
        "status": _status(job),
        "billingStatus": _billing(job),
        "input": job.extra.get("input"),
        "output": outcome.body if ok and outcome is not None else None,
        "error": outcome.error if outcome is not None and not ok else None,
        "metadata": job.extra.get("metadata") or {},
        "inferenceTime": round((job.inference_time or 0) * 1000) if job.inference_time is not None else None,
        "delayTime": round((started - job.received_at) * 1000) if started is not None else None,
        "createdAt": iso_utc(job.received_at),
        "updatedAt": iso_utc(job.completed_at or job.started_at or job.received_at),
        "totalPrice": job.extra.get("price") if ok else "0",
    }


class ModelRunnerProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.signer = StandardWebhookSigner(state.current.seed, "modelrunner")
        self.adapter = ModelRunnerRunnerAdapter(self.signer)
        state.runner.register(self.adapter)

    @staticmethod
    def _unauthorized(request: Request) -> JSONResponse | None:
        if authorization_matches(request, KEY_AUTH):
            return None
        return _error(401, "Missing or invalid Authorization header. Use 'Authorization: Key <your_key>'.")

    @staticmethod
    def _urls(job: Job) -> dict[str, str]:
        return queue_urls(f"{job.base_url}{PREFIX}/{job.model}/requests/{job.request_id}")

    def _envelope(self, job: Job) -> dict[str, Any]:
        body: dict[str, Any] = {"status": _status(job), "request_id": job.request_id, **self._urls(job),
                                "queue_position": 0, "logs": [], "metrics": {}}
        if job.inference_time is not None and job.state is JobState.COMPLETED:
            body["metrics"] = {"inference_time": job.inference_time}
        if body["status"] in ("FAILED", "CANCELLED") and job.outcome is not None:
            body["error"] = job.outcome.error
        return body

    def _find(self, endpoint: str | None, request_id: str) -> Job | None:
        job = self.state.runner.get(NAME, request_id)
        if job is None or (endpoint is not None and endpoint.strip("/") not in _request_paths(job.model)):
            return None
        return job

    def _look_up(self, request: Request, endpoint: str | None, request_id: str) -> Job | JSONResponse:
        """The job of a status/result/cancel route, or the answer to return instead (401, then 404)."""
        return look_up(request, self._unauthorized, lambda: self._find(endpoint, request_id),
                       lambda: _error(404, "Request not found", request_id=request_id))

    # --- submit -----------------------------------------------------------------------------------

    async def submit(self, request: Request, endpoint: str) -> Response:
        runner, cfg = self.state.runner, self.state.current
        raw = await request.body()
        refused = await admit(self.state, NAME, request, self._unauthorized, {
            "timeout": lambda: _error(504, "Gateway timeout"),
            "5xx": lambda: _error(500, "Internal server error"),
            "429": lambda: _error(429, "Too many requests", headers=retry_after(cfg)),
        })
        if refused is not None:
            return refused
        endpoint = endpoint.strip("/")
        if endpoint not in MODELS:
            runner.reject(NAME, "not_found")
            return _error(404, f"Model '{endpoint}' not found")
        if len(raw) > 10 * 1024 * 1024:
            runner.reject(NAME, "validation")
            return _error(413, "Request body larger than 10 MB")
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise Refused("request body must be a JSON object")
            model_input, reserved = split_reserved(data)
            payload = validate_input(model_input)
        except json.JSONDecodeError as exc:
            runner.reject(NAME, "validation")
            return _error(400, f"Invalid JSON body: {exc.msg}")
        except Refused as exc:
            runner.reject(NAME, "validation")
            return _error(400, str(exc))
        except ValidationError as exc:
            runner.reject(NAME, "validation")
            issues = _issues(exc)
            return _error(400, issues, details={"code": "VALIDATION_ERROR", "validationErrors": issues})
        request_id = _new_id()
        job = Job(
            provider=NAME,
            request_id=request_id,
            model=endpoint,
            work=self._edit,
            payload=payload,
            input_summary=summarize_for_log(data),
            webhook_url=reserved.get("webhook"),
            base_url=self.state.base_url(request),
            priority=queue_priority(request, "x-modelrunner-queue-priority"),
            headers=kept_headers(request, prefix="x-modelrunner-"),
            extra={
                "input": summarize_for_log(model_input),
                "metadata": reserved.get("metadata") or {},
                "events": events_of(reserved),
                "price": f"{float(PRICES[payload.quality]) * payload.num_images:.2f}",
            },
        )
        runner.submit(job)
        body = self._envelope(job)
        body["status"] = "IN_QUEUE"
        for key in ("webhook", "webhook_events_filter"):
            if key in reserved:
                body[key] = reserved[key]
        if reserved.get("webhook") is not None and reserved.get("webhook_events_filter") is None:
            body["webhook_events_filter"] = ["completed"]
        return JSONResponse(body, status_code=201)

    # --- the model (fal's gpt-image-2 edit input, by assumption) -----------------------------------------

    async def _edit(self, job: Job) -> JobOutcome:
        inp: GptImage2EditInput = job.payload
        try:
            images, mask = await fetch_inputs(self.state, inp.image_urls, inp.mask_url)
        except InputFailed as failed:
            where = "mask_url" if failed.mask else f"image_urls[{failed.index}]"
            return JobOutcome(False, 422, None, f"Provider error: {where}: {failed.error}", "provider_error",
                              reason="error")
        try:
            entries = await self.state.in_thread(self._render, inp, images, mask, job)
        except EngineError as exc:
            return JobOutcome(False, 422, None, f"Provider error: {exc}", "provider_error", reason="error")
        return JobOutcome(True, 200, {"images": entries})

    def _render(self, inp: GptImage2EditInput, images: list[bytes], mask: bytes | None,
                job: Job) -> list[dict[str, Any]]:
        """Runs on a render thread."""
        fmt = inp.output_format
        if self.state.current.render == "cached":
            size = inp.target_size() or image_dimensions(images[0], index=0)
            blobs = [(render_placeholder(size[0], size[1], fmt), size)] * inp.num_images
        else:
            rendered = render_edit_images(images, inp.prompt, mask, inp.target_size(), fmt, inp.num_images,
                                          quality=inp.quality)
            blobs = [(r.data, (r.width, r.height)) for r in rendered]
        entries = []
        for data, (width, height) in blobs:
            stored = self.state.files.put(data, fmt)
            entries.append({"url": stored.url(job.base_url), "content_type": CONTENT_TYPES[fmt],
                            "file_name": stored.name, "file_size": stored.size, "width": width, "height": height})
        return entries

    # --- routes --------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["modelrunner"])

        @router.get("/webhooks/default/secret", response_model=None)
        async def secret(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            return denied or JSONResponse({"key": self.signer.secret})

        async def result_for(endpoint: str | None, request_id: str, request: Request) -> JSONResponse:
            job = self._look_up(request, endpoint, request_id)
            if isinstance(job, Response):
                return job
            if job.state is not JobState.COMPLETED or job.outcome is None:
                return _error(400, "Request is not completed yet", request_id=request_id)
            body = result_object(job)
            if job.outcome.ok:
                return JSONResponse(body)
            if body["status"] in ("FAILED", "CANCELLED"):
                return JSONResponse({**body, "message": body["error"], "statusCode": 400}, status_code=400)
            return JSONResponse({**body, "message": body["error"], "statusCode": 422, "request_id": request_id},
                                status_code=422)

        @router.get("/requests/{request_id}", response_model=None)
        async def result_by_id(request_id: str, request: Request) -> JSONResponse:
            return await result_for(None, request_id, request)

        @router.get("/{endpoint:path}/requests/{request_id}/status", response_model=None)
        async def status(endpoint: str, request_id: str, request: Request) -> JSONResponse:
            job = self._look_up(request, endpoint, request_id)
            if isinstance(job, Response):
                return job
            body = self._envelope(job)
            return JSONResponse(body, status_code=400 if body["status"] == "FAILED" else 200)

        async def cancel(endpoint: str, request_id: str, request: Request) -> JSONResponse:
            # model endpoints: cancels nothing, answers the current status exactly as the status URL does
            return await status(endpoint, request_id, request)

        router.add_api_route("/{endpoint:path}/requests/{request_id}/cancel", cancel, methods=["PUT", "GET"],
                             response_model=None)

        @router.get("/{endpoint:path}/requests/{request_id}", response_model=None)
        async def result(endpoint: str, request_id: str, request: Request) -> JSONResponse:
            return await result_for(endpoint, request_id, request)

        @router.post("/{endpoint:path}", response_model=None)
        async def submit(endpoint: str, request: Request) -> Response:
            return await self.submit(request, endpoint)

        return router


def build(state: SandboxState) -> ProviderMount:
    provider = ModelRunnerProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "ModelRunner queue API (https://queue.modelrunner.run)")
