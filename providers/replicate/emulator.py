"""Replicate's HTTP API under ``/replicate`` (stands in for ``https://api.replicate.com``).

Point the official client at it with ``REPLICATE_BASE_URL=http://127.0.0.1:PORT/replicate`` (or
``Client(base_url=...)``); it adds ``/v1/...`` itself, as it does for the real host.

Routes (all but the delivery route are under ``/replicate/v1`` and need ``Authorization: Bearer <token>``
or ``Token <token>``):

- ``POST /models/{owner}/{name}/predictions`` (body ``{input, webhook?, webhook_events_filter?, stream?}``,
  no other keys) and ``POST /predictions`` (``version`` = ``owner/name``) -> **201** with the prediction
  (status ``starting``). With ``Prefer: wait[=N]`` (N 1-60, default 60) the answer waits for the end:
  **201** with the terminal prediction, or, when N runs out, **202** with status ``starting`` (as the API
  documents; the official client then polls). ``Cancel-After: 30s|5m|1h30m|N`` (>= 5 s): past the deadline
  a prediction that has not started ends ``aborted``, a running one ``canceled``; the object has ``deadline``.
- ``GET /predictions/{id}``, ``POST /predictions/{id}/cancel`` (200, the prediction), ``GET /predictions``
  (``{next, previous, results}``: full prediction objects, newest first by ``created_at``, 100 a page;
  ``created_after`` (inclusive) and ``created_before`` (exclusive) ISO 8601 filters and ``source=web``, as
  Replicate's OpenAPI document lists them; ``next``/``previous`` are URLs carrying an opaque ``cursor``).
  Sandbox choices where Replicate is silent: the cursor is a keyset (predictions created while a client pages
  do not shift the next page); an unreadable cursor or filter is a 400 problem; ``source=web`` lists nothing
  (every sandbox prediction is an API one).
- ``GET /webhooks/default/secret`` -> ``{"key": "whsec_..."}``.
- ``POST /files`` (multipart ``content``, ``type``, ``metadata``) -> 201 file object; ``GET /files``,
  ``GET /files/{id}``, ``DELETE /files/{id}`` (204). A file's ``urls.get`` can be used as a model input.
- ``GET /replicate/delivery/{file}``: the outputs (stands in for ``replicate.delivery``), with or without the
  Authorization header: Replicate's API reference says API outputs need it, its official JavaScript client
  (``FileOutput``) fetches them without it; where sources conflict the sandbox accepts what either accepts
  (editq's worker sends the token, to the hosts its spec allows).

Model ``openai/gpt-image-2``: the body and the input are checked as Replicate checks them against their JSON
schemas: every violation in one **422** ``{"detail": "- <field>: <description>\\n...", "status": 422,
"title": "Input validation failed", "invalid_fields": [{"type", "field", "description"}]}`` with Replicate's
types and wording (``required``, ``additional_property_not_allowed``, ``enum``, ``invalid_type`` -- strict:
``"2"`` is not an integer --, ``number_gte``/``number_lte``, ``string_gte``, ``array_max_items``, ``format``).
The value sets follow the widest published schema copy (aspect ratios incl. ``auto``, 16:9, 9:16 and pixel
sizes; 1-10 images; ``background`` incl. ``transparent``). There is no mask input. ``logs`` is the model's
output so far (empty while ``starting``; never the runner's own lines), ending with the token counts the
model prints on success (``Input text token count: N`` ...). Cancel answers 200 with the prediction in every
state: queued or running -> ``canceled``; finished -> unchanged; unknown id -> 404.

Webhooks: the prediction JSON (the same body ``GET`` returns), signed Standard-Webhooks style
(``webhook-id: msg_<prediction id>``, the same on every resend and duplicate). Only the ``completed``
event is delivered (when ``webhook_events_filter`` is absent or contains it); ``start``/``output``/``logs``
events are not emulated. Errors use RFC 7807 bodies ``{"title", "detail", "status"}``.

Sandbox choices where Replicate is silent: an injected job failure ends ``failed`` with an error string; a
429 fault carries ``Retry-After`` and the "resets in ~Ns" text; a 5xx fault is a JSON 503; a submit-timeout
fault holds the request then answers 504 **after** creating nothing. Outputs (and inputs) are removed one
hour after completion (``output: null``, ``data_removed: true``), as for API predictions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default as email_policy
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from editq.sandbox.engine import CONTENT_TYPES, EngineError, image_dimensions, render_edit_images, render_placeholder
from editq.sandbox.files import MEDIA_TYPES, StoredFile
from editq.sandbox.inputs import InputError, fetch_image, summarize_for_log
from editq.sandbox.providers.common import (
    InputFailed,
    authorization_matches,
    fetch_inputs,
    iso_utc,
    kept_headers,
    look_up,
    parse_instant,
    random_id,
    submit_fault,
)
from editq.sandbox.runner import CancelResult, Job, JobOutcome, JobState, ProviderAdapter
from editq.sandbox.signing import StandardWebhookSigner
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "replicate"
PREFIX = "/replicate"
MODEL = "openai/gpt-image-2"
RETENTION_S = 3600.0
PAGE_SIZE = 100
_AUTH = re.compile(r"^(Bearer|Token)\s+\S+", re.IGNORECASE)
_PREFER = re.compile(r"^wait(=([1-9]|[1-9][0-9]|60))?$")
_DURATION = re.compile(r"^(?:(\d+)|(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?)$")
_ID_ALPHABET = string.ascii_lowercase + string.digits
BODY_KEYS = {"input", "webhook", "webhook_events_filter", "stream", "webhook_completed"}
EVENTS = ("start", "output", "logs", "completed")

ASPECT_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024), "3:2": (1536, 1024), "2:3": (1024, 1536), "16:9": (1536, 864), "9:16": (864, 1536),
}
PIXEL_SIZES = ("1024x1024", "1536x1024", "1024x1536", "2048x2048", "2048x1152", "1152x2048", "3840x2160",
               "2160x3840")
AspectRatio = Literal["1:1", "3:2", "2:3", "16:9", "9:16", "auto", "1024x1024", "1536x1024", "1024x1536",
                      "2048x2048", "2048x1152", "1152x2048", "3840x2160", "2160x3840"]
_OUT_TOKENS = {"low": 272, "medium": 1056, "high": 4160, "auto": 1056}  # per 1024x1024 image


class GptImage2Input(BaseModel):
    """Input schema of ``openai/gpt-image-2`` (widest published copy; unknown keys refused)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    input_images: list[str] = Field(default_factory=list, max_length=16)
    aspect_ratio: AspectRatio = "1:1"
    quality: Literal["low", "medium", "high", "auto"] = "auto"
    background: Literal["auto", "transparent", "opaque"] = "auto"
    moderation: Literal["auto", "low"] = "auto"
    output_format: Literal["webp", "png", "jpeg"] = "webp"
    output_compression: int = Field(90, ge=0, le=100)
    number_of_images: int = Field(1, ge=1, le=10)
    openai_api_key: str | None = None
    user_id: str | None = None

    @field_validator("input_images")
    @classmethod
    def _uris(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith(("http://", "https://", "data:")):
                raise ValueError("each input image must be an http(s) URL or a data: URI")
        return value

    def target_size(self) -> tuple[int, int] | None:
        if self.aspect_ratio == "auto":
            return None
        if self.aspect_ratio in ASPECT_SIZES:
            return ASPECT_SIZES[self.aspect_ratio]
        w, h = self.aspect_ratio.split("x")
        return int(w), int(h)


# what the shared runner writes into a job's log about the job itself: not the model's output, so not in `logs`
RUNNER_LINES = ("Request queued.", "Request started.", "Request completed.", "Request failed: ", "Unhandled error: ")


def model_log_lines(job: Job) -> list[str]:
    """The lines the model printed so far, each once and in order (Replicate's `logs` is the model's output)."""
    return [e["message"] for e in job.logs if not e["message"].startswith(RUNNER_LINES)]


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None,
            **extra: Any) -> JSONResponse:
    """An RFC 7807 problem-details answer, Replicate's error shape."""
    return JSONResponse({"title": title, "detail": detail, "status": status, **extra}, status_code=status,
                        headers=headers, media_type="application/problem+json")


def _prediction_not_found() -> JSONResponse:
    return problem(404, "Not found", "The requested prediction does not exist.")


def _iso(ts: float | None) -> str | None:
    return iso_utc(ts, "microseconds")


def _new_id() -> str:
    return random_id(_ID_ALPHABET, 26)


def parse_duration(value: str) -> float | None:
    """``Cancel-After`` syntax: ``30s``, ``5m``, ``1h30m45s`` or bare seconds; None if malformed."""
    m = _DURATION.match(value.strip())
    if not m or not value.strip():
        return None
    if m.group(1) is not None:
        return float(m.group(1))
    h, mins, s = (int(g) if g else 0 for g in m.groups()[1:])
    return float(h * 3600 + mins * 60 + s)


# ---- validation answers in Replicate's shape ------------------------------------------------------------------
# Replicate checks a request against the model's JSON schema and answers every violation at once:
# 422 {"detail": "- <field>: <description>\\n...", "status": 422, "title": "Input validation failed",
# "invalid_fields": [{"type", "field", "description"}]}; `field` is the object holding the fault for
# `required` / `additional_property_not_allowed` ("" for the body, "input" for the model input) and the
# property itself otherwise. Types are checked strictly: "2" is not an integer.
_STRINGS = ("prompt", "openai_api_key", "user_id")
_ENUMS: dict[str, tuple[str, ...]] = {
    "aspect_ratio": ("1:1", "3:2", "2:3", "16:9", "9:16", "auto", *PIXEL_SIZES),
    "quality": ("low", "medium", "high", "auto"),
    "background": ("auto", "transparent", "opaque"),
    "moderation": ("auto", "low"),
    "output_format": ("webp", "png", "jpeg"),
}
_INTEGERS: dict[str, tuple[int, int]] = {"output_compression": (0, 100), "number_of_images": (1, 10)}
MAX_INPUT_IMAGES = 16


def json_type(value: Any) -> str:
    """The JSON schema type name of a decoded JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def invalid(kind: str, field: str, description: str) -> dict[str, str]:
    return {"type": kind, "field": field, "description": description}


def _wrong_type(field: str, expected: str, value: Any) -> dict[str, str]:
    return invalid("invalid_type", field, f"Invalid type. Expected: {expected}, given: {json_type(value)}")


def _enum(field: str, name: str, allowed: tuple[str, ...]) -> dict[str, str]:
    quoted = ", ".join(f'"{a}"' for a in allowed)
    return invalid("enum", field, f"{name} must be one of the following: {quoted}")


def input_faults(inp: dict[str, Any]) -> list[dict[str, str]]:
    """`openai/gpt-image-2`'s input schema (the widest published copy) checked the way Replicate does."""
    faults = []
    if "prompt" not in inp:
        faults.append(invalid("required", "input", "prompt is required"))
    known = {*_STRINGS, *_ENUMS, *_INTEGERS, "input_images"}
    faults += [invalid("additional_property_not_allowed", "input", f"Additional property {k} is not allowed")
               for k in inp if k not in known]
    for name, value in inp.items():
        field = f"input.{name}"
        if name in _STRINGS or name in _ENUMS:
            if not isinstance(value, str):
                faults.append(_wrong_type(field, "string", value))
            elif name in _ENUMS and value not in _ENUMS[name]:
                faults.append(_enum(field, name, _ENUMS[name]))
            elif name == "prompt" and not value:
                faults.append(invalid("string_gte", field, "String length must be greater than or equal to 1"))
        elif name in _INTEGERS:
            low, high = _INTEGERS[name]
            if json_type(value) != "integer":
                faults.append(_wrong_type(field, "integer", value))
            elif value < low:
                faults.append(invalid("number_gte", field, f"Must be greater than or equal to {low}"))
            elif value > high:
                faults.append(invalid("number_lte", field, f"Must be less than or equal to {high}"))
        elif name == "input_images":
            if not isinstance(value, list):
                faults.append(_wrong_type(field, "array", value))
                continue
            if len(value) > MAX_INPUT_IMAGES:
                faults.append(invalid("array_max_items", field, f"Array must have at most {MAX_INPUT_IMAGES} items"))
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    faults.append(_wrong_type(f"{field}.{i}", "string", item))
                elif not item.startswith(("http://", "https://", "data:")):
                    faults.append(invalid("format", f"{field}.{i}", "Does not match format 'uri'"))
    return faults


def body_faults(body: dict[str, Any], *, version_route: bool) -> list[dict[str, str]]:
    """The request body (`schemas_prediction_request`, additionalProperties false)."""
    faults = []
    if version_route and "version" not in body:
        faults.append(invalid("required", "", "version is required"))
    if "input" not in body:
        faults.append(invalid("required", "", "input is required"))
    allowed = BODY_KEYS | ({"version"} if version_route else set())
    faults += [invalid("additional_property_not_allowed", "", f"Additional property {k} is not allowed")
               for k in body if k not in allowed]
    if "version" in body and version_route and not isinstance(body["version"], str):
        faults.append(_wrong_type("version", "string", body["version"]))
    if "input" in body and not isinstance(body["input"], dict):
        faults.append(_wrong_type("input", "object", body["input"]))
    for key in ("webhook", "webhook_completed"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                faults.append(_wrong_type(key, "string", body[key]))
            elif not body[key].startswith(("https://", "http://")):
                faults.append(invalid("format", key, "Does not match format 'uri'"))
    events = body.get("webhook_events_filter")
    if events is not None:
        if not isinstance(events, list):
            faults.append(_wrong_type("webhook_events_filter", "array", events))
        else:
            faults += [_enum(f"webhook_events_filter.{i}", f"webhook_events_filter.{i}", EVENTS)
                       for i, e in enumerate(events) if e not in EVENTS]
    if "stream" in body and not isinstance(body["stream"], bool):
        faults.append(_wrong_type("stream", "boolean", body["stream"]))
    return faults


def validation_problem(faults: list[dict[str, str]]) -> JSONResponse:
    lines = "".join(f"- {f['field']}: {f['description']}\n" if f["field"] else f"- {f['description']}\n"
                    for f in faults)
    return problem(422, "Input validation failed", lines, invalid_fields=faults)


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, str | None, bytes]]:
    """multipart/form-data -> {field: (filename, content type, bytes)} (stdlib email parser)."""
    message = BytesParser(policy=email_policy).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
    parts: dict[str, tuple[str | None, str | None, bytes]] = {}
    if not message.is_multipart():
        return parts
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        ctype = part.get_content_type() if part.get("content-type") else None
        parts[name] = (part.get_filename(), ctype, payload if isinstance(payload, bytes) else b"")
    return parts


def _estimate_tokens(inp: GptImage2Input, sizes: list[tuple[int, int]], out_size: tuple[int, int]) -> dict[str, int]:
    text = max(1, len(inp.prompt) // 4)
    image_in = 0
    for w, h in sizes:
        tiles = math.ceil(w / 512) * math.ceil(h / 512)
        image_in += 85 + 170 * min(tiles, 16)
    scale = (out_size[0] * out_size[1]) / (1024 * 1024)
    out = round(_OUT_TOKENS[inp.quality] * scale) * inp.number_of_images
    return {"text": text, "image": image_in, "output": out}


class ReplicateRunnerAdapter(ProviderAdapter):
    """Runner hooks: webhook body = the prediction object; outcomes in Replicate's terms."""

    name = NAME

    def __init__(self, provider: ReplicateProvider, signer: StandardWebhookSigner) -> None:
        self.provider = provider
        self.signer = signer

    def webhook_payload(self, job: Job) -> Any:
        events = job.extra.get("events")
        if events is not None and "completed" not in events:
            return None
        return self.provider.prediction(job)

    def failure_outcome(self, job: Job) -> JobOutcome:
        msg = "Prediction failed: the model raised an error (sandbox injected failure)."
        return JobOutcome(False, 200, None, msg, "failed", reason="injected_failure")

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 200, None, None, "canceled", reason="cancelled")

    def start_timeout_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 200, None, None, "aborted", reason="start_timeout")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        return JobOutcome(False, 200, None, "Prediction failed: internal error.", "failed", reason="crash")


class ReplicateProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.signer = StandardWebhookSigner(state.current.seed, NAME)
        self.adapter = ReplicateRunnerAdapter(self, self.signer)
        state.runner.register(self.adapter)
        self.files: dict[str, dict[str, Any]] = {}  # Files API objects by id

    # --- shaping ------------------------------------------------------------------------------

    @staticmethod
    def status(job: Job) -> str:
        if job.state is JobState.IN_QUEUE:
            return "starting"
        if job.state is JobState.IN_PROGRESS:
            return "processing"
        outcome = job.outcome
        if outcome is None:
            return "processing"
        if outcome.ok:
            return "succeeded"
        return {"cancelled": "canceled", "start_timeout": "aborted"}.get(outcome.reason, "failed")

    def prediction(self, job: Job, *, sync_pending: bool = False) -> dict[str, Any]:
        base = f"{job.base_url}{PREFIX}/v1/predictions/{job.request_id}"
        status = "starting" if sync_pending else self.status(job)
        done = job.state is JobState.COMPLETED and not sync_pending
        removed = done and job.completed_at is not None and time.time() - job.completed_at > RETENTION_S
        outcome = job.outcome if done else None
        output = None
        if outcome is not None and outcome.ok and not removed:
            output = [f"{job.base_url}{PREFIX}/delivery/{name}" for name in outcome.body["files"]]
        metrics: dict[str, Any] = {}
        if done and job.completed_at is not None:
            metrics["total_time"] = round(job.completed_at - job.received_at, 6)
            if job.inference_time is not None:
                metrics["predict_time"] = job.inference_time
        lines = [] if job.state is JobState.IN_QUEUE else model_log_lines(job)
        if outcome is not None and outcome.ok:
            tokens = outcome.body["tokens"]
            lines += [f"Input text token count: {tokens['text']}", f"Input image token count: {tokens['image']}",
                      f"Output token count: {tokens['output']}"]
        logs = "\n".join(lines)
        body: dict[str, Any] = {
            "id": job.request_id,
            "model": job.model,
            "version": "hidden",
            "input": {} if removed else job.extra["input"],
            "logs": "" if removed else logs,
            "output": output,
            "data_removed": removed,
            "error": outcome.error if outcome is not None and status == "failed" else None,
            "status": status,
            "created_at": _iso(job.received_at),
            "started_at": _iso(job.started_at),
            "completed_at": _iso(job.completed_at) if done else None,
            "source": "api",
            "urls": {"get": base, "cancel": base + "/cancel", "web": f"https://replicate.com/p/{job.request_id}"},
            "metrics": metrics,
        }
        if job.extra.get("deadline") is not None:
            body["deadline"] = _iso(job.extra["deadline"])
        return body

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _unauthorized(request: Request) -> JSONResponse | None:
        if authorization_matches(request, _AUTH):
            return None
        return problem(401, "Unauthenticated", "You did not pass a valid authentication token")

    def _find(self, prediction_id: str) -> Job | None:
        return self.state.runner.get(NAME, prediction_id)

    async def _wait_done(self, job: Job, seconds: float) -> bool:
        """Bounded wait for a prediction to end (server side of ``Prefer: wait`` and cancel)."""
        try:
            await asyncio.wait_for(job.finished.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _faults(self) -> JSONResponse | None:
        """Submit-time faults (rates as overridden for Replicate): the response to send, or None."""
        fault = await submit_fault(self.state, NAME, per_provider=True)
        if fault == "timeout":  # held, then answered after creating nothing
            return problem(504, "Gateway Timeout", "The server did not answer in time.")
        if fault == "5xx":
            return problem(503, "Service Unavailable", "The service is temporarily unavailable. Try again later.")
        if fault == "429":
            wait = max(1, math.ceil(self.state.current.retry_after_s))
            return problem(429, "Too Many Requests", f"Request was throttled. Your rate limit resets in ~{wait}s.",
                           {"Retry-After": str(wait)})
        return None

    # --- create -------------------------------------------------------------------------------

    async def create(self, request: Request, model: str, *, version_route: bool = False) -> Response:
        runner = self.state.runner
        raw = await request.body()
        denied = self._unauthorized(request)
        if denied is not None:
            runner.reject(NAME, "auth")
            return denied
        fault = await self._faults()
        if fault is not None:
            return fault
        try:
            body = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            runner.reject(NAME, "validation")
            return problem(400, "Invalid JSON", f"The request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            runner.reject(NAME, "validation")
            return validation_problem([_wrong_type("", "object", body)])
        faults = body_faults(body, version_route=version_route)
        if version_route:
            version = body.pop("version", None)
            if isinstance(version, str) and version:
                model = version.split(":")[0] if ":" in version and "/" in version else version
        if model and model != MODEL:
            runner.reject(NAME, "not_found")
            return problem(404, "Not found", f"Model {model} not found (this sandbox serves {MODEL}).")
        inp = body.get("input")
        if isinstance(inp, dict):
            faults += input_faults(inp)
        if faults:
            runner.reject(NAME, "validation")
            return validation_problem(faults)
        assert isinstance(inp, dict)
        webhook = body.get("webhook") or body.get("webhook_completed")
        events = body.get("webhook_events_filter")
        if body.get("webhook_completed") and not body.get("webhook"):
            events = ["completed"]
        prefer = request.headers.get("prefer")
        wait_s: float | None = None
        if prefer is not None:
            m = _PREFER.match(prefer.strip())
            if not m:
                runner.reject(NAME, "validation")
                return problem(400, "Invalid Prefer header", "Prefer must be 'wait' or 'wait=N' with N from 1 to 60.")
            wait_s = float(min(60, int(m.group(2)))) if m.group(2) else 60.0
        cancel_after: float | None = None
        if request.headers.get("cancel-after") is not None:
            cancel_after = parse_duration(request.headers["cancel-after"])
            if cancel_after is None or cancel_after < 5:
                runner.reject(NAME, "validation")
                return problem(400, "Invalid Cancel-After header",
                               "Cancel-After must be a duration such as 30s, 5m or 1h30m, at least 5 seconds.")
        payload = GptImage2Input.model_validate(inp)  # checked above: this cannot fail
        now = time.time()
        job = Job(
            provider=NAME,
            request_id=_new_id(),
            model=MODEL,
            work=self._gpt_image_2,
            payload=payload,
            input_summary=summarize_for_log(body),
            webhook_url=webhook,
            base_url=self.state.base_url(request),
            start_timeout_s=cancel_after,
            headers=kept_headers(request, names=("prefer", "cancel-after", "user-agent")),
            extra={"input": inp, "events": events, "deadline": now + cancel_after if cancel_after else None},
        )
        runner.submit(job)
        if cancel_after is not None:
            asyncio.get_running_loop().call_later(cancel_after, self._deadline, job)
        if wait_s is not None and not await self._wait_done(job, wait_s):
            return JSONResponse(self.prediction(job, sync_pending=True), status_code=202,
                                headers={"Location": self.prediction(job)["urls"]["get"]})
        return JSONResponse(self.prediction(job), status_code=201)

    def _deadline(self, job: Job) -> None:
        if job.state is JobState.IN_PROGRESS:
            self.state.runner.cancel(job)

    # --- the model ------------------------------------------------------------------------------

    async def _gpt_image_2(self, job: Job) -> JobOutcome:
        inp: GptImage2Input = job.payload
        job.log(f"Using {len(inp.input_images)} input image(s).")
        try:
            images, _ = await fetch_inputs(self.state, inp.input_images, fetch=self._fetch)
        except InputFailed as failed:
            return JobOutcome(False, 200, None, f"Failed to load input_images[{failed.index}]: {failed.error}",
                              "failed", reason="error")
        job.log(f"Generating {inp.number_of_images} image(s), aspect_ratio={inp.aspect_ratio}, "
                f"quality={inp.quality}, format={inp.output_format}.")
        try:
            names, tokens = await self.state.in_thread(self._render_and_store, inp, images)
        except EngineError as exc:
            where = f"input_images[{exc.index}]" if exc.index is not None else "input"
            return JobOutcome(False, 200, None, f"Invalid {where}: {exc}", "failed", reason="error")
        job.log(f"Generated {len(names)} image(s).")
        return JobOutcome(True, 200, {"files": names, "tokens": tokens})

    async def _fetch(self, url: str, client: Any, *, max_bytes: int, timeout: float) -> bytes:
        own = self._own_file(url)
        if own is not None:
            path = self.state.files.path_for(own)
            if path is None:
                raise InputError("The file does not exist (deleted or expired).", url=url)
            return await asyncio.to_thread(path.read_bytes)
        return await fetch_image(url, client, max_bytes=max_bytes, timeout=timeout)

    def _own_file(self, url: str) -> str | None:
        """Stored name of a Files-API URL of this sandbox, if ``url`` is one."""
        marker = f"{PREFIX}/v1/files/"
        if marker not in url:
            return None
        file_id = url.split(marker, 1)[1].split("?")[0].strip("/")
        obj = self.files.get(file_id)
        return obj["_name"] if obj else f"{file_id}.missing"

    def _render_and_store(self, inp: GptImage2Input, images: list[bytes]) -> tuple[list[str], dict[str, int]]:
        """Runs on a render thread."""
        fmt = inp.output_format
        sizes = [image_dimensions(data, index=i) for i, data in enumerate(images)]
        target = inp.target_size()
        if self.state.current.render == "cached" or not images:
            w, h = target or (sizes[0] if sizes else (1024, 1024))
            blobs = [render_placeholder(w, h, fmt) for _ in range(inp.number_of_images)]
            out_size = (w, h)
        else:
            rendered = render_edit_images(images, inp.prompt, None, target, fmt, inp.number_of_images,
                                          quality=inp.quality if inp.quality != "auto" else "high")
            blobs = [r.data for r in rendered]
            out_size = (rendered[0].width, rendered[0].height)
        names = [self.state.files.put(blob, fmt).name for blob in blobs]
        return names, _estimate_tokens(inp, sizes, out_size)

    # --- files API ----------------------------------------------------------------------------

    def _file_object(self, obj: dict[str, Any], base: str) -> dict[str, Any]:
        out = {k: v for k, v in obj.items() if not k.startswith("_")}
        out["urls"] = {"get": f"{base}{PREFIX}/v1/files/{obj['id']}"}
        return out

    async def upload(self, request: Request) -> Response:
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        ctype_header = request.headers.get("content-type", "")
        if not ctype_header.startswith("multipart/form-data"):
            return problem(415, "Unsupported Media Type", "Upload files as multipart/form-data.")
        parts = _multipart(ctype_header, await request.body())
        if "content" not in parts or parts["content"][0] is None:
            return problem(422, "Invalid request body", "- content: a file part named 'content' is required\n")
        filename, part_type, data = parts["content"]
        if len(data) >= 100 * 1024 * 1024:
            return problem(413, "Payload Too Large", "Files must be smaller than 100 MB.")
        filename = filename or "file"
        if len(filename.encode()) > 255:
            return problem(422, "Invalid request body", "- content: the filename must be at most 255 bytes\n")
        ctype = parts["type"][2].decode() if "type" in parts else (part_type or "application/octet-stream")
        try:
            metadata = json.loads(parts["metadata"][2] or b"{}") if "metadata" in parts else {}
        except json.JSONDecodeError:
            return problem(422, "Invalid request body", "- metadata: must be JSON\n")
        ext = next((k for k, v in MEDIA_TYPES.items() if v == ctype.split(";")[0] and k != "jpg"), "bin")
        stored: StoredFile = await asyncio.to_thread(self.state.files.put, data, ext)
        now = time.time()
        obj = {
            "id": stored.file_id, "name": filename, "content_type": ctype, "size": len(data),
            "etag": hashlib.md5(data).hexdigest(), "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
            "metadata": metadata, "created_at": _iso(now), "expires_at": _iso(now + RETENTION_S),
            "_name": stored.name,
        }
        self.files[stored.file_id] = obj
        return JSONResponse(self._file_object(obj, self.state.base_url(request)), status_code=201)

    # --- routes -------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["replicate"])

        @router.post("/v1/models/{owner}/{name}/predictions", response_model=None)
        async def create_model(owner: str, name: str, request: Request) -> Response:
            return await self.create(request, f"{owner}/{name}")

        @router.post("/v1/predictions", response_model=None)
        async def create_version(request: Request) -> Response:
            return await self.create(request, "", version_route=True)

        @router.get("/v1/predictions/{prediction_id}", response_model=None)
        async def get(prediction_id: str, request: Request) -> JSONResponse:
            job = look_up(request, self._unauthorized, lambda: self._find(prediction_id), _prediction_not_found)
            if isinstance(job, Response):
                return job
            return JSONResponse(self.prediction(job))

        @router.post("/v1/predictions/{prediction_id}/cancel", response_model=None)
        async def cancel(prediction_id: str, request: Request) -> JSONResponse:
            job = look_up(request, self._unauthorized, lambda: self._find(prediction_id), _prediction_not_found)
            if isinstance(job, Response):
                return job
            if self.state.runner.cancel(job) is CancelResult.CANCELLATION_REQUESTED:
                await self._wait_done(job, 2.0)
            return JSONResponse(self.prediction(job))

        @router.get("/v1/predictions", response_model=None)
        async def list_predictions(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            query = list_query(request.query_params)
            if isinstance(query, JSONResponse):
                return query
            jobs = [j for j in self.state.runner.jobs(NAME) if query.selects(j)]
            page, older, newer = list_page(jobs, query.cursor)
            base = f"{self.state.base_url(request)}{PREFIX}/v1/predictions"
            link = lambda c: f"{base}?{urlencode({**query.filters, 'cursor': c})}"  # noqa: E731
            return JSONResponse({"next": link(older) if older else None, "previous": link(newer) if newer else None,
                                 "results": [self.prediction(j) for j in page]})

        @router.get("/v1/webhooks/default/secret", response_model=None)
        async def webhook_secret(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            return JSONResponse({"key": self.signer.secret})

        @router.post("/v1/files", response_model=None)
        async def files_create(request: Request) -> Response:
            return await self.upload(request)

        @router.get("/v1/files", response_model=None)
        async def files_list(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            base = self.state.base_url(request)
            results = [self._file_object(o, base) for o in reversed(self.files.values())]
            return JSONResponse({"next": None, "previous": None, "results": results})

        @router.get("/v1/files/{file_id}", response_model=None)
        async def files_get(file_id: str, request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            obj = self.files.get(file_id)
            if obj is None:
                return problem(404, "Not found", "The requested file does not exist.")
            return JSONResponse(self._file_object(obj, self.state.base_url(request)))

        @router.delete("/v1/files/{file_id}", response_model=None)
        async def files_delete(file_id: str, request: Request) -> Response:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            if self.files.pop(file_id, None) is None:
                return problem(404, "Not found", "The requested file does not exist.")
            return Response(status_code=204)

        @router.api_route("/delivery/{name}", methods=["GET", "HEAD"], response_model=None)
        async def delivery(name: str, request: Request) -> Response:
            # Sources conflict: the API reference says outputs need the token; the official JS client
            # downloads them without it (and the Next.js guide loads them by URL). Accept either; a malformed
            # Authorization header is still refused.
            if "authorization" in request.headers and (denied := self._unauthorized(request)) is not None:
                return denied
            path = self.state.files.path_for(name)
            if path is None or time.time() - path.stat().st_mtime > RETENTION_S:
                return problem(404, "Not found", "The file does not exist or has been deleted.")
            ext = name.rsplit(".", 1)[1]
            media = CONTENT_TYPES.get(ext) or MEDIA_TYPES.get(ext, "application/octet-stream")
            return FileResponse(path, media_type=media)

        return router


# ---- the list of predictions (pure) -------------------------------------------------------------------------------


def encode_cursor(job: Job, direction: str) -> str:
    """Opaque keyset cursor: the page goes on `direction` ("older"/"newer") from this prediction."""
    raw = json.dumps([direction, job.received_at, job.request_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[str, float, str] | None:
    try:
        direction, at, pid = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, TypeError):
        return None
    if direction not in ("older", "newer") or not isinstance(at, (int, float)) or not isinstance(pid, str):
        return None
    return direction, float(at), pid


@dataclass(frozen=True)
class ListQuery:
    created_after: float | None
    created_before: float | None
    web_only: bool
    cursor: tuple[str, float, str] | None
    filters: dict[str, str]  # the filters as given, carried into the next/previous links

    def selects(self, job: Job) -> bool:
        if self.web_only:  # every sandbox prediction is created through the API
            return False
        if self.created_after is not None and job.received_at < self.created_after:
            return False
        return self.created_before is None or job.received_at < self.created_before


def list_query(params: Mapping[str, str]) -> ListQuery | JSONResponse:
    """The list route's query (created_after inclusive, created_before exclusive, source=web, cursor), or its 400."""
    times: dict[str, float | None] = {}
    filters: dict[str, str] = {}
    for name in ("created_after", "created_before"):
        text = params.get(name)
        times[name] = None
        if text:
            times[name] = parse_instant(text)
            if times[name] is None:
                return problem(400, "Invalid parameter", f"{name} must be an ISO 8601 date-time")
            filters[name] = text
    source = params.get("source")
    if source:
        if source != "web":
            return problem(400, "Invalid parameter", "source must be web")
        filters["source"] = source
    cursor = None
    if params.get("cursor"):
        cursor = decode_cursor(params["cursor"])
        if cursor is None:
            return problem(400, "Invalid cursor", "The cursor is not valid")
    return ListQuery(times["created_after"], times["created_before"], source == "web", cursor, filters)


def list_page(jobs: list[Job], cursor: tuple[str, float, str] | None) -> tuple[list[Job], str | None, str | None]:
    """One page of `jobs`, newest first (by creation, then id), from `cursor`: the page, and the cursors of
    the older and the newer pages (None where there are none). Keyset cursors: predictions created while a
    client pages never shift what the next page holds."""
    ordered = sorted(jobs, key=lambda j: (j.received_at, j.request_id), reverse=True)
    keys = [(j.received_at, j.request_id) for j in ordered]
    if cursor is None:
        start = 0
    elif cursor[0] == "older":
        start = next((i for i, key in enumerate(keys) if key < (cursor[1], cursor[2])), len(keys))
    else:
        first_newer_end = next((i for i, key in enumerate(keys) if key <= (cursor[1], cursor[2])), len(keys))
        start = max(0, first_newer_end - PAGE_SIZE)
        end = first_newer_end
        page = ordered[start:end]
        return page, encode_cursor(page[-1], "older") if page and end < len(ordered) else None, \
            encode_cursor(page[0], "newer") if page and start > 0 else None
    page = ordered[start:start + PAGE_SIZE]
    older = encode_cursor(page[-1], "older") if page and start + PAGE_SIZE < len(ordered) else None
    newer = encode_cursor(page[0], "newer") if page and start > 0 else None
    return page, older, newer


def build(state: SandboxState) -> ProviderMount:
    provider = ReplicateProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "Replicate HTTP API (https://api.replicate.com), model openai/gpt-image-2")


__all__ = ["MODEL", "GptImage2Input", "ReplicateProvider", "build", "parse_duration"]
