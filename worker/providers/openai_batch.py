"""OpenAI Batch API for gpt-image-2 edits: many jobs -> one JSONL file -> one provider batch, at 50% of sync prices.

Facts: shared/reference/provider-openai.md §2 (Batch + files), §3 (errors), §4 (prices). Protocol:

1. `POST {base}/files` (multipart, `purpose=batch`) uploads a JSONL file; each line is
   `{"custom_id": <our job_id>, "method": "POST", "url": "/v1/images/edits", "body": <JSON edit form>}`
   (`worker.providers.openai_common.json_edit_body`: model, prompt, n, size, quality, background,
   output_format, `images: [{image_url: <presigned S3 URL>}]`, `mask: {image_url}`).
2. `POST {base}/batches {input_file_id, endpoint: "/v1/images/edits", completion_window: "24h"}`.
3. `GET {base}/batches/{id}` until `completed | expired | cancelled | failed`
   (`validating`, `in_progress`, `finalizing`, `cancelling` are still running).
4. `GET {base}/files/{output_file_id}/content` and `.../{error_file_id}/content`: one line per request,
   `{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null, "error": {"code", "message"} | null}`,
   in any order, joined back to jobs on `custom_id`.

How the adapter maps that onto the pipeline's hooks:
* `claim_size` (EDITQ_OPENAI_BATCH_CLAIM_SIZE, default 10,000) jobs are claimed per dispatch; `submit_many` splits
  them into provider batches of at most `max_lines` (50,000) lines and `max_file_bytes` (190 MB, under OpenAI's
  200 MB) and sends one upload + one batch create per provider batch. Each job's request id is
  `"{batch_id}:{job_id}"`; its handle is `{batch_id, custom_id, line, input_file_id}`.
* `poll_many` makes at most one `GET /batches/{id}` per provider batch per `status_ttl_s` (the answer is shared
  through Redis by every poller in every worker process). When a batch has ended, ONE worker (Redis lock
  `…:oaib:{batch}:lock`, extended while it works) streams the error file and then the output file line by line,
  never holding a whole file: each output image is base64-decoded and written to S3 under
  `{staging_prefix}/{batch_id}/{job_id}/{n}.{ext}`, and a small per-job record (S3 keys, usage, cost, or the
  classified error) goes into the Redis hash `…:oaib:{batch}:results`. Jobs complete as soon as their record
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
  failure the adapter lists recent batches and adopts the one whose `input_file_id` is ours, so the jobs are not
  submitted (and billed) twice. An upload or create that fails for sure deletes the uploaded file (best effort).
* `cancel(job)`: OpenAI cannot withdraw one line from a batch. The job is recorded as cancelled in Redis; when
  every job of a provider batch is cancelled, the batch itself is cancelled (`POST /batches/{id}/cancel`).
  A single cancelled job's line may still run and be billed; its result is ignored.
* `deadline_s` (26 h, used by the pipeline instead of the global provider deadline) is above the 24 h window,
  so a batch is always allowed to finish or expire on its own before the pipeline gives up on its jobs.
* `rpm` stays 0: the pipeline counts claimed jobs against rpm, and one dispatch is one upload + one create.
* No webhooks: OpenAI's batch webhooks are configured per project (not per request) and name a batch, not a
  job, so they do not fit the receiver's per-job model; polling (cheap, shared per batch) is the only path.
* API keys are redacted from every error reason (`openai_common.redact`).
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from schemas.job import EditJob
from schemas.manifest import Usage
from worker.errors import ErrorKind, ProviderError
from worker.providers.base import (
    InputUrls,
    Outcome,
    OutputRef,
    ProviderAdapter,
    ProviderRequest,
    ProviderSettings,
    Result,
    Submitted,
)
from worker.providers.openai_common import (
    OpenAIPriceSettings,
    classify_code,
    classify_error,
    json_edit_body,
    redact,
    usage_and_cost,
    validate_edit,
)

NAME = "openai_batch"
ENDPOINT = "/v1/images/edits"
COMPLETION_WINDOW = "24h"
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
ENDED = frozenset({"completed", "expired", "cancelled", "failed"})
UNRUN_CODES = frozenset({"batch_expired", "batch_cancelled"})
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


class OpenAIBatchSettings(OpenAIPriceSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_OPENAI_BATCH_", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("EDITQ_OPENAI_BATCH_API_KEY", "EDITQ_OPENAI_API_KEY", "OPENAI_API_KEY"),
    )
    base_url: str = "https://api.openai.com/v1"
    organization: str | None = Field(None, description="OpenAI-Organization header.")
    project: str | None = Field(None, description="OpenAI-Project header.")
    concurrency: int = Field(50_000, description="Jobs in flight in provider batches (the pipeline's slot cap).")
    rpm: int = Field(0, description="Keep 0: the pipeline counts claimed jobs, and one dispatch is one batch.")
    webhooks: bool = False
    timeout_s: float = 60.0
    claim_size: int = Field(10_000, ge=1, description="Jobs one dispatch claims (-> one or more provider batches).")
    max_lines: int = Field(50_000, ge=1, le=50_000, description="Lines per provider batch (OpenAI: 50,000).")
    max_file_bytes: int = Field(190 * 1024 * 1024, ge=1024, description="JSONL bytes per batch (OpenAI: 200 MB).")
    upload_timeout_s: float = Field(90.0, description="Keep below the pipeline's submit_lease_s (120 s).")
    deadline_s: float = Field(26 * 3600.0, description="How long the pipeline lets a job sit in a batch.")
    status_ttl_s: float = Field(30.0, gt=0, description="One GET /batches/{id} answer serves all pollers this long.")
    ingest_lock_s: float = Field(120.0, gt=0, description="Lock lease of the worker reading a batch's files.")
    ingest_budget_s: float = Field(600.0, gt=0, description="One poll task reads files this long, then yields.")
    ingest_concurrency: int = Field(8, ge=1, description="Staged S3 uploads in flight while reading output.")
    staging_prefix: str = Field("staging/openai_batch", description="S3 prefix of decoded outputs before collect.")
    results_ttl_s: int = Field(14 * 86400, description="Redis keeps per-batch results this long.")
    discount: float = Field(0.5, ge=0, le=1, description="Batch price multiplier applied to the token prices.")
    unrun_policy: Literal["retry", "fail"] = Field(
        "retry", description="Lines a batch never ran (expired/cancelled/failed): back to the queue, or fail."
    )
    input_url_ttl_s: int = Field(
        26 * 3600, ge=0, le=7 * 86400,
        description="Lifetime of the presigned input URLs written into batch lines (a line may run up to 24 h "
        "after the upload); 0 keeps the pipeline's URLs (they last EDITQ_PRESIGN_TTL_S).",
    )
    output_expires_after_s: int | None = Field(
        None, ge=3600, le=2_592_000, description="output_expires_after.seconds for the output/error files."
    )


@dataclass
class _Line:
    index: int  # position in the submit_many items
    job_id: str
    data: bytes  # one JSONL line, newline included


class OpenAIBatchAdapter(ProviderAdapter):
    name: ClassVar[str] = NAME
    settings_cls: ClassVar[type[ProviderSettings]] = OpenAIBatchSettings
    supports_webhooks: ClassVar[bool] = False
    settings: OpenAIBatchSettings

    def __init__(self, settings: ProviderSettings | None = None, *, redis: Any = None, storage: Any = None,
                 key_prefix: str | None = None) -> None:
        super().__init__(settings)
        self._redis = redis
        self._storage = storage
        self._prefix = key_prefix

    @property
    def claim_size(self) -> int | None:  # type: ignore[override]  # configurable, not a class constant
        return self.settings.claim_size

    # ---- collaborators (lazy: the adapter is imported by processes that never poll) ----------------
    @property
    def redis(self) -> Any:
        if self._redis is None:
            from worker.redis_client import get_redis

            self._redis = get_redis()
        return self._redis

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from worker.storage import get_storage

            self._storage = get_storage()
        return self._storage

    def _key(self, batch_id: str, what: str) -> str:
        if self._prefix is None:
            from worker.keys import keys

            self._prefix = keys().prefix
        return f"{self._prefix}:oaib:{batch_id}:{what}"

    def auth_headers(self) -> dict[str, str]:
        headers = super().auth_headers()
        if self.settings.organization:
            headers["OpenAI-Organization"] = self.settings.organization
        if self.settings.project:
            headers["OpenAI-Project"] = self.settings.project
        return headers

    def _secrets(self) -> list[str]:
        return [self.settings.api_key.get_secret_value()] if self.settings.api_key else []

    # ---- pure -------------------------------------------------------------------------------------
    def validate(self, job: EditJob) -> list[str]:
        return validate_edit(job, provider=NAME)

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        """The job's JSONL line (`json`); `submit_many` writes the lines into one file."""
        line = {
            "custom_id": job.job_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": json_edit_body(job, inputs.images, inputs.mask),
        }
        return ProviderRequest("POST", ENDPOINT, json=line)

    def chunk_lines(self, items: Sequence[tuple[EditJob, ProviderRequest]]) -> tuple[list[list[_Line]], dict[int, str]]:
        """Split the jobs' lines into provider batches within the line and byte limits.

        Returns (chunks, too_big) where too_big maps an item index to the reason it cannot be sent."""
        chunks: list[list[_Line]] = []
        too_big: dict[int, str] = {}
        current: list[_Line] = []
        size = 0
        for i, (job, req) in enumerate(items):
            data = json.dumps(req.json, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
            if len(data) > self.settings.max_file_bytes:
                too_big[i] = (f"{NAME}: the batch line of job {job.job_id} is {len(data)} bytes; allowed: at most "
                              f"{self.settings.max_file_bytes} bytes per batch file")
                continue
            if current and (len(current) >= self.settings.max_lines or size + len(data) > self.settings.max_file_bytes):
                chunks.append(current)
                current, size = [], 0
            current.append(_Line(i, job.job_id, data))
            size += len(data)
        if current:
            chunks.append(current)
        return chunks, too_big

    # ---- I/O: submit ---------------------------------------------------------------------------------
    async def submit(self, http: httpx.AsyncClient, job: EditJob, req: ProviderRequest) -> Submitted:
        (res,) = await self.submit_many(http, [(job, req)])
        if isinstance(res, ProviderError):
            raise res
        return res

    async def submit_many(
        self, http: httpx.AsyncClient, items: Sequence[tuple[EditJob, ProviderRequest]]
    ) -> list[Submitted | ProviderError]:
        out: list[Submitted | ProviderError | None] = [None] * len(items)
        if self.settings.input_url_ttl_s:
            items = await asyncio.to_thread(self._resign_all, items)
        chunks, too_big = self.chunk_lines(items)
        for i, reason in too_big.items():
            out[i] = ProviderError(ErrorKind.terminal, reason)
        for chunk in chunks:
            try:
                batch = await self._create_batch(http, chunk)
            except ProviderError as err:
                for line in chunk:
                    out[line.index] = err
                continue
            bid = batch["id"]
            self.redis.hset(self._key(bid, "meta"), mapping={"lines": len(chunk), "created_at": repr(time.time())})
            self.redis.expire(self._key(bid, "meta"), self.settings.results_ttl_s)
            for n, line in enumerate(chunk, start=1):
                handle = {"batch_id": bid, "custom_id": line.job_id, "line": n,
                          "input_file_id": batch.get("input_file_id")}
                out[line.index] = Submitted(request_id=f"{bid}:{line.job_id}", handle=handle)
        return [r if r is not None else ProviderError(ErrorKind.unknown, f"{NAME}: not submitted") for r in out]

    def _resign_all(
        self, items: Sequence[tuple[EditJob, ProviderRequest]]
    ) -> list[tuple[EditJob, ProviderRequest]]:
        """Lines whose input URLs last `input_url_ttl_s` (the pipeline's last `presign_ttl_s`, 6 h by default,
        but OpenAI may start a line up to 24 h after the upload)."""
        out = []
        for job, req in items:
            line = dict(req.json or {})
            body = dict(line.get("body") or {})
            body["images"] = [{"image_url": self._presign_input(rec.s3_key)} for rec in job.inputs]
            if job.mask_input is not None:
                body["mask"] = {"image_url": self._presign_input(job.mask_input.s3_key)}
            line["body"] = body
            out.append((job, ProviderRequest(req.method, req.path, json=line)))
        return out

    def _presign_input(self, key: str) -> str:
        """Storage.presign (signed for the host providers reach S3 by), with this adapter's lifetime."""
        return self.storage.presign(key, ttl_s=self.settings.input_url_ttl_s)

    async def _create_batch(self, http: httpx.AsyncClient, chunk: list[_Line]) -> dict[str, Any]:
        body = b"".join(line.data for line in chunk)
        name = f"editq-{int(time.time())}-{secrets.token_hex(4)}.jsonl"
        resp = await self._call(
            http, "POST", "/files", what="upload batch file", timeout=self.settings.upload_timeout_s,
            files=[("file", (name, body, "application/jsonl"))], data={"purpose": "batch"},
        )
        file_id = resp.json()["id"]
        del body
        create: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": COMPLETION_WINDOW,
            "metadata": {"editq_jobs": str(len(chunk)), "editq_first_job": chunk[0].job_id[:500]},
        }
        if self.settings.output_expires_after_s:
            create["output_expires_after"] = {"anchor": "created_at", "seconds": self.settings.output_expires_after_s}
        try:
            resp = await self._call(http, "POST", "/batches", what="create batch", json=create)
        except ProviderError as err:
            if err.kind is not ErrorKind.terminal:  # a timeout or 5xx may still have created it
                found = await self._find_batch(http, file_id)
                if found is not None:
                    return found
            await self._delete_file(http, file_id)
            raise
        batch: dict[str, Any] = resp.json()
        return batch

    async def _find_batch(self, http: httpx.AsyncClient, input_file_id: str) -> dict[str, Any] | None:
        try:
            resp = await self._call(http, "GET", "/batches", what="list batches", params={"limit": "100"})
        except ProviderError:
            return None
        for batch in resp.json().get("data") or []:
            if isinstance(batch, dict) and batch.get("input_file_id") == input_file_id:
                return batch
        return None

    async def _delete_file(self, http: httpx.AsyncClient, file_id: str) -> None:
        try:
            await self._call(http, "DELETE", f"/files/{file_id}", what="delete file")
        except ProviderError:
            return None

    # ---- I/O: poll -------------------------------------------------------------------------------------
    async def poll(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        (res,) = await self.poll_many(http, [(request_id, handle)])
        if isinstance(res, ProviderError):
            raise res
        return res

    async def poll_many(
        self, http: httpx.AsyncClient, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Outcome | ProviderError]:
        out: list[Outcome | ProviderError | None] = [None] * len(items)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (rid, handle) in enumerate(items):
            bid = handle.get("batch_id") or rid.split(":", 1)[0]
            if not bid or not handle.get("custom_id"):
                out[i] = Outcome(done=True, error=ProviderError(ErrorKind.unknown, f"{NAME}: job has no batch handle"))
                continue
            groups[bid].append(i)

        async def one(bid: str, idx: list[int]) -> None:
            handles = [items[i][1] for i in idx]
            try:
                outcomes = await self._poll_batch(http, bid, handles)
            except ProviderError as err:
                outcomes = [err] * len(idx)
            for i, o in zip(idx, outcomes, strict=True):
                out[i] = o

        await asyncio.gather(*(one(b, idx) for b, idx in groups.items()))
        return [o if o is not None else ProviderError(ErrorKind.unknown, f"{NAME}: not polled") for o in out]

    async def _poll_batch(
        self, http: httpx.AsyncClient, bid: str, handles: list[dict[str, Any]]
    ) -> list[Outcome | ProviderError]:
        cids = [str(h["custom_id"]) for h in handles]
        records = self._records(bid, cids)
        if all(r is not None for r in records):
            return [self._outcome(bid, r) for r in records if r is not None]
        batch = await self.batch_status(http, bid)
        if batch is None:  # 404: not ours (wrong key/project) or deleted
            err = ProviderError(ErrorKind.terminal, f"{NAME}: batch {bid} not found", status_code=404)
            return [self._outcome(bid, r) if r is not None else Outcome(done=True, error=err) for r in records]
        status = str(batch.get("status"))
        if status in ENDED and not self.redis.exists(self._key(bid, "ingested")):
            await self._ingest(http, bid, batch)
            records = self._records(bid, cids)
        ingested = self.redis.get(self._key(bid, "ingested"))
        counts = batch.get("request_counts") or {}
        results: list[Outcome | ProviderError] = []
        for handle, rec in zip(handles, records, strict=True):
            if rec is not None:
                results.append(self._outcome(bid, rec))
            elif status in ENDED and ingested:
                results.append(self._missing(bid, status, batch, handle))
            else:
                results.append(Outcome.running(status=status, batch_id=bid, completed=counts.get("completed"),
                                               failed=counts.get("failed"), total=counts.get("total")))
        return results

    def _records(self, bid: str, cids: list[str]) -> list[dict[str, Any] | None]:
        raw = self.redis.hmget(self._key(bid, "results"), cids) if cids else []
        return [json.loads(r) if r else None for r in raw]

    async def batch_status(self, http: httpx.AsyncClient, bid: str) -> dict[str, Any] | None:
        """The batch object, shared by every poller for `status_ttl_s` (None: the batch does not exist)."""
        key = self._key(bid, "status")
        cached = self.redis.get(key)
        if cached:
            data: dict[str, Any] | None = json.loads(cached)
            return data
        try:
            resp = await self._call(http, "GET", f"/batches/{bid}", what="batch status")
        except ProviderError as err:
            if err.status_code == 404:
                return None
            raise
        batch: dict[str, Any] = resp.json()
        ttl_ms = max(1, int(self.settings.status_ttl_s * 1000))
        self.redis.set(key, json.dumps({k: v for k, v in batch.items() if k != "metadata"}), px=ttl_ms)
        return batch

    def _outcome(self, bid: str, rec: dict[str, Any]) -> Outcome:
        if rec.get("ok"):
            outputs = [OutputRef(url=self._presign(o["key"]), content_type=o.get("content_type"))
                       for o in rec.get("outputs", [])]
            usage = Usage.model_validate(rec["usage"]) if rec.get("usage") else None
            raw = {k: v for k, v in rec.items() if k not in ("ok", "outputs", "usage")}
            return Outcome(done=True, result=Result(outputs=outputs, usage=usage, raw={"batch_id": bid, **raw}))
        if rec.get("unrun"):
            return Outcome(done=True, error=self._unrun_error(bid, str(rec["unrun"]), str(rec.get("message") or "")))
        err = ProviderError(
            ErrorKind(rec.get("kind", "unknown")), str(rec.get("reason", f"{NAME}: failed")),
            status_code=rec.get("status_code"), provider_code=rec.get("code"),
            retry_after_s=rec.get("retry_after_s"), maybe_billed=bool(rec.get("maybe_billed")),
        )
        return Outcome(done=True, error=err)

    def _unrun_error(self, bid: str, why: str, detail: str = "") -> ProviderError:
        kind = ErrorKind.retryable if self.settings.unrun_policy == "retry" else ErrorKind.terminal
        policy = "back to the queue" if kind is ErrorKind.retryable else "failed by unrun_policy=fail"
        reason = f"{NAME}: not run: {why} in batch {bid} (not billed; {policy})"
        if detail:
            reason += f": {detail}"
        return ProviderError(kind, reason[:2000], provider_code=why)

    def _missing(self, bid: str, status: str, batch: dict[str, Any], handle: dict[str, Any]) -> Outcome:
        """A job whose line is in neither file of an ended batch."""
        if status == "failed":
            for e in (batch.get("errors") or {}).get("data") or []:
                if isinstance(e, dict) and e.get("line") is not None and e.get("line") == handle.get("line"):
                    msg = redact(str(e.get("message") or ""), self._secrets())
                    code = e.get("code")
                    return Outcome(done=True, error=ProviderError(
                        ErrorKind.terminal, f"{NAME}: batch {bid} refused line {e.get('line')}: {code}: {msg}"[:2000],
                        provider_code=str(code) if code else None,
                    ))
            errs = "; ".join(f"{e.get('code')}: {e.get('message')}"
                             for e in (batch.get("errors") or {}).get("data") or [] if isinstance(e, dict))
            return Outcome(done=True, error=self._unrun_error(bid, "batch failed validation",
                                                              redact(errs, self._secrets())[:500]))
        if status in ("expired", "cancelled"):
            return Outcome(done=True, error=self._unrun_error(bid, f"batch {status}"))
        return Outcome(done=True, error=ProviderError(
            ErrorKind.unknown, f"{NAME}: batch {bid} completed without a line for this job (may have been billed)",
            maybe_billed=True,
        ))

    def _presign(self, key: str) -> str:
        """A GET URL on the storage endpoint the workers use (not the providers' public one)."""
        s = self.storage
        url: str = s.client.generate_presigned_url(
            "get_object", Params={"Bucket": s.bucket, "Key": key}, ExpiresIn=s.settings.presign_ttl_s
        )
        return url

    # ---- I/O: reading the output and error files ----------------------------------------------------------
    async def _ingest(self, http: httpx.AsyncClient, bid: str, batch: dict[str, Any]) -> bool:
        """Read the batch's files into per-job records once (one worker at a time). True when finished."""
        lock = self._key(bid, "lock")
        token = secrets.token_hex(8)
        lease_ms = int(self.settings.ingest_lock_s * 1000)
        if not self.redis.set(lock, token, nx=True, px=lease_ms):
            return False
        try:
            deadline = time.monotonic() + self.settings.ingest_budget_s
            done = set(self.redis.hkeys(self._key(bid, "results")))
            for file_id in (batch.get("error_file_id"), batch.get("output_file_id")):
                if not file_id:
                    continue
                if not await self._read_file(http, bid, str(file_id), done, lock, token, deadline):
                    return False
            self.redis.set(self._key(bid, "ingested"), str(batch.get("status")), ex=self.settings.results_ttl_s)
            return True
        finally:
            if self.redis.get(lock) == token:
                self.redis.delete(lock)

    async def _read_file(
        self, http: httpx.AsyncClient, bid: str, file_id: str, done: set[str], lock: str, token: str,
        deadline: float,
    ) -> bool:
        url = self.settings.base_url.rstrip("/") + f"/files/{file_id}/content"
        sem = asyncio.Semaphore(self.settings.ingest_concurrency)
        pending: set[asyncio.Task[bool]] = set()
        failed: list[str] = []
        results_key = self._key(bid, "results")
        lease_ms = int(self.settings.ingest_lock_s * 1000)
        timeout = httpx.Timeout(self.settings.timeout_s, connect=10.0)
        try:
            async with http.stream("GET", url, headers=self.auth_headers(), timeout=timeout) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._error(resp, "download batch file")
                n = 0
                async for raw in _lines(resp.aiter_bytes()):
                    n += 1
                    cid = _custom_id_of(raw)
                    if cid is not None and cid in done:
                        continue
                    try:
                        item = json.loads(raw)
                    except ValueError:
                        continue  # a torn line; the job is handled as missing
                    cid = str(item.get("custom_id") or "")
                    if not cid or cid in done:
                        continue
                    done.add(cid)
                    await sem.acquire()
                    task = asyncio.create_task(self._record_line(bid, cid, item, results_key, sem))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    task.add_done_callback(_note_failure(cid, failed))
                    del item, raw
                    if n % 50 == 0:
                        if self.redis.get(lock) != token:
                            return False  # our lease ran out and someone else took over
                        self.redis.pexpire(lock, lease_ms)
                        if time.monotonic() > deadline:
                            return False  # yield; the next poll resumes, skipping recorded lines
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.retryable, f"{NAME} download batch file: {type(exc).__name__}") from None
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if failed:  # not marked ingested: the next poll reads the file again for these lines
            for cid in failed:
                done.discard(cid)
            return False
        return True

    async def _record_line(
        self, bid: str, cid: str, item: dict[str, Any], results_key: str, sem: asyncio.Semaphore
    ) -> bool:
        """Store one line's record; False (logged by the caller's flag) when S3 or Redis failed."""
        try:
            rec = await self.line_record(bid, cid, item)
            self.redis.hset(results_key, cid, json.dumps(rec))
            self.redis.expire(results_key, self.settings.results_ttl_s)
            return True
        except Exception:
            return False
        finally:
            sem.release()

    async def line_record(self, bid: str, cid: str, item: dict[str, Any]) -> dict[str, Any]:
        """One output/error line -> the small record kept in Redis (images go to S3 first)."""
        resp = item.get("response")
        error = item.get("error")
        if isinstance(resp, dict):
            status = int(resp.get("status_code") or 0)
            body = resp.get("body")
            if 200 <= status < 300 and isinstance(body, dict):
                return await self._success_record(bid, cid, body, resp.get("request_id"))
            err = classify_error(status or 500, body, provider=NAME, what="batch line", secrets=self._secrets())
            return _error_record(err, request_id=resp.get("request_id"))
        if isinstance(error, dict):
            code = error.get("code")
            msg = redact(str(error.get("message") or ""), self._secrets())
            if code in UNRUN_CODES:
                return {"unrun": code, "message": msg[:500]}
            if code == "request_timeout":
                err = ProviderError(ErrorKind.retryable, f"{NAME} batch line: request_timeout: {msg}"[:2000],
                                    provider_code="request_timeout", maybe_billed=True)
            else:
                err = classify_code(str(code) if code else None, None, msg, provider=NAME, what="batch line")
            return _error_record(err)
        return _error_record(ProviderError(ErrorKind.unknown, f"{NAME}: line for {cid} has neither response nor error"))

    async def _success_record(
        self, bid: str, cid: str, body: dict[str, Any], request_id: Any
    ) -> dict[str, Any]:
        fmt = str(body.get("output_format") or "png").lower()
        outputs = []
        for n, image in enumerate(body.get("data") or []):
            b64 = image.get("b64_json") if isinstance(image, dict) else None
            if not b64:
                continue
            try:
                data = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                return _error_record(ProviderError(ErrorKind.unknown, f"{NAME}: output #{n} of {cid} is not base64"))
            kind = _sniff(data) or fmt
            key = f"{self.settings.staging_prefix.strip('/')}/{bid}/{cid}/{n}.{EXT.get(kind, kind)}"
            ctype = CONTENT_TYPES.get(kind, "application/octet-stream")
            await asyncio.to_thread(self.storage.put_bytes, key, data, ctype)
            del data
            outputs.append({"key": key, "content_type": ctype})
        if not outputs:
            return _error_record(ProviderError(ErrorKind.unknown, f"{NAME}: line for {cid} succeeded without images",
                                               maybe_billed=True))
        usage = usage_and_cost(body.get("usage"), self.settings.token_prices(multiplier=self.settings.discount))
        rec: dict[str, Any] = {"ok": True, "outputs": outputs, "openai_request_id": request_id}
        if usage is not None:
            rec["usage"] = usage.model_dump(exclude_none=True)
        for k in ("size", "quality", "background", "output_format", "created"):
            if body.get(k) is not None:
                rec[k] = body[k]
        return rec

    # ---- I/O: cancel -------------------------------------------------------------------------------------
    async def cancel(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> None:
        bid, cid = handle.get("batch_id"), handle.get("custom_id")
        if not bid or not cid:
            return None
        key = self._key(bid, "cancelled")
        self.redis.sadd(key, cid)
        self.redis.expire(key, self.settings.results_ttl_s)
        lines = int(self.redis.hget(self._key(bid, "meta"), "lines") or 0)
        if lines and self.redis.scard(key) >= lines:
            try:
                await self._call(http, "POST", f"/batches/{bid}/cancel", what="cancel batch")
            except ProviderError:
                return None
        return None

    # ---- helpers ------------------------------------------------------------------------------------------
    async def _call(self, http: httpx.AsyncClient, method: str, path: str, *, what: str,
                    timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        url = self.settings.base_url.rstrip("/") + path
        try:
            resp = await http.request(method, url, headers=self.auth_headers(),
                                      timeout=timeout or self.settings.timeout_s, **kwargs)
        except httpx.TimeoutException as exc:
            raise ProviderError(ErrorKind.retryable, f"{NAME} {what}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.retryable,
                                f"{NAME} {what}: connection error ({type(exc).__name__})") from None
        if resp.status_code >= 300:
            raise self._error(resp, what)
        return resp

    def _error(self, resp: httpx.Response, what: str) -> ProviderError:
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text[:500]
        return classify_error(resp.status_code, body, resp.headers, provider=NAME, what=what, secrets=self._secrets())


def _error_record(err: ProviderError, request_id: Any = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"ok": False, "kind": err.kind.value, "reason": err.reason[:2000]}
    if err.status_code is not None:
        rec["status_code"] = err.status_code
    if err.provider_code:
        rec["code"] = err.provider_code
    if err.retry_after_s is not None:
        rec["retry_after_s"] = err.retry_after_s
    if err.maybe_billed:
        rec["maybe_billed"] = True
    if request_id:
        rec["openai_request_id"] = request_id
    return rec


def _note_failure(cid: str, failed: list[str]) -> Any:
    def done(task: asyncio.Task[bool]) -> None:
        if task.cancelled() or task.exception() is not None or not task.result():
            failed.append(cid)

    return done


def _custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line without parsing it (it comes first in OpenAI's lines); None if not found."""
    m = _CUSTOM_ID.search(raw, 0, 4096)
    if m is None:
        return None
    try:
        value = json.loads(b'"' + m.group(1) + b'"')
    except ValueError:
        return None
    return str(value)


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


async def _lines(chunks: Any) -> Any:
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


__all__ = ["OpenAIBatchAdapter", "OpenAIBatchSettings", "split_request_id"]
