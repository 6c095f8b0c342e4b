"""OpenAI Files + Batch API under ``/openai`` (stands in for ``https://api.openai.com``), for image edits.

Routes (``Authorization: Bearer <key>`` on every one; errors use OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``):

- ``POST /openai/v1/files`` multipart ``file`` + ``purpose`` (batch | vision | user_data | assistants | fine-tune |
  evals) [+ ``expires_after[anchor]``, ``expires_after[seconds]``] -> the File object.
- ``GET /openai/v1/files[?purpose=]``, ``GET /openai/v1/files/{id}``, ``GET /openai/v1/files/{id}/content``
  (streamed from disk), ``DELETE /openai/v1/files/{id}``.
- ``POST /openai/v1/batches {input_file_id, endpoint, completion_window: "24h", metadata?, output_expires_after?}``
  -> the Batch object (``validating``); ``GET /openai/v1/batches/{id}``; ``POST /openai/v1/batches/{id}/cancel``;
  ``GET /openai/v1/batches[?after=&limit=]`` (newest first).

A batch moves ``validating -> in_progress -> finalizing -> completed`` (or ``failed`` / ``expired`` /
``cancelling -> cancelled``):

* validating: lasts ``latency_s``, then the whole file is checked. A file that is empty, has more than 50,000
  lines, a line that is not a JSON object, lacks ``custom_id`` / ``method`` / ``url`` / ``body``, repeats a
  custom_id, uses another method than POST, a ``url`` other than the batch's ``endpoint``, or another ``model`` than
  the first line ends the batch ``failed`` with ``errors.data[{code, line, message, param}]`` and runs nothing.
* in_progress: every line is one job of the shared runner (provider ``openai_batch`` in ``/_sandbox/requests`` and
  ``/_sandbox/stats``): it waits under the ``concurrency`` cap and takes ``latency_s + U(0, jitter_s)`` **per line**.
  The line's ``body`` goes through the sync emulator's JSON edit form (``providers.openai.emulator.params_from_json``
  and ``execute_edit``: unknown parameters, types, ranges, sizes per model, mask rules, rendering with
  ``sandbox.engine``, simulated ``usage``); a bad body, an unreachable input or a moderation trigger fails that
  line only (a 4xx ``response`` in the error file), as the real service does. ``{"file_id"}`` image references
  resolve to files uploaded here with purpose ``vision`` / ``user_data``.
  ``job_failure_rate`` fails a line with a 500 ``server_error`` response.
* finalizing: lasts ``latency_s``; then ``completed``. Output lines are appended in completion order (not input
  order). ``output_file_id`` / ``error_file_id`` are set only when that file has at least one line.
* ``openai_batch_expire_after_lines = N`` (>= 0) simulates the 24 h window running out: only the first N lines
  run; the batch then ends ``expired`` and every other line is in the error file with
  ``error.code = "batch_expired"`` (``response: null``). A cancel marks unfinished lines ``batch_cancelled``.
  ``request_counts.failed`` includes those lines.
* A prompt containing ``sandbox:moderation`` fails its line with OpenAI's 400 ``moderation_blocked``.
* Keys starting with ``sk-invalid`` are refused with 401 ``invalid_api_key`` (the key masked, as OpenAI does).
* ``submit_429_rate`` / ``submit_5xx_rate`` apply to ``POST /v1/batches`` (429 ``rate_limit_exceeded`` with
  ``Retry-After``; 500 ``server_error``); nothing is created then.

Sandbox choices where OpenAI's docs are silent: an unknown ``input_file_id`` is a 400 with ``param:
"input_file_id"``; cancelling an ended batch is a 400; image ``file_id`` references resolve to files uploaded
here with purpose ``vision`` or ``user_data``; only ``/v1/images/edits`` lines are executed (other endpoints
are refused at create with a 400 naming the sandbox).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from editq.providers.openai.emulator import (
    MODERATION_TRIGGER,
    OpenAIError,
    execute_edit,
    incorrect_api_key,
    invalid_type,
    invalid_value,
    missing,
    moderation_blocked,
    no_api_key,
    params_from_json,
    parse_multipart,
    server_error,
)
from editq.sandbox.engine import sniff_image_type
from editq.sandbox.inputs import summarize_for_log
from editq.sandbox.providers.common import bearer_key, submit_fault
from editq.sandbox.runner import Job, JobOutcome, ProviderAdapter
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "openai_batch"
PREFIX = "/openai"
EDITS = "/v1/images/edits"
BATCH_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions",
                   "/v1/moderations", "/v1/images/generations", "/v1/images/edits", "/v1/videos")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
IMAGE_PURPOSES = ("vision", "user_data")
MAX_BATCH_LINES = 50_000
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
MAX_IMAGE_URL_CHARS = 20_971_520
ENDED = ("completed", "failed", "expired", "cancelled")

MODELS_CUSTOM_SIZE = ("gpt-image-2", "gpt-image-2-2026-04-21")
MODELS = (*MODELS_CUSTOM_SIZE, "gpt-image-1.5", "gpt-image-1-mini", "chatgpt-image-latest")
STANDARD_SIZES = ("1024x1024", "1536x1024", "1024x1536")
JSON_EDIT_PARAMS = frozenset({
    "images", "prompt", "model", "mask", "n", "size", "quality", "background", "output_format",
    "output_compression", "input_fidelity", "moderation", "user", "safety_identifier", "stream", "partial_images",
})
_OUT_TOKENS = {"low": 200, "medium": 1770, "auto": 1770, "high": 7030}
_SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")


# ---- files ---------------------------------------------------------------------------------------------------
@dataclass
class StoredObject:
    id: str
    filename: str
    purpose: str
    path: Path
    bytes: int
    created_at: int
    expires_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": self.expires_at, "status_details": None}


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, StoredObject] = {}

    @staticmethod
    def new_id() -> str:
        return "file-" + secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")[:22]

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    def add(self, file_id: str, filename: str, purpose: str, size: int, expires_at: int | None = None) -> StoredObject:
        obj = StoredObject(file_id, filename, purpose, self.path(file_id), size, int(time.time()), expires_at)
        self.files[file_id] = obj
        return obj

    def get(self, file_id: str) -> StoredObject:
        obj = self.files.get(file_id)
        if obj is None or not obj.path.exists():
            raise OpenAIError(404, f"No such File object: {file_id}", param="id")
        return obj


# ---- batches ---------------------------------------------------------------------------------------------------
@dataclass
class Line:
    number: int  # 1-based line in the input file
    custom_id: str
    body: Any
    line_id: str = field(default_factory=lambda: "batch_req_" + secrets.token_hex(16))
    request_id: str = field(default_factory=lambda: "req_" + secrets.token_hex(16))
    job: Job | None = None
    result: str = "pending"  # pending | ok | error | batch_expired | batch_cancelled


@dataclass
class Batch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    output_expires_after: dict[str, Any] | None
    base_url: str
    created_at: int = field(default_factory=lambda: int(time.time()))
    status: str = "validating"
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    times: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})
    lines: list[Line] = field(default_factory=list)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    out_path: Path | None = None
    err_path: Path | None = None
    out_lines: int = 0
    err_lines: int = 0

    def to_dict(self) -> dict[str, Any]:
        t = self.times
        usage = None
        if self.status in ENDED and self.status != "failed":
            inp, out = self.usage["input_tokens"], self.usage["output_tokens"]
            usage = {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
                     "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": "24h", "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at, "in_progress_at": t.get("in_progress_at"),
            "expires_at": self.created_at + 86_400, "finalizing_at": t.get("finalizing_at"),
            "completed_at": t.get("completed_at"), "failed_at": t.get("failed_at"), "expired_at": t.get("expired_at"),
            "cancelling_at": t.get("cancelling_at"), "cancelled_at": t.get("cancelled_at"),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": usage, "metadata": self.metadata,
        }


class OpenAIBatchLineAdapter(ProviderAdapter):
    """How the runner shapes a line's non-rendered endings (no webhooks: OpenAI's are per project)."""

    name = NAME
    signer = None

    def webhook_payload(self, job: Job) -> Any:
        return None

    def failure_outcome(self, job: Job) -> JobOutcome:
        return _error_outcome(server_error(), reason="injected_failure")

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 0, None, "cancelled", "batch_cancelled", reason="cancelled")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        if isinstance(exc, OpenAIError):
            return _error_outcome(exc)
        return _error_outcome(server_error(), reason="crash")


def _error_outcome(err: OpenAIError, reason: str = "error") -> JobOutcome:
    return JobOutcome(False, err.status, err.body(), err.message, err.code or err.type, headers=err.headers,
                      reason=reason)


class OpenAIBatchProvider:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.adapter = OpenAIBatchLineAdapter()
        state.runner.register(self.adapter)
        self.files = FileStore(state.files.root / "openai")
        self.batches: dict[str, Batch] = {}

    # --- auth -----------------------------------------------------------------------------------------
    def _auth(self, request: Request) -> None:
        key = bearer_key(request)
        if key is None:
            self.state.runner.reject(NAME, "auth")
            raise no_api_key()
        if key.startswith("sk-invalid"):
            self.state.runner.reject(NAME, "auth")
            raise incorrect_api_key(key[:3] + "*" * max(4, len(key) - 7) + key[-4:])

    # --- files ------------------------------------------------------------------------------------------
    async def upload(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        body = await request.body()
        if len(body) > MAX_UPLOAD_BYTES:
            raise OpenAIError(413, "File is too large.", param="file")
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise OpenAIError(400, "Invalid Content-Type header: expected multipart/form-data.", code="invalid_request")
        parts = {p.name: (p.filename, p.data) for p in await asyncio.to_thread(parse_multipart, ctype, body)}
        del body
        if "file" not in parts:
            raise missing("file")
        if "purpose" not in parts:
            raise missing("purpose")
        purpose = parts["purpose"][1].decode("utf-8", "replace").strip()
        if purpose not in PURPOSES:
            raise invalid_value("purpose", purpose, PURPOSES)
        filename, data = parts["file"]
        if purpose == "batch" and len(data) > MAX_BATCH_FILE_BYTES:
            raise OpenAIError(400, "File is too large: batch input files may be at most 200 MB.", param="file")
        if purpose == "vision" and sniff_image_type(data) not in ("png", "jpeg", "webp"):
            raise OpenAIError(400, "Invalid file format for purpose 'vision'. Supported formats: png, jpeg, webp.",
                           param="file")
        expires_at = None
        seconds = parts.get("expires_after[seconds]")
        if seconds is not None:
            anchor = parts.get("expires_after[anchor]", (None, b"created_at"))[1].decode()
            if anchor != "created_at":
                raise invalid_value("expires_after.anchor", anchor, ("created_at",))
            try:
                secs = int(seconds[1])
            except ValueError:
                got = seconds[1].decode("utf-8", "replace")
                raise invalid_type("expires_after.seconds", "an integer", got) from None
            if not 3600 <= secs <= 2_592_000:
                raise OpenAIError(400, "expires_after.seconds must be between 3600 and 2592000.",
                               param="expires_after.seconds", code="invalid_value")
            expires_at = int(time.time()) + secs
        elif purpose == "batch":
            expires_at = int(time.time()) + 30 * 86_400
        file_id = FileStore.new_id()
        await asyncio.to_thread(self.files.path(file_id).write_bytes, data)
        obj = self.files.add(file_id, filename or "upload", purpose, len(data), expires_at)
        return obj.to_dict()

    # --- batches ----------------------------------------------------------------------------------------
    async def create(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError:
            raise OpenAIError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None
        if not isinstance(data, dict):
            raise OpenAIError(400, "The request body must be a JSON object.", code="invalid_type")
        unknown = sorted(set(data) - {"input_file_id", "endpoint", "completion_window", "metadata",
                                      "output_expires_after"})
        if unknown:
            raise OpenAIError(400, f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if data.get(name) is None:
                raise missing(name)
            if not isinstance(data[name], str):
                raise invalid_type(name, "a string", data[name])
        if data["endpoint"] not in BATCH_ENDPOINTS:
            raise invalid_value("endpoint", data["endpoint"], BATCH_ENDPOINTS)
        if data["endpoint"] != EDITS:
            raise OpenAIError(400, f"The sandbox emulates only '{EDITS}' batches.", param="endpoint",
                           code="invalid_value")
        if data["completion_window"] != "24h":
            raise invalid_value("completion_window", data["completion_window"], ("24h",))
        metadata = data.get("metadata")
        if metadata is not None and (
            not isinstance(metadata, dict) or len(metadata) > 16
            or any(not isinstance(v, str) or len(k) > 64 or len(v) > 512 for k, v in metadata.items())
        ):
            raise OpenAIError(400, "Invalid 'metadata': at most 16 string pairs, keys up to 64 and values up to 512 "
                                "characters.", param="metadata", code="invalid_value")
        oea = data.get("output_expires_after")
        if oea is not None and (not isinstance(oea, dict) or oea.get("anchor") != "created_at"
                                or type(oea.get("seconds")) is not int or not 3600 <= oea["seconds"] <= 2_592_000):
            raise OpenAIError(400, "Invalid 'output_expires_after': anchor must be 'created_at' and seconds between "
                              "3600 and 2592000.", param="output_expires_after", code="invalid_value")
        fid = data["input_file_id"]
        obj = self.files.files.get(fid)
        if obj is None:
            raise OpenAIError(400, f"No such File object: {fid}", param="input_file_id", code="invalid_value")
        if obj.purpose != "batch":
            raise OpenAIError(400, f"The input file must have purpose 'batch', but {fid} has purpose '{obj.purpose}'.",
                           param="input_file_id", code="invalid_value")
        fault = await submit_fault(self.state, NAME, ("429", "5xx"))  # nothing is created then
        if fault == "429":
            wait = max(1, math.ceil(self.state.current.retry_after_s))
            raise OpenAIError(429, f"Rate limit reached for batch creation. Please try again in {wait}s.",
                           type_="requests", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        if fault == "5xx":
            raise server_error()
        batch = Batch(id="batch_" + secrets.token_hex(16), endpoint=data["endpoint"], input_file_id=fid,
                      metadata=metadata, output_expires_after=oea, base_url=self.state.base_url(request))
        self.batches[batch.id] = batch
        batch.task = asyncio.get_running_loop().create_task(self._run(batch))
        return batch.to_dict()

    def get_batch(self, batch_id: str) -> Batch:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise OpenAIError(404, f"No such Batch object: {batch_id}", param="id")
        return batch

    def cancel(self, batch: Batch) -> None:
        if batch.status in ENDED or batch.status == "cancelling":
            if batch.status == "cancelling":
                return
            raise OpenAIError(400, f"Cannot cancel a batch with status '{batch.status}'.", param="id")
        batch.cancel_requested = True
        batch.status = "cancelling"
        batch.times["cancelling_at"] = int(time.time())
        for line in batch.lines:
            if line.job is not None:
                self.state.runner.cancel(line.job)

    # --- the batch's life ---------------------------------------------------------------------------------
    async def _run(self, batch: Batch) -> None:
        cfg = self.state.current
        await asyncio.sleep(cfg.latency_s)
        if batch.cancel_requested:
            await self._finish(batch, "cancelled")
            return
        path = self.files.get(batch.input_file_id).path
        errors, lines, model = await asyncio.to_thread(validate_input_file, path, batch.endpoint)
        if errors:
            batch.errors = errors
            batch.status = "failed"
            batch.times["failed_at"] = int(time.time())
            return
        batch.lines, batch.model, batch.total = lines, model, len(lines)
        batch.out_path = self.files.path(FileStore.new_id())
        batch.err_path = self.files.path(FileStore.new_id())
        batch.status = "in_progress"
        batch.times["in_progress_at"] = int(time.time())
        limit = cfg.openai_batch_expire_after_lines
        run = lines if limit < 0 else lines[:limit]
        for line in run:
            line.job = Job(provider=NAME, request_id=line.line_id, model=model or "", work=self._work,
                           payload=(batch, line), input_summary=summarize_for_log(
                               {"batch_id": batch.id, "custom_id": line.custom_id, "body": line.body}),
                           base_url=batch.base_url)
            self.state.runner.submit(line.job)
        await asyncio.gather(*(self._line_done(batch, line) for line in run))
        unrun = [line for line in lines if line.result == "pending"]
        if unrun or batch.cancel_requested:
            code = "batch_cancelled" if batch.cancel_requested else "batch_expired"
            for line in unrun:
                await self._write_unrun(batch, line, code)
            await self._finish(batch, "cancelled" if batch.cancel_requested else "expired")
            return
        batch.status = "finalizing"
        batch.times["finalizing_at"] = int(time.time())
        await asyncio.sleep(cfg.latency_s)
        await self._finish(batch, "completed")

    async def _line_done(self, batch: Batch, line: Line) -> None:
        job = line.job
        assert job is not None
        await job.finished.wait()
        outcome = job.outcome
        assert outcome is not None
        if outcome.ok:
            record = {"id": line.line_id, "custom_id": line.custom_id,
                      "response": {"status_code": 200, "request_id": line.request_id, "body": outcome.body},
                      "error": None}
            usage = (outcome.body or {}).get("usage") or {}
            batch.usage["input_tokens"] += int(usage.get("input_tokens") or 0)
            batch.usage["output_tokens"] += int(usage.get("output_tokens") or 0)
            outcome.body = {"written_to": "output_file"}  # the runner keeps outcomes; drop the base64
            await self.state.in_thread(_append, batch, "out", record)
            line.result = "ok"
            batch.completed += 1
        elif outcome.reason == "cancelled":
            code = "batch_cancelled" if batch.cancel_requested else "batch_expired"
            await self._write_unrun(batch, line, code)
        else:
            record = {"id": line.line_id, "custom_id": line.custom_id,
                      "response": {"status_code": outcome.status_code, "request_id": line.request_id,
                                   "body": outcome.body}, "error": None}
            await self.state.in_thread(_append, batch, "err", record)
            line.result = "error"
            batch.failed += 1

    async def _write_unrun(self, batch: Batch, line: Line, code: str) -> None:
        message = ("This request could not be executed before the completion window expired."
                   if code == "batch_expired" else "This request was not executed because the batch was cancelled.")
        record = {"id": line.line_id, "custom_id": line.custom_id, "response": None,
                  "error": {"code": code, "message": message}}
        await self.state.in_thread(_append, batch, "err", record)
        line.result = code
        batch.failed += 1

    async def _finish(self, batch: Batch, status: str) -> None:
        expires_at = None
        if batch.output_expires_after:
            expires_at = int(time.time()) + int(batch.output_expires_after["seconds"])
        if batch.out_path is not None and batch.out_lines:
            fid = batch.out_path.name
            self.files.add(fid, f"{batch.id}_output.jsonl", "batch_output", batch.out_path.stat().st_size, expires_at)
            batch.output_file_id = fid
        if batch.err_path is not None and batch.err_lines:
            fid = batch.err_path.name
            self.files.add(fid, f"{batch.id}_error.jsonl", "batch_output", batch.err_path.stat().st_size, expires_at)
            batch.error_file_id = fid
        batch.status = status
        batch.times[f"{status}_at"] = int(time.time())
        for line in batch.lines:
            line.body = None  # keep the batch object small once it has ended

    async def _work(self, job: Job) -> JobOutcome:
        """One line: the body is checked and rendered exactly like the sync JSON edit form."""
        _batch, line = job.payload
        try:
            body = await self._resolve_file_ids(line.body)
            params = await params_from_json(self.state, body)
            if MODERATION_TRIGGER in params.prompt:
                raise moderation_blocked(line.request_id)
            result = await self.state.in_thread(execute_edit, params, self.state.current.render, int(time.time()))
        except OpenAIError as err:
            return _error_outcome(err)
        return JobOutcome(True, 200, result)

    async def _resolve_file_ids(self, body: Any) -> Any:
        """`{"file_id": ...}` image references -> data URLs of files uploaded here (purpose vision/user_data)."""
        if not isinstance(body, dict):
            return body
        refs = [(f"images[{i}]", r) for i, r in enumerate(body.get("images") or []) if isinstance(r, dict)]
        if isinstance(body.get("mask"), dict):
            refs.append(("mask", body["mask"]))
        if not any("file_id" in r for _, r in refs):
            return body
        body = dict(body)
        images = list(body.get("images") or [])
        for param, ref in refs:
            fid = ref.get("file_id")
            if fid is None or set(ref) != {"file_id"}:
                continue
            obj = self.files.files.get(str(fid))
            if obj is None or obj.purpose not in IMAGE_PURPOSES:
                raise OpenAIError(400, f"Invalid '{param}.file_id': no such image file '{fid}' (upload it with "
                                  "purpose 'vision' or 'user_data').", param=param, code="invalid_image_file")
            data = await asyncio.to_thread(obj.path.read_bytes)
            kind = sniff_image_type(data) or "png"
            resolved = {"image_url": f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")}
            if param == "mask":
                body["mask"] = resolved
            else:
                images[int(param[7:-1])] = resolved
        body["images"] = images
        return body

    # --- routes --------------------------------------------------------------------------------------------
    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX + "/v1", tags=["openai-batch"])

        async def respond(call: Any) -> Response:
            try:
                result = await call
            except OpenAIError as err:
                if err.status != 401:
                    self.state.runner.reject(NAME, "not_found" if err.status == 404 else
                                             "validation" if err.status < 429 else str(err.status))
                return err.response("req_" + secrets.token_hex(16))
            if isinstance(result, Response):
                return result
            return JSONResponse(result, headers={"x-request-id": "req_" + secrets.token_hex(16)})

        @router.post("/files", response_model=None)
        async def upload(request: Request) -> Response:
            return await respond(self.upload(request))

        @router.get("/files", response_model=None)
        async def list_files(request: Request) -> Response:
            return await respond(self.list_files(request))

        @router.get("/files/{file_id}", response_model=None)
        async def get_file(request: Request, file_id: str) -> Response:
            return await respond(self.get_file(request, file_id))

        @router.get("/files/{file_id}/content", response_model=None)
        async def file_content(request: Request, file_id: str) -> Response:
            return await respond(self.file_content(request, file_id))

        @router.delete("/files/{file_id}", response_model=None)
        async def delete_file(request: Request, file_id: str) -> Response:
            return await respond(self.delete_file(request, file_id))

        @router.post("/batches", response_model=None)
        async def create(request: Request) -> Response:
            return await respond(self.create(request))

        @router.get("/batches", response_model=None)
        async def list_batches(request: Request) -> Response:
            return await respond(self.list_batches(request))

        @router.get("/batches/{batch_id}", response_model=None)
        async def retrieve(request: Request, batch_id: str) -> Response:
            return await respond(self.retrieve(request, batch_id))

        @router.post("/batches/{batch_id}/cancel", response_model=None)
        async def cancel(request: Request, batch_id: str) -> Response:
            return await respond(self.cancel_route(request, batch_id))

        return router

    async def list_files(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        purpose = request.query_params.get("purpose")
        data = [f.to_dict() for f in sorted(self.files.files.values(), key=lambda f: f.created_at, reverse=True)
                if purpose is None or f.purpose == purpose]
        return {"object": "list", "data": data, "has_more": False,
                "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}

    async def get_file(self, request: Request, file_id: str) -> dict[str, Any]:
        self._auth(request)
        return self.files.get(file_id).to_dict()

    async def file_content(self, request: Request, file_id: str) -> Response:
        self._auth(request)
        obj = self.files.get(file_id)
        media = "application/jsonl" if obj.filename.endswith(".jsonl") else "application/octet-stream"
        return FileResponse(obj.path, media_type=media)

    async def delete_file(self, request: Request, file_id: str) -> dict[str, Any]:
        self._auth(request)
        obj = self.files.get(file_id)
        self.files.files.pop(file_id, None)
        obj.path.unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    async def retrieve(self, request: Request, batch_id: str) -> dict[str, Any]:
        self._auth(request)
        return self.get_batch(batch_id).to_dict()

    async def cancel_route(self, request: Request, batch_id: str) -> dict[str, Any]:
        self._auth(request)
        batch = self.get_batch(batch_id)
        self.cancel(batch)
        return batch.to_dict()

    async def list_batches(self, request: Request) -> dict[str, Any]:
        self._auth(request)
        raw = request.query_params.get("limit", "20")
        try:
            limit = int(raw)
        except ValueError:
            raise invalid_type("limit", "an integer", raw) from None
        if not 1 <= limit <= 100:
            raise OpenAIError(400, "Invalid 'limit': must be between 1 and 100.", param="limit", code="invalid_value")
        ordered = sorted(self.batches.values(), key=lambda b: b.created_at, reverse=True)
        after = request.query_params.get("after")
        if after:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1:] if after in ids else []
        data = [b.to_dict() for b in ordered[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit}


def _append(batch: Batch, which: str, record: dict[str, Any]) -> None:
    """Append one JSONL line to the batch's output or error file (render/IO thread)."""
    data = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    path = batch.out_path if which == "out" else batch.err_path
    assert path is not None
    with batch.lock, path.open("ab") as fh:
        fh.write(data)
        if which == "out":
            batch.out_lines += 1
        else:
            batch.err_lines += 1


def validate_input_file(path: Path, endpoint: str) -> tuple[list[dict[str, Any]], list[Line], str | None]:
    """The `validating` step: (errors, lines, model). Any error fails the whole batch; nothing runs."""
    errors: list[dict[str, Any]] = []
    lines: list[Line] = []
    seen: set[str] = set()
    model: str | None = None

    def err(code: str, line: int | None, message: str, param: str | None = None) -> None:
        if len(errors) < 1000:
            errors.append({"code": code, "line": line, "message": message, "param": param})

    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if len(lines) >= MAX_BATCH_LINES:
                err("too_many_requests", number, f"The batch input file has more than {MAX_BATCH_LINES} requests.")
                break
            try:
                item = json.loads(raw)
            except ValueError:
                err("invalid_json_line", number, "This line is not parseable as valid JSON.")
                continue
            if not isinstance(item, dict):
                err("invalid_json_line", number, "This line is not a JSON object.")
                continue
            bad = False
            for key in ("custom_id", "method", "url", "body"):
                if key not in item:
                    err("missing_required_parameter", number, f"Missing required parameter: '{key}'.", key)
                    bad = True
            if bad:
                continue
            cid = item["custom_id"]
            if not isinstance(cid, str) or not cid:
                err("invalid_custom_id", number, "The custom_id must be a non-empty string.", "custom_id")
                continue
            if cid in seen:
                err("duplicate_custom_id", number, "The custom_id for this request is a duplicate of another request. "
                    "The custom_id parameter must be unique for each individual request in a batch.", "custom_id")
                continue
            seen.add(cid)
            if item["method"] != "POST":
                err("invalid_method", number, "The method for this request must be 'POST'.", "method")
                continue
            if item["url"] != endpoint:
                err("invalid_url", number, f"The URL provided for this request does not match the batch endpoint "
                    f"'{endpoint}'.", "url")
                continue
            body = item["body"]
            if not isinstance(body, dict):
                err("invalid_body", number, "The body of this request must be a JSON object.", "body")
                continue
            line_model = body.get("model")
            if model is None:
                model = line_model if isinstance(line_model, str) else None
            elif line_model != model:
                err("mismatched_model", number, "The provided model for this request does not match the model of "
                    "the other requests in the batch; a batch must use a single model.", "body.model")
                continue
            lines.append(Line(number=number, custom_id=cid, body=body))
    if not lines and not errors:
        err("empty_file", None, "The batch input file is empty.")
    return errors, lines, model


def build(state: SandboxState) -> ProviderMount:
    provider = OpenAIBatchProvider(state)
    return ProviderMount(NAME, PREFIX, provider.router(), provider.adapter,
                         "OpenAI Files + Batch API for /v1/images/edits (https://api.openai.com)")


__all__ = ["OpenAIBatchProvider", "build", "validate_input_file"]
