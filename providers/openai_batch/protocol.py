"""OpenAI Batch API for gpt-image-2 edits: many jobs -> one JSONL file -> one provider batch, at 50% of sync prices.

Facts: shared/reference/provider-openai.md §2 (Batch + files), §3 (errors), §4 (prices). Protocol:

1. `POST {base}/files` (multipart, `purpose=batch`) uploads a JSONL file; each line is
   `{"custom_id": <our job_id>, "method": "POST", "url": "/v1/images/edits", "body": <JSON edit form>}`
   (`providers.openai.common.json_edit_body`: model, prompt, n, size, quality, background,
   output_format, `images: [{image_url: <presigned S3 URL>}]`, `mask: {image_url}`).
2. `POST {base}/batches {input_file_id, endpoint: "/v1/images/edits", completion_window: "24h"}`.
3. `GET {base}/batches/{id}` until `completed | expired | cancelled | failed`
   (`validating`, `in_progress`, `finalizing`, `cancelling` are still running).
4. `GET {base}/files/{output_file_id}/content` and `.../{error_file_id}/content`: one line per request,
   `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`,
   in any order, joined back to jobs on `custom_id`.

How the protocol maps that onto the pipeline's hooks. Coordination between workers (per-batch line counts,
the shared status answer, the ingest lock, the per-job records, cancellations) and the staging of decoded
images live in the engine, behind `BatchStore` (implemented by worker/batch_ingest.py on Redis and S3; every
key is a `worker.keys.Keys` method): this module builds requests and reads answers only.
* A dispatch claims enough jobs to fill the provider batches that may still open: at most `claim_size` (50,000),
  at most `max_open_batches` (20, EDITQ_OPENAI_BATCH_MAX_OPEN_BATCHES: batches created and not yet read back,
  across all workers) minus those open, times `max_lines`; none at the limit. `submit_many` cuts them into provider
  batches at `max_lines` (50,000) lines or `max_file_bytes` (190 MB, under OpenAI's 200 MB), whichever comes
  first, and sends one upload + one batch create per provider batch (a size cut that would open more batches than
  may open leaves the surplus jobs queued for a retry, unsent). Each job's request id is
  `"{batch_id}:{job_id}"`; its handle is `{batch_id, custom_id, line, input_file_id}`.
* `poll_many` makes at most one `GET /batches/{id}` per provider batch per `status_ttl_s` (the answer is shared
  through the store by every poller in every worker process). When a batch has ended, ONE worker (the store's ingest
  lock, `Keys.oaib_lock`, extended while it works) streams the error file and then the output file line by line,
  never holding a whole file: each output image is base64-decoded and written to S3 under
  `{staging_prefix}/{batch_id}/{job_id}/{n}.{ext}`, and a small per-job record (S3 keys, usage, cost, or the
  classified error) goes into the store (`Keys.oaib_results`). Jobs complete as soon as their record
  exists (even while the rest of the file is still being read); the collector then copies each staged image to
  the job's output key through a presigned GET (the normal URL path: hashed, probed, manifest written).
  Memory: one line (the base64 of one job's images) plus `ingest_concurrency` decoded images at a time.
  Disk: none. S3 holds the staged copy until a lifecycle rule on `staging_prefix` removes it (document: 7 days).
  An interrupted ingest (worker killed, `ingest_budget_s` reached) is resumed by the next poll: lines whose
  custom_id already has a record are skipped without decoding.
* Input URLs: a line may start up to 24 h after the upload, longer than the pipeline's presigned URLs last
  (`EDITQ_PRESIGN_TTL_S`, 6 h), so `submit_many` re-signs every input for `input_url_ttl_s` (26 h) on the host
  providers use (`EDITQ_S3_PUBLIC_ENDPOINT`). With temporary (STS) credentials a URL dies with the session
  whatever its lifetime: sign with long-lived credentials for this provider.
* Cost: `usage` of each line priced with gpt-image-2 token prices x `discount` (0.5: Batch is half price;
  the reference marks "images get the same 50%" as inferred).

Choices where the sources are silent (safe for the user's money and data):
* Partial completion is per job. A line in the output file succeeds; a line in the error file with a
  `response` fails with its classified error (moderation, validation: terminal; 429/5xx: retryable); a line
  with `error.code` `batch_expired` / `batch_cancelled`, or a line missing from both files after the batch ended
  `expired` / `cancelled` / `failed`, was never run and, per the Batch FAQ, not billed: by default
  (`unrun_policy=retry`) it goes back to the queue as a retryable error (counted against max_attempts, so
  the next dispatch puts it in a new batch); with `unrun_policy=fail` it fails terminally. Either way the job's
  manifest records the reason ("openai_batch: not run: batch batch_x expired …").
  A line missing from both files of a `completed` batch is an `unknown` error marked maybe-billed.
* A `failed` batch (input validation) maps `errors.data[].line` to the job on that line (terminal: the line
  itself is bad); the other lines are "not run" as above.
* A batch create that times out or answers 5xx may still have created the batch: before reporting the
  failure the protocol lists recent batches and adopts the one whose `input_file_id` is ours, so the jobs are not
  submitted (and billed) twice. An upload or create that fails for sure deletes the uploaded file (best effort).
* `cancel(job)`: OpenAI cannot withdraw one line from a batch. The job is recorded as cancelled in the store; when
  every job of a provider batch is cancelled, the batch itself is cancelled (`POST /batches/{id}/cancel`).
  A single cancelled job's line may still run and be billed; its result is ignored.
* `deadline_s` (26 h, used by the pipeline instead of the global provider deadline) is above the 24 h window,
  so a batch is always allowed to finish or expire on its own before the pipeline gives up on its jobs.
* `rpm` stays 0: the pipeline counts claimed jobs against rpm, and one dispatch is one upload + one create.
* No webhooks: OpenAI's batch webhooks are configured per project (not per request) and name a batch, not a
  job, so they do not fit the receiver's per-job model; polling (cheap, shared per batch) is the only path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from editq.providers.openai.common import (
    answer_error,
    classify_code,
    classify_error,
    json_edit_body,
    moderation_stage,
    usage_and_cost,
    validate_edit,
)
from editq.providers.openai_batch import OpenAIBatchSettings
from editq.providers.protocol import ProviderProtocol, engine_service
from editq.providers.spec import ProviderSettings
from editq.providers.types import Answer, InputUrls, Outcome, OutputRef, ProviderRequest, Result, Submitted, malformed
from editq.schemas.job import EditJob
from editq.schemas.manifest import Usage
from editq.worker.errors import ErrorKind, ProviderError

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

NAME = "openai_batch"
ENDPOINT = "/v1/images/edits"
COMPLETION_WINDOW = "24h"
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
UNRUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
# the engine's store (Redis + S3); named, not imported: the protocol stays free of redis and storage
ENGINE_STORE = "editq.worker.batch_ingest:RedisBatchStore"


class BatchStore(Protocol):
    """What the protocol needs from the engine: state shared by every worker, and our own storage.

    Implemented by worker/batch_ingest.py (Redis, every key a `worker.keys.Keys` method; S3)."""

    def remember(self, batch_id: str, lines: int) -> None:
        """A provider batch was created with this many lines (cancel counts against it); it is open until
        `mark_ingested`."""

    def open_batches(self, horizon_s: float) -> int:
        """Provider batches created in the last `horizon_s` and not yet read back (every worker's)."""

    def records(self, batch_id: str, custom_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """The recorded per-job records, None where a job has none yet."""

    def recorded(self, batch_id: str) -> set[str]:
        """The custom ids that have a record (skipped when a file is read again)."""

    def record(self, batch_id: str, custom_id: str, rec: dict[str, Any]) -> None: ...

    def cached_status(self, batch_id: str) -> dict[str, Any] | None:
        """The batch object another poller fetched less than `status_ttl_s` ago, or None."""

    def cache_status(self, batch_id: str, batch: dict[str, Any], ttl_s: float) -> None: ...

    def ingested(self, batch_id: str) -> str | None:
        """The batch's final status once its files have been read whole, else None."""

    def mark_ingested(self, batch_id: str, status: str) -> None: ...

    def lock(self, batch_id: str, lease_s: float) -> str | None:
        """Take the ingest lock: a token, or None when another worker holds it."""

    def keep_lock(self, batch_id: str, token: str, lease_s: float) -> bool:
        """Extend our lease; False when it ran out and someone else took over."""

    def unlock(self, batch_id: str, token: str) -> None: ...

    def cancel_line(self, batch_id: str, custom_id: str) -> bool:
        """Record one job as cancelled; True when every line of the batch now is."""

    async def stage(self, key: str, data: bytes, content_type: str) -> None:
        """Write one decoded output image to our storage."""

    def output_url(self, key: str) -> str:
        """A GET URL for a staged output, on the endpoint the workers use."""

    def input_url(self, key: str, ttl_s: int) -> str:
        """A GET URL for an input, on the endpoint providers use, valid `ttl_s`."""


@dataclass
class _Line:
    index: int  # position in the submit_many items
    job_id: str
    data: bytes  # one JSONL line, newline included


# ---- pure translation ----------------------------------------------------------------------------------
def org_headers(settings: OpenAIBatchSettings) -> dict[str, str]:
    headers: dict[str, str] = {}
    if settings.organization:
        headers["OpenAI-Organization"] = settings.organization
    if settings.project:
        headers["OpenAI-Project"] = settings.project
    return headers


def jsonl_line(job: EditJob, image_urls: Sequence[str], mask_url: str | None) -> dict[str, Any]:
    return {"custom_id": job.job_id, "method": "POST", "url": ENDPOINT,
            "body": json_edit_body(job, image_urls, mask_url)}


def chunk_lines(items: Sequence[tuple[EditJob, ProviderRequest]], max_lines: int, max_file_bytes: int
                ) -> tuple[list[list[_Line]], dict[int, str]]:
    """Split the jobs' lines into provider batches within the line and byte limits.

    Returns (chunks, too_big) where too_big maps an item index to the reason it cannot be sent."""
    chunks: list[list[_Line]] = []
    too_big: dict[int, str] = {}
    current: list[_Line] = []
    size = 0
    for i, (job, req) in enumerate(items):
        data = json.dumps(req.json, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if len(data) > max_file_bytes:
            too_big[i] = (f"{NAME}: the batch line of job {job.job_id} is {len(data)} bytes; allowed: at most "
                          f"{max_file_bytes} bytes per batch file")
            continue
        if current and (len(current) >= max_lines or size + len(data) > max_file_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(_Line(i, job.job_id, data))
        size += len(data)
    if current:
        chunks.append(current)
    return chunks, too_big


def upload_request(chunk: Sequence[_Line], name: str, settings: OpenAIBatchSettings) -> ProviderRequest:
    body = b"".join(line.data for line in chunk)
    return ProviderRequest("POST", "/files", files=[("file", (name, body, "application/jsonl"))],
                           data={"purpose": "batch"}, headers=org_headers(settings),
                           timeout_s=settings.upload_timeout_s, what="upload batch file")


def create_request(file_id: str, chunk: Sequence[_Line], settings: OpenAIBatchSettings) -> ProviderRequest:
    create: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": ENDPOINT,
        "completion_window": COMPLETION_WINDOW,
        "metadata": {"editq_jobs": str(len(chunk)), "editq_first_job": chunk[0].job_id[:500]},
    }
    if settings.output_expires_after_s:
        create["output_expires_after"] = {"anchor": "created_at", "seconds": settings.output_expires_after_s}
    return ProviderRequest("POST", "/batches", json=create, headers=org_headers(settings), what="create batch")


def call(method: str, path: str, settings: OpenAIBatchSettings, what: str, **kw: Any) -> ProviderRequest:
    return ProviderRequest(method, path, headers=org_headers(settings), what=what, **kw)


def answer_object(answer: Answer, what: str, *, maybe_billed: bool = False) -> dict[str, Any]:
    """A 2xx answer's JSON object, or the classified error; an unreadable body is malformed."""
    if not answer.ok:
        raise answer_error(answer, NAME, what)
    data = answer.json
    if not isinstance(data, dict):
        raise malformed(NAME, what, f"not a JSON object: {answer.text[:200]}", maybe_billed=maybe_billed)
    return data


def parse_file(answer: Answer) -> str:
    fid = answer_object(answer, "upload batch file").get("id")
    if not isinstance(fid, str) or not fid:
        raise malformed(NAME, "upload batch file", f"no file id in {answer.text[:200]}")
    return fid


def parse_batch(answer: Answer, what: str) -> dict[str, Any]:
    batch = answer_object(answer, what, maybe_billed=what == "create batch")
    if not isinstance(batch.get("id"), str) or not batch["id"]:
        raise malformed(NAME, what, f"no batch id in {answer.text[:200]}", maybe_billed=what == "create batch")
    return batch


def find_batch(answer: Answer, input_file_id: str) -> dict[str, Any] | None:
    """The batch of a `GET /batches` list whose input file is ours (a create whose answer was lost)."""
    if not answer.ok:
        return None
    data = answer.obj.get("data")
    for batch in data if isinstance(data, list) else []:
        if isinstance(batch, dict) and batch.get("input_file_id") == input_file_id and batch.get("id"):
            return batch
    return None


def unrun_error(bid: str, why: str, policy: str, detail: str = "") -> ProviderError:
    kind = ErrorKind.retryable if policy == "retry" else ErrorKind.terminal
    text = "back to the queue" if kind is ErrorKind.retryable else "failed by unrun_policy=fail"
    reason = f"{NAME}: not run: {why} in batch {bid} (not billed; {text})"
    if detail:
        reason += f": {detail}"
    return ProviderError(kind, reason[:2000], provider_code=why)


def missing_outcome(bid: str, status: str, batch: dict[str, Any], handle: dict[str, Any], policy: str) -> Outcome:
    """A job whose line is in neither file of an ended batch."""
    errors = batch.get("errors") if isinstance(batch.get("errors"), dict) else {}
    data = [e for e in (errors or {}).get("data") or [] if isinstance(e, dict)]
    if status == "failed":
        for e in data:
            if e.get("line") is not None and e.get("line") == handle.get("line"):
                code = e.get("code")
                return Outcome.failed(ProviderError(
                    ErrorKind.terminal,
                    f"{NAME}: batch {bid} refused line {e.get('line')}: {code}: {e.get('message') or ''}"[:2000],
                    provider_code=str(code) if code else None,
                ))
        errs = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in data)
        return Outcome.failed(unrun_error(bid, "batch failed validation", policy, errs[:500]))
    if status in ("expired", "cancelled"):
        return Outcome.failed(unrun_error(bid, f"batch {status}", policy))
    return Outcome.failed(ProviderError(
        ErrorKind.unknown, f"{NAME}: batch {bid} completed without a line for this job (may have been billed)",
        maybe_billed=True,
    ))


def error_record(err: ProviderError, request_id: Any = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"ok": False, "kind": err.kind.value, "reason": err.reason[:2000]}
    if err.status_code is not None:
        rec["status_code"] = err.status_code
    if err.provider_code:
        rec["code"] = err.provider_code
    if err.retry_after_s is not None:
        rec["retry_after_s"] = err.retry_after_s
    if err.maybe_billed:
        rec["maybe_billed"] = True
    if err.moderation:
        rec["moderation"] = err.moderation
    if request_id:
        rec["openai_request_id"] = request_id
    return rec


def error_line_record(cid: str, item: dict[str, Any]) -> dict[str, Any] | None:
    """An output/error line that is not a success -> its record; None for a success (images to stage)."""
    resp = item.get("response")
    error = item.get("error")
    if isinstance(resp, dict):
        try:
            status = int(resp.get("status_code") or 0)
        except (TypeError, ValueError):
            status = 0
        body = resp.get("body")
        if 200 <= status < 300 and isinstance(body, dict):
            return None
        err = classify_error(status or 500, body, provider=NAME, what="batch line")
        return error_record(err, request_id=resp.get("request_id"))
    if isinstance(error, dict):
        code = error.get("code")
        msg = str(error.get("message") or "")
        if code in UNRUN_CODES:
            return {"unrun": code, "message": msg[:500]}
        if code == "request_timeout":
            err = ProviderError(ErrorKind.retryable, f"{NAME} batch line: request_timeout: {msg}"[:2000],
                                provider_code="request_timeout", maybe_billed=True)
        else:
            err = classify_code(str(code) if code else None, None, msg, provider=NAME, what="batch line",
                                stage=moderation_stage(item.get("error")))
        return error_record(err)
    return error_record(ProviderError(ErrorKind.unknown, f"{NAME}: line for {cid} has neither response nor error"))


def decode_output(cid: str, n: int, image: Any, fmt: str) -> tuple[bytes, str] | dict[str, Any] | None:
    """Output #n of a success body as (bytes, kind); the error record when it is not base64; None when empty.
    One image at a time, so a line's images are never all decoded at once."""
    b64 = image.get("b64_json") if isinstance(image, dict) else None
    if not b64:
        return None
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return error_record(ProviderError(ErrorKind.unknown, f"{NAME}: output #{n} of {cid} is not base64"))
    return blob, sniff(blob) or fmt


def success_record(cid: str, body: dict[str, Any], request_id: Any, outputs: list[dict[str, str]],
                   settings: OpenAIBatchSettings) -> dict[str, Any]:
    if not outputs:
        return error_record(ProviderError(ErrorKind.unknown, f"{NAME}: line for {cid} succeeded without images",
                                          maybe_billed=True))
    usage_raw = body.get("usage")
    usage = usage_and_cost(usage_raw if isinstance(usage_raw, dict) else None,
                           settings.token_prices(multiplier=settings.discount))
    rec: dict[str, Any] = {"ok": True, "outputs": outputs, "openai_request_id": request_id}
    if usage is not None:
        rec["usage"] = usage.model_dump(exclude_none=True)
    for k in ("size", "quality", "background", "output_format", "created"):
        if body.get(k) is not None:
            rec[k] = body[k]
    return rec


def record_outcome(bid: str, rec: dict[str, Any], output_url: Any, policy: str) -> Outcome:
    """A recorded line -> its outcome (`output_url(key)` signs a staged image's URL)."""
    if rec.get("ok"):
        outputs = [OutputRef(url=output_url(o["key"]), content_type=o.get("content_type"))
                   for o in rec.get("outputs", [])]
        usage = Usage.model_validate(rec["usage"]) if rec.get("usage") else None
        raw = {k: v for k, v in rec.items() if k not in ("ok", "outputs", "usage")}
        return Outcome.succeeded(Result(outputs=outputs, usage=usage, raw={"batch_id": bid, **raw}))
    if rec.get("unrun"):
        return Outcome.failed(unrun_error(bid, str(rec["unrun"]), policy, str(rec.get("message") or "")))
    try:
        kind = ErrorKind(rec.get("kind", "unknown"))
    except ValueError:
        kind = ErrorKind.unknown
    return Outcome.failed(ProviderError(
        kind, str(rec.get("reason", f"{NAME}: failed")),
        status_code=rec.get("status_code"), provider_code=rec.get("code"),
        retry_after_s=rec.get("retry_after_s"), maybe_billed=bool(rec.get("maybe_billed")),
        moderation=rec.get("moderation"),
    ))


def custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line without parsing it (it comes first in OpenAI's lines); None if not found."""
    m = _CUSTOM_ID.search(raw, 0, 4096)
    if m is None:
        return None
    try:
        value = json.loads(b'"' + m.group(1) + b'"')
    except ValueError:
        return None
    return str(value)


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


async def lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Split a byte stream into lines (without the newline), one line in memory at a time.

    Each byte is scanned for a newline once, however many chunks a long (base64) line spans."""
    buf = bytearray()
    scanned = 0
    async for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            nl = buf.find(b"\n", max(start, scanned))
            if nl < 0:
                break
            line = bytes(buf[start:nl]).strip()
            start = nl + 1
            if line:
                yield line
        del buf[:start]
        scanned = len(buf)
    tail = bytes(buf).strip()
    if tail:
        yield tail


def split_request_id(request_id: str) -> tuple[str, str]:
    """`"{batch_id}:{job_id}"` -> (batch_id, job_id)."""
    bid, _, jid = request_id.partition(":")
    return bid, jid


# ---- the protocol ----------------------------------------------------------------------------------------
class OpenAIBatchProtocol(ProviderProtocol):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = OpenAIBatchSettings
    settings: OpenAIBatchSettings

    def __init__(self, settings: ProviderSettings | None = None, *, store: BatchStore | None = None) -> None:
        super().__init__(settings)
        self._store = store

    def free_batches(self) -> int:
        """Provider batches this deployment may still open (`max_open_batches` minus those in flight)."""
        return max(0, self.settings.max_open_batches - self.store.open_batches(self.settings.deadline_s))

    def claim_size(self) -> int | None:
        """Enough jobs to fill the provider batches that may still open (0 at the limit: claim nothing)."""
        return min(self.settings.claim_size, self.free_batches() * self.settings.max_lines)

    @property
    def store(self) -> BatchStore:
        if self._store is None:  # the engine's, made on first use (processes that never poll need none)
            self._store = engine_service(ENGINE_STORE, results_ttl_s=self.settings.results_ttl_s)
        return self._store

    def deadline_s(self) -> float | None:
        return self.settings.deadline_s

    # ---- pure -------------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        return validate_edit(job, provider=NAME)

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        """The job's JSONL line (`json`); `submit_many` writes the lines into one file."""
        return ProviderRequest("POST", ENDPOINT, json=jsonl_line(job, inputs.images, inputs.mask), what="submit")

    def chunk_lines(self, items: Sequence[tuple[EditJob, ProviderRequest]]) -> tuple[list[list[_Line]], dict[int, str]]:
        return chunk_lines(items, self.settings.max_lines, self.settings.max_file_bytes)

    def resign_all(self, items: Sequence[tuple[EditJob, ProviderRequest]]) -> list[tuple[EditJob, ProviderRequest]]:
        """Lines whose input URLs last `input_url_ttl_s` (the pipeline's last `presign_ttl_s`, 6 h by default,
        but OpenAI may start a line up to 24 h after the upload)."""
        ttl = self.settings.input_url_ttl_s
        out = []
        for job, req in items:
            mask = self.store.input_url(job.mask_input.s3_key, ttl) if job.mask_input is not None else None
            line = jsonl_line(job, [self.store.input_url(rec.s3_key, ttl) for rec in job.inputs], mask)
            out.append((job, ProviderRequest(req.method, req.url, json=line, what=req.what)))
        return out

    # ---- I/O: submit ---------------------------------------------------------------------------------
    async def submit(self, client: ProviderClient, job: EditJob, req: ProviderRequest) -> Submitted:
        (res,) = await self.submit_many(client, [(job, req)])
        if isinstance(res, ProviderError):
            raise res
        return res

    async def submit_many(
        self, client: ProviderClient, items: Sequence[tuple[EditJob, ProviderRequest]]
    ) -> list[Submitted | ProviderError]:
        out: list[Submitted | ProviderError | None] = [None] * len(items)
        if self.settings.input_url_ttl_s:
            items = await asyncio.to_thread(self.resign_all, items)
        chunks, too_big = self.chunk_lines(items)
        for i, reason in too_big.items():
            out[i] = ProviderError(ErrorKind.terminal, reason)
        free = self.free_batches()
        for chunk in chunks[free:]:  # the size cut made more batches than may open: these wait, unsent
            err = ProviderError(ErrorKind.retryable, f"{NAME}: not sent: {self.settings.max_open_batches} provider "
                                "batches already open (max_open_batches)", retry_after_s=self.settings.status_ttl_s)
            for line in chunk:
                out[line.index] = err
        for chunk in chunks[:free]:
            try:
                batch = await self._create_batch(client, chunk)
            except ProviderError as err:
                for line in chunk:
                    out[line.index] = err
                continue
            bid = batch["id"]
            self.store.remember(bid, len(chunk))
            for n, line in enumerate(chunk, start=1):
                handle = {"batch_id": bid, "custom_id": line.job_id, "line": n,
                          "input_file_id": batch.get("input_file_id")}
                out[line.index] = Submitted(request_id=f"{bid}:{line.job_id}", handle=handle)
        return [r if r is not None else ProviderError(ErrorKind.unknown, f"{NAME}: not submitted") for r in out]

    async def _create_batch(self, client: ProviderClient, chunk: list[_Line]) -> dict[str, Any]:
        name = f"editq-{int(time.time())}-{secrets.token_hex(4)}.jsonl"
        file_id = parse_file(await client.send(upload_request(chunk, name, self.settings)))
        try:
            return parse_batch(await client.send(create_request(file_id, chunk, self.settings)), "create batch")
        except ProviderError as err:
            if err.kind is not ErrorKind.terminal:  # a timeout or 5xx may still have created it
                found = await self._find_batch(client, file_id)
                if found is not None:
                    return found
            await self._delete_file(client, file_id)
            raise

    async def _find_batch(self, client: ProviderClient, input_file_id: str) -> dict[str, Any] | None:
        try:
            answer = await client.send(call("GET", "/batches", self.settings, "list batches",
                                            params={"limit": "100"}))
        except ProviderError:
            return None
        return find_batch(answer, input_file_id)

    async def _delete_file(self, client: ProviderClient, file_id: str) -> None:
        try:
            await client.send(call("DELETE", f"/files/{file_id}", self.settings, "delete file"))
        except ProviderError:
            return None

    # ---- I/O: poll -------------------------------------------------------------------------------------
    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        (res,) = await self.poll_many(client, [(request_id, handle)])
        if isinstance(res, ProviderError):
            raise res
        return res

    async def poll_many(
        self, client: ProviderClient, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Outcome | ProviderError]:
        out: list[Outcome | ProviderError | None] = [None] * len(items)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (rid, handle) in enumerate(items):
            bid = handle.get("batch_id") or rid.split(":", 1)[0]
            if not bid or not handle.get("custom_id"):
                out[i] = Outcome.failed(ProviderError(ErrorKind.unknown, f"{NAME}: job has no batch handle"))
                continue
            groups[bid].append(i)

        async def one(bid: str, idx: list[int]) -> None:
            handles = [items[i][1] for i in idx]
            try:
                outcomes = await self._poll_batch(client, bid, handles)
            except ProviderError as err:
                outcomes = [err] * len(idx)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                outcomes = [malformed(NAME, "batch status", f"{type(exc).__name__}: {exc}"[:300])] * len(idx)
            for i, o in zip(idx, outcomes, strict=True):
                out[i] = o

        await asyncio.gather(*(one(b, idx) for b, idx in groups.items()))
        return [o if o is not None else ProviderError(ErrorKind.unknown, f"{NAME}: not polled") for o in out]

    def outcome(self, bid: str, rec: dict[str, Any]) -> Outcome:
        return record_outcome(bid, rec, self.store.output_url, self.settings.unrun_policy)

    async def _poll_batch(
        self, client: ProviderClient, bid: str, handles: list[dict[str, Any]]
    ) -> list[Outcome | ProviderError]:
        cids = [str(h["custom_id"]) for h in handles]
        records = self.store.records(bid, cids)
        if all(r is not None for r in records):
            return [self.outcome(bid, r) for r in records if r is not None]
        batch = await self.batch_status(client, bid)
        if batch is None:  # 404: not ours (wrong key/project) or deleted
            err = ProviderError(ErrorKind.terminal, f"{NAME}: batch {bid} not found", status_code=404)
            return [self.outcome(bid, r) if r is not None else Outcome.failed(err) for r in records]
        status = str(batch.get("status"))
        if status in ENDED and not self.store.ingested(bid):
            await self._ingest(client, bid, batch)
            records = self.store.records(bid, cids)
        ingested = self.store.ingested(bid)
        raw_counts = batch.get("request_counts")
        counts: dict[str, Any] = raw_counts if isinstance(raw_counts, dict) else {}
        results: list[Outcome | ProviderError] = []
        for handle, rec in zip(handles, records, strict=True):
            if rec is not None:
                results.append(self.outcome(bid, rec))
            elif status in ENDED and ingested:
                results.append(missing_outcome(bid, status, batch, handle, self.settings.unrun_policy))
            else:
                results.append(Outcome.running(status=status, batch_id=bid, completed=counts.get("completed"),
                                               failed=counts.get("failed"), total=counts.get("total")))
        return results

    async def batch_status(self, client: ProviderClient, bid: str) -> dict[str, Any] | None:
        """The batch object, shared by every poller for `status_ttl_s` (None: the batch does not exist)."""
        cached = self.store.cached_status(bid)
        if cached:
            return cached
        answer = await client.send(call("GET", f"/batches/{bid}", self.settings, "batch status"))
        if answer.status == 404:
            return None
        batch = parse_batch(answer, "batch status")
        self.store.cache_status(bid, {k: v for k, v in batch.items() if k != "metadata"}, self.settings.status_ttl_s)
        return batch

    # ---- I/O: reading the output and error files ----------------------------------------------------------
    async def _ingest(self, client: ProviderClient, bid: str, batch: dict[str, Any]) -> bool:
        """Read the batch's files into per-job records once (one worker at a time). True when finished."""
        token = self.store.lock(bid, self.settings.ingest_lock_s)
        if token is None:
            return False
        try:
            deadline = time.monotonic() + self.settings.ingest_budget_s
            done = self.store.recorded(bid)
            for file_id in (batch.get("error_file_id"), batch.get("output_file_id")):
                if not file_id:
                    continue
                if not await self._read_file(client, bid, str(file_id), done, token, deadline):
                    return False
            self.store.mark_ingested(bid, str(batch.get("status")))
            return True
        finally:
            self.store.unlock(bid, token)

    async def _read_file(
        self, client: ProviderClient, bid: str, file_id: str, done: set[str], token: str, deadline: float,
    ) -> bool:
        sem = asyncio.Semaphore(self.settings.ingest_concurrency)
        pending: set[asyncio.Task[bool]] = set()
        failed: list[str] = []
        req = call("GET", f"/files/{file_id}/content", self.settings, "download batch file",
                   connect_timeout_s=10.0)
        try:
            async with client.stream(req) as (answer, chunks):
                if not answer.ok:
                    raise answer_error(answer, NAME, "download batch file")
                n = 0
                async for raw in lines(chunks):
                    n += 1
                    cid = custom_id_of(raw)
                    if cid is not None and cid in done:
                        continue
                    try:
                        item = json.loads(raw)
                    except ValueError:
                        continue  # a torn line; the job is handled as missing
                    if not isinstance(item, dict):
                        continue
                    cid = str(item.get("custom_id") or "")
                    if not cid or cid in done:
                        continue
                    done.add(cid)
                    await sem.acquire()
                    task = asyncio.create_task(self._record_line(bid, cid, item, sem))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    task.add_done_callback(_note_failure(cid, failed))
                    del item, raw
                    if n % 50 == 0:
                        if not self.store.keep_lock(bid, token, self.settings.ingest_lock_s):
                            return False  # our lease ran out and someone else took over
                        if time.monotonic() > deadline:
                            return False  # yield; the next poll resumes, skipping recorded lines
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if failed:  # not marked ingested: the next poll reads the file again for these lines
            for cid in failed:
                done.discard(cid)
            return False
        return True

    async def _record_line(self, bid: str, cid: str, item: dict[str, Any], sem: asyncio.Semaphore) -> bool:
        """Store one line's record; False (noted by the caller) when storage or the store failed."""
        try:
            self.store.record(bid, cid, await self.line_record(bid, cid, item))
            return True
        except Exception:
            return False
        finally:
            sem.release()

    async def line_record(self, bid: str, cid: str, item: dict[str, Any]) -> dict[str, Any]:
        """One output/error line -> the small record the store keeps (images are staged first)."""
        rec = error_line_record(cid, item)
        if rec is not None:
            return rec
        resp = item["response"]
        body: dict[str, Any] = resp["body"]
        fmt = str(body.get("output_format") or "png").lower()
        images = body.get("data")
        outputs = []
        prefix = self.settings.staging_prefix.strip("/")
        for n, image in enumerate(images if isinstance(images, list) else []):
            decoded = decode_output(cid, n, image, fmt)
            if decoded is None:
                continue
            if isinstance(decoded, dict):
                return decoded
            data, kind = decoded
            key = f"{prefix}/{bid}/{cid}/{n}.{EXT.get(kind, kind)}"
            ctype = CONTENT_TYPES.get(kind, "application/octet-stream")
            await self.store.stage(key, data, ctype)
            del data, decoded
            outputs.append({"key": key, "content_type": ctype})
        return success_record(cid, body, resp.get("request_id"), outputs, self.settings)

    # ---- I/O: cancel -------------------------------------------------------------------------------------
    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        bid, cid = handle.get("batch_id"), handle.get("custom_id")
        if not bid or not cid:
            return None
        if self.store.cancel_line(str(bid), str(cid)):
            try:
                await client.send(call("POST", f"/batches/{bid}/cancel", self.settings, "cancel batch"))
            except ProviderError:
                return None
        return None


def _note_failure(cid: str, failed: list[str]) -> Any:
    def done(task: asyncio.Task[bool]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result():
            failed.append(cid)

    return done


__all__ = ["BatchStore", "OpenAIBatchProtocol", "OpenAIBatchSettings", "split_request_id"]
