"""Building job manifests and the batch manifest from what Redis recorded."""

from __future__ import annotations

import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from editq.schemas.job import EditJob
from editq.schemas.manifest import ErrorInfo, JobManifest, OutputRecord, Usage
from editq.worker.state import MICRO, JobStore, JobView
from editq.worker.storage import Storage

SECRET_FIELDS = {"api_key", "openai_api_key", "authorization", "token"}


# An attempt still marked in flight when its job's manifest is final was never answered: `sending`
# (no connection to the provider was open for it) was not sent; `sent` may have been billed.
UNANSWERED = {"sending": "not_sent", "sent": "uncertain"}
FINAL = frozenset({"succeeded", "failed", "cancelled"})


def provider_requests(view: JobView, state: str | None = None) -> list[dict[str, Any]]:
    entries = [json.loads(v) for k, v in view.fields.items() if k.startswith("req.")]
    if state in FINAL:
        for e in entries:
            if e.get("status") in UNANSWERED:
                e["status"] = UNANSWERED[e["status"]]
    return sorted(entries, key=lambda e: (e.get("attempt", 0), e.get("at", 0)))


def reservation(view: JobView) -> int:
    """The job's reservation in flight (micro-USD), as of `view`."""
    return int(view.fields.get("resv", "0") or 0)


def spent_cost(view: JobView, micro: int, source: str | None = "estimate") -> tuple[float, str | None]:
    """The job's cost for its manifest: this attempt's `micro` plus what earlier attempts that may have been
    billed keep committed. Its source is `provider` only when all of it is the provider's figure."""
    earlier = int(view.fields.get("spent", "0") or 0)
    total = earlier + micro
    if earlier and source == "provider":
        source = "estimate"
    return round(total / MICRO, 6), (source if total or source == "provider" else "estimate")


def build(
    view: JobView,
    state: str,
    outputs: list[OutputRecord],
    usage: Usage | None,
    error: ErrorInfo | None,
    cost: tuple[float, str | None] | None = None,
) -> JobManifest:
    """`cost`: (USD, source) as the pipeline settles it (worker/pipeline.py `run_cost`, `spent_cost`)."""
    job = view.job
    submitted = job.model_dump(
        mode="json",
        exclude={"inputs", "mask_input", "job_id", "batch_id", "created_at"},
        exclude_none=True,
    )
    for key in list(submitted):
        if key.lower() in SECRET_FIELDS:
            submitted.pop(key)
    history = view.history
    now = time.time()
    if not history or history[-1].state != state:
        from editq.schemas.manifest import StateChange

        history.append(StateChange(state=state, at=now))
    return JobManifest(
        job_id=job.job_id,
        batch_id=job.batch_id,
        custom_id=job.custom_id,
        group=job.group,
        variant=job.variant,
        parent_job_id=job.parent_job_id,
        state=state,
        job=submitted,
        inputs=job.inputs,
        mask=job.mask_input,
        provider=view.provider or None,
        model=job.model,
        provider_request_id=view.request_id,
        provider_requests=provider_requests(view, state),
        attempts=view.attempts,
        history=history,
        outputs=outputs,
        usage=usage,
        cost_usd=cost[0] if cost else None,
        cost_source=cost[1] if cost else None,
        error=error,
        rerun_of=view.fields.get("rerun_of") or None,
        rerun_of_batch=view.fields.get("rerun_of_batch") or None,
        written_at=now,
    )


def manifest_bytes(manifest: JobManifest) -> bytes:
    """A job manifest as stored in S3: JSON indented by 2, fields in the model's order (pydantic's serialiser,
    ~10 us; `json.dumps(..., indent=2, sort_keys=True)` of the same dict took ~90 us, per job)."""
    return manifest.model_dump_json(indent=2).encode()


def write_job_manifest(storage: Storage, manifest: JobManifest) -> str:
    key = storage.manifest_key(manifest.batch_id, manifest.job_id)
    storage.put_bytes(key, manifest_bytes(manifest), "application/json")
    return key


async def write_job_manifest_async(storage: Storage, http: httpx.AsyncClient, manifest: JobManifest) -> str:
    """write_job_manifest from the event loop: a presigned PUT on the process's async client."""
    key = storage.manifest_key(manifest.batch_id, manifest.job_id)
    await storage.put_async(http, key, manifest_bytes(manifest), "application/json")
    return key


S3_READS = 16  # manifests read back from S3 in parallel (one chunk of jobs at a time)


def job_manifests(store: JobStore, storage: Storage, views: list[JobView]) -> list[dict[str, Any] | None]:
    """The manifest of each finished job: the job hash's own (not yet compacted), else the one staged for its
    batch manifest (worker/lua/move.lua), else its copy in S3 (read in parallel); None where there is none."""
    out: list[dict[str, Any] | None] = [None] * len(views)
    staged: list[int] = []
    pipe = store.r.pipeline(transaction=False)
    for i, view in enumerate(views):
        if view.fields.get("manifest"):
            out[i] = json.loads(view.fields["manifest"])
        elif view.batch_id:
            pipe.hget(store.k.batch_manifests(view.batch_id), view.job_id)
            staged.append(i)
    for i, raw in zip(staged, pipe.execute() if staged else [], strict=True):
        if raw:
            out[i] = json.loads(raw)
    missing = [i for i, m in enumerate(out) if m is None and views[i].batch_id]

    def read(i: int) -> dict[str, Any] | None:
        try:
            return json.loads(storage.get_bytes(storage.manifest_key(views[i].batch_id, views[i].job_id)))
        except Exception:
            return None

    if missing:
        with ThreadPoolExecutor(max_workers=min(S3_READS, len(missing))) as pool:
            for i, m in zip(missing, pool.map(read, missing), strict=True):
                out[i] = m
    return out


def job_from_manifest(view: JobView, manifest: dict[str, Any]) -> EditJob:
    """The job as enqueued, from its manifest (a compacted job keeps no spec in Redis)."""
    return EditJob.model_validate({
        **manifest["job"], "job_id": view.job_id, "batch_id": manifest.get("batch_id") or view.batch_id,
        "inputs": manifest.get("inputs") or [], "mask_input": manifest.get("mask"),
        "created_at": float(view.fields.get("created_at") or time.time()),
    })


def full_job(store: JobStore, storage: Storage, view: JobView) -> EditJob:
    """`view.job`, or for a compacted job the job rebuilt from its manifest. Raises LookupError."""
    if not view.compact:
        return view.job
    manifest = job_manifests(store, storage, [view])[0]
    if manifest is None or "job" not in manifest:
        raise LookupError(f"job {view.job_id}: no manifest in Redis or S3")
    return job_from_manifest(view, manifest)


def write_batch_manifest(store: JobStore, storage: Storage, batch_id: str, chunk: int = 500) -> tuple[str, int]:
    """Stream one JSON line per job (in enqueue order) through a spool file into S3: each from the manifests
    staged by the jobs' terminal moves (deleted once the batch manifest is written), else from S3."""
    r, k = store.r, store.k
    total = r.llen(k.batch_jobs(batch_id))
    lines = 0
    with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
        for start in range(0, total, chunk):
            ids = r.lrange(k.batch_jobs(batch_id), start, start + chunk - 1)
            staged = r.hmget(k.batch_manifests(batch_id), ids) if ids else []
            pipe = r.pipeline(transaction=False)
            for jid in ids:
                pipe.hget(k.job(jid), "manifest")
            for jid, own, raw in zip(ids, pipe.execute(), staged, strict=True):
                raw = own or raw
                if raw is None:  # expired from Redis: read the job's manifest back from S3
                    try:
                        raw = json.dumps(json.loads(storage.get_bytes(storage.manifest_key(batch_id, jid))))
                    except Exception:
                        raw = json.dumps({"job_id": jid, "batch_id": batch_id, "state": "unknown"})
                spool.write(raw.encode() + b"\n")
                lines += 1
        spool.seek(0)
        key = storage.batch_manifest_key(batch_id)
        storage.client.upload_fileobj(spool, storage.bucket, key, ExtraArgs={"ContentType": "application/x-ndjson"})
    errors = r.lrange(k.batch_errors(batch_id), 0, -1)
    if errors:
        storage.put_bytes(
            f"{storage.settings.s3_prefix}/{batch_id}/rejected.jsonl",
            ("\n".join(errors) + "\n").encode(),
            "application/x-ndjson",
        )
    money = r.hgetall(k.batch(batch_id))
    summary = {
        "batch_id": batch_id, "jobs": lines, "manifest_key": key,
        "counts": {f[2:]: int(v) for f, v in money.items() if f.startswith("n_") and int(v)},
        "cost_usd": round(int(money.get("spent", 0) or 0) / MICRO, 6),
        "max_cost_usd": round(int(money["max_cost"]) / MICRO, 6) if money.get("max_cost") else None,
        "written_at": time.time(),
    }
    storage.put_json(storage.batch_summary_key(batch_id), summary)
    r.hset(k.batch(batch_id), mapping={"finalized": repr(time.time()), "manifest_key": key})
    r.delete(k.batch_manifests(batch_id))  # the batch manifest holds them now (and each job's copy is in S3)
    r.srem(k.budget_batches, batch_id)  # finished: its budget is no longer one in force (worker/budgets.py)
    return key, lines
