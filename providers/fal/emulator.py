"""fal's queue protocol under ``/fal`` (stands in for ``https://queue.fal.run``).

Routes (``{app}`` = ``owner/app``, the endpoint path such as ``/edit`` is dropped after submit):

- ``POST /fal/{owner}/{app}[/{path}]`` submit (``?fal_webhook=``; ``X-Fal-Queue-Priority``,
  ``X-Fal-Request-Timeout``, ``X-Fal-No-Retry`` accepted) -> 200 IN_QUEUE envelope.
- ``GET /fal/{app}/requests/{id}/status[?logs=1|0|true|false]`` -> 202 IN_QUEUE/IN_PROGRESS, 200 COMPLETED.
- ``GET /fal/{app}/requests/{id}/status/stream`` -> server-sent status events until COMPLETED.
- ``GET /fal/{app}/requests/{id}`` -> the model's output and status code; **400**
  ``{"detail": "Request is still in progress"}`` (or "in queue") before completion.
- ``PUT /fal/{app}/requests/{id}/cancel`` -> 202 CANCELLATION_REQUESTED / 400 ALREADY_COMPLETED / 404 NOT_FOUND.
- ``GET /fal/.well-known/jwks.json`` -> the webhook-signing public key.
- ``GET /fal-api/v1/models/requests/by-endpoint`` (stands in for fal's Platform API,
  ``https://api.fal.ai/v1``): the request history, see "Request history" below.
- ``POST /fal-rest/storage/auth/token`` and ``POST /fal-rest/storage/upload/initiate`` (stand in for
  ``https://rest.fal.ai``); uploads land in ``/files`` (stands in for the CDN).  For ``fal_client``:
  ``client.QUEUE_URL_FORMAT = f"{base}/fal/"``, ``client.REST_URL = f"{base}/fal-rest"``,
  ``client.CDN_URL = base``.

Fidelity rules for ``openai/gpt-image-2/edit`` (sources: shared/reference/provider-fal-and-modelrunner.md;
[C] confirmed, [T] third-party, [I] inferred; each rule has a test in tests/test_sandbox_fal.py):

- Types and defaults: as fal's published schema states them (section 5 [C]); see
  :mod:`providers.fal.emulator_schema`.  ``num_images: "2"``, ``sync_mode: "true"``, ``null`` where the
  field has a non-null default are a 422 ``{"detail": [{loc, msg, type}]}`` (section 1.7 [C]);
  ``mask_url: null`` is accepted (fal's pydantic ``Optional`` field; the TS types say only "optional":
  the sandbox accepts what either accepts).
- Sizes: ``image_size`` presets and ``"auto"`` render the named (or first input's) size fitted into
  GPT Image 2's limits (section 5: multiples of 16, edge <= 3840, aspect <= 3:1, 655,360..8,294,400
  px; [C] for text-to-image, [I] for edit).  No source says what fal renders for the presets below
  the pixel minimum (``square`` 512x512, ``portrait_16_9``/``landscape_16_9`` 576x1024): the sandbox
  scales them up to the nearest valid size keeping the aspect ratio (816x816, 608x1088, 1088x608);
  ``"auto"`` on a 512x512 input also renders 816x816.  ``width``/``height`` in the result are the
  bytes' dimensions.  ModelRunner's emulator reuses the input schema but not this size fitting.
- Cancel (section 1.8 [C] statuses, [T]/[I] codes): queued -> 202 ``CANCELLATION_REQUESTED`` and the
  request is removed at once (status 200 COMPLETED with ``error_type="request_cancelled"``, result 400);
  running -> 202 ``CANCELLATION_REQUESTED``, the runner is stopped and the request then ends the same
  way; completed (including cancelled) -> 400 ``ALREADY_COMPLETED``; unknown id -> 404 ``NOT_FOUND``.
  fal also documents an ``OK`` status; the sandbox never sends it (no source says when fal does).
- Status: ``GET .../status?logs=1`` returns every log line so far (the Python client's
  ``InProgress(logs)``); ``.../status/stream?logs=1`` sends an event per change and each event carries
  only the lines new since the previous event (fal-js ``subscribeToStatus`` streaming mode appends
  every event's ``logs`` to what it already has, so a repeated line would be shown twice; fal's docs
  only say the stream runs "until it's completed").
- Official clients: ``fal_client`` (Python, by patching ``QUEUE_URL_FORMAT``/``REST_URL``/``CDN_URL``)
  and ``@fal-ai/client`` (JavaScript, a ``requestMiddleware`` that rewrites ``https://queue.fal.run/``
  to ``{base}/fal/``; tests/js/fal_client_run.mjs) submit, poll/stream, fetch results and download the
  outputs over plain http.

Request history (fal's "List requests by endpoint(s)", Platform API v1 [C] for what is listed here):
``Authorization: Key <key>`` (401 otherwise); ``endpoint_id`` required, comma-separated or repeated, up to
50 (422 otherwise); ``start``/``end`` ISO 8601 date-times or dates (``end`` exclusive; defaults: the last 24
hours, widened to 90 days when ``request_id`` is given); ``status`` ``success``/``error``/``user_error``;
``request_id``; ``limit`` 1-100 (default 50); ``cursor`` = base64 of the page number (``"Mg=="`` is page 2);
``expand=payloads`` adds ``json_input``/``json_output``. The answer is ``{"items": [...], "next_cursor",
"has_more"}``; an item has ``request_id``, ``endpoint_id``, ``started_at``, ``sent_at``, ``ended_at``,
``status_code`` and ``duration`` (seconds). Sandbox choices where the docs are silent: only finished requests
are listed; ``start``/``end`` select on ``ended_at``; items are newest ``ended_at`` first (fal names end time
as the default sort, not its direction); ``success`` is a 2xx result, ``user_error`` a 4xx, ``error`` any
other; ``duration`` is ``ended_at - sent_at``; the history keeps what the sandbox keeps (one hour).

Sandbox choices where fal's docs are silent: a cancelled request ends COMPLETED with
``error_type="request_cancelled"`` (result: 400) and gets an ERROR webhook; an injected job failure
is a 422 ``downstream_service_error``; a start timeout (``X-Fal-Request-Timeout``) is a 504
``request_timeout`` with ``X-Fal-Request-Timeout-Type: user``; submit faults mimic ingress errors
(HTML bodies mentioning nginx, no ``x-fal-request-id``) so ``fal_client`` treats them as retryable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from editq.providers.fal.emulator_schema import GptImage2EditInput, error_detail, validation_detail
from editq.sandbox.engine import (
    CONTENT_TYPES,
    EngineError,
    image_dimensions,
    render_edit_images,
    render_placeholder,
)
from editq.sandbox.files import MEDIA_TYPES, FileStore, StoredFile
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
    parse_instant,
    queue_priority,
    queue_urls,
    retry_after,
)
from editq.sandbox.runner import CancelResult, Job, JobOutcome, JobState, ProviderAdapter
from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "fal"
PREFIX = "/fal"
REST_PREFIX = "/fal-rest"
API_PREFIX = "/fal-api/v1"  # fal's Platform API (https://api.fal.ai/v1): the request history
HISTORY_MAX_ENDPOINTS = 50
HISTORY_STATUSES = ("success", "error", "user_error")
_BIG_BODY = 1 << 20

_NGINX = "<html>\r\n<head><title>{code} {text}</title></head>\r\n<body>\r\n<center><h1>{code} {text}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"  # noqa: E501


def _nginx(code: int, text: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(_NGINX.format(code=code, text=text), status_code=code, headers=headers)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _request_not_found() -> JSONResponse:
    return _json(404, {"detail": "Request not found."})


def _with_logs(request: Request) -> bool:
    """Whether a status request asks for the logs (``?logs=1``)."""
    return request.query_params.get("logs", "").lower() in ("1", "true", "yes")


def _model_error(loc: list[str | int], msg: str, type_: str) -> JobOutcome:
    return JobOutcome(False, 422, {"detail": [error_detail(loc, msg, type_)]}, msg, type_, reason="error")


def _extension(content_type: Any, file_name: Any) -> str:
    by_type = {v: k for k, v in MEDIA_TYPES.items() if k != "jpg"}
    if isinstance(content_type, str) and content_type.split(";")[0].strip().lower() in by_type:
        return by_type[content_type.split(";")[0].strip().lower()]
    if isinstance(file_name, str) and "." in file_name:
        suffix = file_name.rsplit(".", 1)[1].lower()
        if suffix in MEDIA_TYPES:
            return "jpeg" if suffix == "jpg" else suffix
    return "bin"


def _size_text(size: tuple[int, int] | str | None) -> str:
    return size if isinstance(size, str) else "auto" if size is None else f"{size[0]}x{size[1]}"


@lru_cache(maxsize=64)
def _placeholder(width: int, height: int, fmt: str) -> bytes:
    return render_placeholder(width, height, fmt)


class FalAdapter(ProviderAdapter):
    name = NAME

    def __init__(self, signer: FalWebhookSigner) -> None:
        self.signer = signer

    def webhook_payload(self, job: Job) -> Any:
        outcome = job.outcome
        if outcome is None:
            return None
        return {
            "request_id": job.request_id,
            "gateway_request_id": job.request_id,
            "status": "OK" if outcome.ok else "ERROR",
            "payload": outcome.body,
            "error": None if outcome.ok else f"Invalid status code: {outcome.status_code}",
        }

    def failure_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(
            False, 422,
            {"detail": [error_detail(["body"], "The model failed to process the request (sandbox injected "
                                     "job failure).", "downstream_service_error")]},
            "The model failed to process the request (sandbox injected job failure).",
            "downstream_service_error", reason="injected_failure",
        )

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 400, {"detail": "Request was cancelled.", "error_type": "request_cancelled"},
                          "Request was cancelled.", "request_cancelled",
                          headers={"X-Fal-Error-Type": "request_cancelled"}, reason="cancelled")

    def start_timeout_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(
            False, 504,
            {"detail": "Request timed out before it could start.", "error_type": "request_timeout"},
            "Request timed out before it could start.", "request_timeout",
            headers={"X-Fal-Error-Type": "request_timeout", "X-Fal-Request-Timeout-Type": "user"},
            reason="start_timeout",
        )

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        return JobOutcome(False, 500, {"detail": "Internal server error", "error_type": "internal_server_error"},
                          "Internal server error", "internal_server_error",
                          headers={"X-Fal-Error-Type": "internal_server_error"}, reason="crash")


class FalProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        cfg = state.current
        self.keys = Ed25519KeyRing(cfg.seed, "fal")
        self.signer = FalWebhookSigner(self.keys, cfg.fal_user_id)
        self.adapter = FalAdapter(self.signer)
        state.config.subscribe(lambda old, new: setattr(self.signer, "user_id", new.fal_user_id))
        state.runner.register(self.adapter)
        # endpoint id -> (input model, work function); add more fal endpoints here.
        self.models: dict[str, tuple[type[BaseModel], Callable[[Job], Awaitable[JobOutcome]]]] = {
            "openai/gpt-image-2/edit": (GptImage2EditInput, self._gpt_image_2_edit),
        }

    # --- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _unauthorized(request: Request) -> JSONResponse | None:
        if authorization_matches(request, KEY_AUTH):
            return None
        return _json(401, {"detail": "Missing or invalid credentials. Use 'Authorization: Key <FAL_KEY>'."},
                     {"WWW-Authenticate": "Key"})

    @staticmethod
    def _urls(job: Job) -> dict[str, str]:
        return queue_urls(f"{job.base_url}{PREFIX}/{job.extra['app']}/requests/{job.request_id}")

    def _find(self, owner: str, app: str, request_id: str) -> Job | None:
        job = self.state.runner.get(NAME, request_id)
        if job is None or job.extra.get("app") != f"{owner}/{app}":
            return None
        return job

    def _look_up(self, request: Request, owner: str, app: str, request_id: str,
                 not_found: Callable[[], JSONResponse]) -> Job | JSONResponse:
        """The job of a status/result/cancel route, or the answer to return instead (401, then ``not_found``)."""
        return look_up(request, self._unauthorized, lambda: self._find(owner, app, request_id), not_found)

    def _status_body(self, job: Job, with_logs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"status": job.state.value, "request_id": job.request_id, **self._urls(job),
                                "logs": list(job.logs) if with_logs else None}
        if job.state is JobState.IN_QUEUE:
            body["queue_position"] = self.state.runner.queue_position(job)
        elif job.state is JobState.COMPLETED:
            inference = job.inference_time
            body["metrics"] = {"inference_time": inference} if inference is not None else {}
            if job.outcome is not None and not job.outcome.ok:
                body["error"] = job.outcome.error
                body["error_type"] = job.outcome.error_type
        return body

    # --- submit -------------------------------------------------------------------------------

    async def submit(self, request: Request, endpoint: str) -> Response:
        runner, cfg = self.state.runner, self.state.current
        raw = await request.body()
        refused = await admit(self.state, NAME, request, self._unauthorized, {
            "timeout": lambda: _nginx(504, "Gateway Time-out"),
            "5xx": lambda: _nginx(503, "Service Temporarily Unavailable"),
            "429": lambda: _json(429, {"detail": "Too many requests.", "error_type": "rate_limited"},
                                 {**retry_after(cfg), "X-Fal-Error-Type": "rate_limited"}),
        })
        if refused is not None:
            return refused
        endpoint = endpoint.strip("/")
        model = self.models.get(endpoint)
        if model is None:
            runner.reject(NAME, "not_found")
            return _json(404, {"detail": f"Application '{endpoint}' not found."})
        input_model, work = model
        try:
            data = await asyncio.to_thread(json.loads, raw) if len(raw) > _BIG_BODY else json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            runner.reject(NAME, "validation")
            return _json(422, {"detail": [error_detail(["body"], f"Invalid JSON: {exc}", "json_invalid")]})
        try:
            payload = input_model.model_validate(data)
        except ValidationError as exc:
            runner.reject(NAME, "validation")
            return _json(422, {"detail": validation_detail(exc)})
        timeout_header = request.headers.get("x-fal-request-timeout")
        start_timeout: float | None = None
        if timeout_header is not None:
            try:
                start_timeout = float(timeout_header)
            except ValueError:
                start_timeout = -1.0
            if not (start_timeout > 0 and math.isfinite(start_timeout)):
                runner.reject(NAME, "validation")
                return _json(400, {"detail": "X-Fal-Request-Timeout must be a positive number of seconds."})
        webhook = request.query_params.get("fal_webhook") or None
        request_id = str(uuid.uuid4())
        job = Job(
            provider=NAME,
            request_id=request_id,
            model=endpoint,
            work=work,
            payload=payload,
            input_summary=summarize_for_log(data),
            webhook_url=webhook,
            base_url=self.state.base_url(request),
            priority=queue_priority(request, "x-fal-queue-priority"),
            start_timeout_s=start_timeout,
            headers=kept_headers(request, prefix="x-fal-"),
            extra={"app": "/".join(endpoint.split("/")[:2])},
        )
        runner.submit(job)
        body: dict[str, Any] = {"status": "IN_QUEUE", "request_id": request_id, **self._urls(job),
                                "queue_position": runner.queue_position(job)}
        if webhook:
            body["gateway_request_id"] = request_id
        return _json(200, body, {"x-fal-request-id": request_id})

    # --- the model ----------------------------------------------------------------------------

    async def _gpt_image_2_edit(self, job: Job) -> JobOutcome:
        inp: GptImage2EditInput = job.payload
        job.log(f"Downloading {len(inp.image_urls)} input image(s)" + (" and a mask." if inp.mask_url else "."))
        try:
            images, mask = await fetch_inputs(self.state, inp.image_urls, inp.mask_url)
        except InputFailed as failed:
            loc: list[str | int] = ["body", "mask_url"] if failed.mask else ["body", "image_urls", failed.index]
            job.log(f"Input {loc[1:]} failed: {failed.error}", "ERROR")
            return _model_error(loc, str(failed.error), failed.error.kind)
        try:
            size = inp.output_size(image_dimensions(images[0], index=0))
            requested = inp.image_size if isinstance(inp.image_size, str) else inp.target_size()
            job.log(f"Editing: {inp.num_images} image(s), image_size={_size_text(requested)} -> {_size_text(size)}, "
                    f"quality={inp.quality}, output_format={inp.output_format}.")
            entries = await self.state.in_thread(self._render_and_store, inp, images, mask, size, job)
        except EngineError as exc:
            if exc.index is not None:
                return _model_error(["body", "image_urls", exc.index], str(exc), exc.kind)
            return _model_error(["body", "mask_url"] if inp.mask_url else ["body"], str(exc), exc.kind)
        job.log(f"Stored {len(entries)} output image(s).")
        return JobOutcome(True, 200, {"images": entries})

    def _render_and_store(
        self, inp: GptImage2EditInput, images: list[bytes], mask: bytes | None, render_size: tuple[int, int], job: Job
    ) -> list[dict[str, Any]]:
        """Runs on a render thread; ``render_size`` is what GPT Image 2 renders (:func:`output_size`)."""
        fmt = inp.output_format
        files = self.state.files
        outputs: list[tuple[bytes | StoredFile, int, int]] = []
        if self.state.current.render == "cached":
            width, height = render_size
            for _ in range(inp.num_images):
                if inp.sync_mode:
                    outputs.append((_placeholder(width, height, fmt), width, height))
                else:
                    stored = files.put_cached(f"{width}x{height}", fmt, lambda: _placeholder(width, height, fmt))
                    outputs.append((stored, width, height))
        else:
            rendered = render_edit_images(images, inp.prompt, mask, render_size, fmt, inp.num_images,
                                          quality=inp.quality)
            for item in rendered:
                data_or_file: bytes | StoredFile = item.data if inp.sync_mode else files.put(item.data, fmt)
                outputs.append((data_or_file, item.width, item.height))
        entries = []
        for index, (output, width, height) in enumerate(outputs):
            if isinstance(output, StoredFile):
                url, name, size = output.url(job.base_url), output.name, output.size
            else:
                url = f"data:{CONTENT_TYPES[fmt]};base64," + base64.b64encode(output).decode("ascii")
                name, size = f"{job.request_id}_{index}.{fmt}", len(output)
            entries.append({"url": url, "content_type": CONTENT_TYPES[fmt], "file_name": name,
                            "file_size": size, "width": width, "height": height})
        return entries

    # --- queue endpoints -------------------------------------------------------------------------

    def router(self) -> APIRouter:
        combined = APIRouter()
        combined.include_router(self._storage_router())
        combined.include_router(self._queue_router())
        combined.include_router(self._history_router())
        return combined

    def _history_router(self) -> APIRouter:
        """fal's request history (Platform API ``/models/requests/by-endpoint``) over the runner's requests."""
        router = APIRouter(prefix=API_PREFIX, tags=["fal platform"])

        @router.get("/models/requests/by-endpoint", response_model=None)
        async def by_endpoint(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            query = history_query(request.query_params.multi_items(), time.time())
            if isinstance(query, list):
                return _json(422, {"detail": query})
            jobs = [j for j in self.state.runner.jobs(NAME) if query.selects(j)]
            jobs.sort(key=lambda j: (j.completed_at or 0.0, j.request_id), reverse=True)
            first = (query.page - 1) * query.limit
            page = jobs[first:first + query.limit]
            more = first + query.limit < len(jobs)
            return _json(200, {"items": [history_item(j, query.payloads) for j in page],
                               "next_cursor": page_cursor(query.page + 1) if more else None, "has_more": more})

        return router

    def _storage_router(self) -> APIRouter:
        """fal's REST storage endpoints used by ``fal_client.upload`` (stands in for rest.fal.ai)."""
        router = APIRouter(prefix=REST_PREFIX, tags=["fal storage"])

        @router.post("/storage/auth/token", response_model=None)
        async def cdn_token(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            expires = datetime.now(UTC) + timedelta(hours=1)
            return _json(200, {"token": "sandbox-cdn-token", "token_type": "Bearer",
                               "base_url": self.state.base_url(request), "expires_at": expires.isoformat()})

        @router.post("/storage/upload/initiate", response_model=None)
        async def initiate_upload(request: Request) -> JSONResponse:
            denied = self._unauthorized(request)
            if denied is not None:
                return denied
            try:
                body = json.loads(await request.body() or b"{}")
            except json.JSONDecodeError:
                body = {}
            body = body if isinstance(body, dict) else {}
            reserved = FileStore.reserve(_extension(body.get("content_type"), body.get("file_name")))
            url = reserved.url(self.state.base_url(request))
            return _json(200, {"upload_url": url, "file_url": url})

        return router

    def _queue_router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["fal"])

        @router.get("/.well-known/jwks.json")
        async def jwks() -> JSONResponse:
            return _json(200, self.keys.jwks(), {"Cache-Control": "public, max-age=3600"})

        @router.get("/{owner}/{app}/requests/{request_id}/status", response_model=None)
        async def status(owner: str, app: str, request_id: str, request: Request) -> JSONResponse:
            job = self._look_up(request, owner, app, request_id, _request_not_found)
            if isinstance(job, Response):
                return job
            code = 200 if job.state is JobState.COMPLETED else 202
            return _json(code, self._status_body(job, _with_logs(request)), {"x-fal-request-id": job.request_id})

        @router.get("/{owner}/{app}/requests/{request_id}/status/stream", response_model=None)
        async def status_stream(owner: str, app: str, request_id: str, request: Request) -> Response:
            job = self._look_up(request, owner, app, request_id, _request_not_found)
            if isinstance(job, Response):
                return job
            with_logs = _with_logs(request)

            async def events(found: Job) -> AsyncIterator[str]:
                # each event carries only the log lines new since the previous event (fal-js accumulates them)
                last, sent = "", 0
                while True:
                    body = self._status_body(found, False)
                    key = json.dumps(body)
                    fresh = found.logs[sent:] if with_logs else []
                    if key != last or fresh:
                        body["logs"] = list(fresh) if with_logs else None
                        yield f"data: {json.dumps(body)}\n\n"
                        last, sent = key, sent + len(fresh)
                    if found.state is JobState.COMPLETED:
                        return
                    await asyncio.sleep(0.1)

            return StreamingResponse(events(job), media_type="text/event-stream",
                                     headers={"x-fal-request-id": job.request_id, "Cache-Control": "no-cache"})

        @router.get("/{owner}/{app}/requests/{request_id}", response_model=None)
        async def result(owner: str, app: str, request_id: str, request: Request) -> JSONResponse:
            job = self._look_up(request, owner, app, request_id, _request_not_found)
            if isinstance(job, Response):
                return job
            headers = {"x-fal-request-id": job.request_id}
            if job.state is not JobState.COMPLETED or job.outcome is None:
                where = "in queue" if job.state is JobState.IN_QUEUE else "in progress"
                return _json(400, {"detail": f"Request is still {where}."}, headers)
            outcome = job.outcome
            return _json(outcome.status_code, outcome.body, {**outcome.headers, **headers})

        @router.put("/{owner}/{app}/requests/{request_id}/cancel", response_model=None)
        async def cancel(owner: str, app: str, request_id: str, request: Request) -> JSONResponse:
            job = self._look_up(request, owner, app, request_id, lambda: _json(404, {"status": "NOT_FOUND"}))
            if isinstance(job, Response):
                return job
            if self.state.runner.cancel(job) is CancelResult.ALREADY_COMPLETED:
                return _json(400, {"status": "ALREADY_COMPLETED"})
            return _json(202, {"status": "CANCELLATION_REQUESTED"})

        @router.post("/{endpoint:path}", response_model=None)
        async def submit(endpoint: str, request: Request) -> Response:
            return await self.submit(request, endpoint)

        return router


# ---- request history (pure) --------------------------------------------------------------------------------
def page_cursor(page: int) -> str:
    """fal's cursor: the page number, base64 (``"Mg=="`` is page 2)."""
    return base64.b64encode(str(page).encode()).decode()


def _page_of(cursor: str) -> int | None:
    try:
        page = int(base64.b64decode(cursor.encode(), validate=True).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return page if page >= 1 else None




def _problem(loc: str, msg: str) -> dict[str, Any]:
    return error_detail(["query", loc], msg, "value_error")


@dataclass(frozen=True)
class HistoryQuery:
    endpoints: frozenset[str]
    start: float
    end: float
    status: str | None
    request_id: str | None
    limit: int
    page: int
    payloads: bool

    def selects(self, job: Job) -> bool:
        if job.state is not JobState.COMPLETED or job.completed_at is None or job.model not in self.endpoints:
            return False
        if not self.start <= job.completed_at < self.end:
            return False
        if self.request_id is not None and job.request_id != self.request_id:
            return False
        return self.status is None or history_status(job) == self.status


def history_status(job: Job) -> str:
    code = job.outcome.status_code if job.outcome is not None else 500
    return "success" if 200 <= code < 300 else "user_error" if 400 <= code < 500 else "error"


def history_query(params: list[tuple[str, str]], now: float) -> HistoryQuery | list[dict[str, Any]]:
    """The query parameters of a history request, or the 422 details naming what is wrong."""
    problems: list[dict[str, Any]] = []
    values: dict[str, str] = {}
    endpoints: list[str] = []
    for name, value in params:
        if name == "endpoint_id":
            endpoints += [e.strip() for e in value.split(",") if e.strip()]
        else:
            values[name] = value
    if not endpoints:
        problems.append(_problem("endpoint_id", "Field required"))
    elif len(endpoints) > HISTORY_MAX_ENDPOINTS:
        problems.append(_problem("endpoint_id", f"At most {HISTORY_MAX_ENDPOINTS} endpoint ids"))
    request_id = values.get("request_id") or None
    times: dict[str, float] = {}
    for name in ("start", "end"):
        if name in values:
            at = parse_instant(values[name])
            if at is None:
                problems.append(_problem(name, "Input should be an ISO 8601 date or date-time"))
            else:
                times[name] = at
    status = values.get("status") or None
    if status is not None and status not in HISTORY_STATUSES:
        problems.append(_problem("status", f"Input should be {', '.join(HISTORY_STATUSES)}"))
    try:
        limit = int(values.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        problems.append(_problem("limit", "Input should be an integer from 1 to 100"))
    page = _page_of(values["cursor"]) if values.get("cursor") else 1
    if page is None:
        problems.append(_problem("cursor", "Invalid cursor"))
    if problems:
        return problems
    lookback = 90 * 86400.0 if request_id else 86400.0
    return HistoryQuery(frozenset(endpoints), times.get("start", now - lookback), times.get("end", now), status,
                        request_id, limit, page or 1, values.get("expand") == "payloads")


def history_item(job: Job, payloads: bool) -> dict[str, Any]:
    ended = job.completed_at
    item: dict[str, Any] = {
        "request_id": job.request_id,
        "endpoint_id": job.model,
        "started_at": iso_utc(job.started_at),
        "sent_at": iso_utc(job.received_at),
        "ended_at": iso_utc(ended),
        "status_code": job.outcome.status_code if job.outcome is not None else None,
        "duration": round(ended - job.received_at, 3) if ended is not None else None,
    }
    if payloads:
        item["json_input"] = job.input_summary
        item["json_output"] = job.outcome.body if job.outcome is not None else None
    return item


def build(state: SandboxState) -> ProviderMount:
    provider = FalProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "fal queue API (https://queue.fal.run)")
