"""Working on a batch after it was submitted: list its jobs, re-run what did not succeed, cancel it.

* `list_jobs(batch)`: one row per job (custom_id, provider, outcome, error, cost), filterable by outcome
  (`worker/outcomes.py`: succeeded, failed, cancelled, expired, moderated, missing, or an active state).
* `rerun(batch, only=...)`: a new batch holding exactly the items whose latest outcome is in `only`. It
  links to the original both ways (batch hashes `rerun_of` / the original's `reruns` list, each job's
  `rerun_of` / `superseded_by`, the new jobs' manifests, `reruns.json` next to the original's manifest).
  A success is never resubmitted; `missing` (succeeded, but an output is not in S3) is checked in S3.
* `latest_outcomes(batch)`: per item, the outcome of the last job that re-ran it.
* `cancel_batch(batch)`: every job not yet finished is cancelled through the state machine; jobs the
  provider holds are cancelled there by a short task (`editq.cancel_remote`), ids only.
* `resolve(ident, batch)`: a job id, or a custom_id within a batch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from editq import providers as registry
from editq.producer.api import checked_request
from editq.schemas.job import EditJob, JobRequest, content_key
from editq.schemas.manifest import JobManifest
from editq.schemas.settings import get_settings
from editq.worker.manifest import build, job_from_manifest, job_manifests, reservation, spent_cost, write_job_manifest
from editq.worker.outcomes import RERUNNABLE, outcome
from editq.worker.state import MICRO, REPLACEABLE, TRANSITIONS, JobStore, JobView, State
from editq.worker.storage import Storage, get_storage

CHUNK = 500
# what `cancel_batch` cancels: every state the state machine lets a job be cancelled from, except a job
# the provider has finished (ready, collecting: already paid; its outputs are stored)
CANCELLABLE = frozenset(s for s, to in TRANSITIONS.items() if State.cancelled in to) - {State.ready, State.collecting}
CANCEL_TASK_CHUNK = 50


class UnknownId(KeyError):
    """No batch or job with that id (or custom_id within the batch)."""

    def __str__(self) -> str:
        return str(self.args[0])


def require_batch(store: JobStore, batch_id: str) -> None:
    if not store.r.exists(store.k.batch(batch_id)):
        raise UnknownId(f"no batch with id {batch_id!r}")


def resolve(ident: str, batch_id: str | None = None, store: JobStore | None = None) -> str:
    """The job id for `ident`: a job id, or (with `batch_id`) a custom_id within that batch."""
    store = store or JobStore()
    if batch_id is None:
        if not store.r.exists(store.k.job(ident)):
            raise UnknownId(f"no job with id {ident!r}")
        return ident
    require_batch(store, batch_id)
    jid = store.r.hget(store.k.batch_cids(batch_id), ident)
    if jid:
        return str(jid)
    if store.r.hget(store.k.job(ident), "batch_id") == batch_id:
        return ident
    raise UnknownId(f"no job with custom_id or id {ident!r} in batch {batch_id}")


def batch_job_ids(store: JobStore, batch_id: str) -> Iterator[list[str]]:
    """The batch's job ids in enqueue order, CHUNK at a time."""
    total = store.r.llen(store.k.batch_jobs(batch_id))
    for start in range(0, total, CHUNK):
        yield list(store.r.lrange(store.k.batch_jobs(batch_id), start, start + CHUNK - 1))


def _latest(store: JobStore, ids: list[str]) -> list[str]:
    """For each job, the last job of its re-run chain (`superseded_by`), itself if none."""
    current = list(ids)
    for _ in range(100):  # a chain is as long as the number of re-runs
        pipe = store.r.pipeline(transaction=False)
        for jid in current:
            pipe.hget(store.k.job(jid), "superseded_by")
        nxt = pipe.execute()
        if not any(nxt):
            return current
        current = [n or c for c, n in zip(current, nxt, strict=True)]
    return current


def job_cost(view: JobView) -> float | None:
    """What the job cost, from its manifest: `cost_usd` (a number, or an object with `usd`/`amount`), else
    the provider-reported `usage.cost_usd`. None where nothing is recorded."""
    manifest = view.json_field("manifest") or {}
    for value in (manifest.get("cost_usd"), view.fields.get("cost_usd"), (manifest.get("usage") or {}).get("cost_usd")):
        if isinstance(value, dict):
            value = value.get("usd", value.get("amount"))
        if isinstance(value, int | float | str) and value != "":
            try:
                return float(value)
            except ValueError:
                continue
    return None


def missing_outputs(view: JobView, storage: Storage) -> list[str]:
    """The output keys a succeeded job recorded that S3 does not have (all of them if it recorded none)."""
    outputs = view.outputs()
    if not outputs:
        return ["(no output recorded)"]
    return [o["key"] for o in outputs if not storage.exists(o["key"])]


S3_CHECKS = 32  # HEAD requests in flight while looking for missing outputs (one chunk of jobs at a time)


def outcomes_of(views: list[JobView], storage: Storage | None, check_s3: bool) -> list[str]:
    """Each job's outcome; with `check_s3`, a succeeded job whose output is not in S3 is `missing` (the
    outputs of a chunk are checked in parallel: a million-job batch is a million HEADs)."""
    outs = [outcome(v.state.value, v.json_field("error")) for v in views]
    if not check_s3 or storage is None:
        return outs
    done = [i for i, o in enumerate(outs) if o == "succeeded"]
    if done:
        with ThreadPoolExecutor(max_workers=S3_CHECKS) as pool:
            gone = list(pool.map(lambda i: bool(missing_outputs(views[i], storage)), done))
        for i, lost in zip(done, gone, strict=True):
            if lost:
                outs[i] = "missing"
    return outs


def row(view: JobView, out: str) -> dict[str, Any]:
    err = view.json_field("error") if view.state in (State.failed, State.retry_wait) else None
    return {
        "job_id": view.job_id, "custom_id": view.custom_id, "provider": view.provider, "state": out,
        "error": (err or {}).get("reason"), "moderation_stage": (err or {}).get("moderation_stage"),
        "cost_usd": job_cost(view), "attempts": view.attempts,
        "rerun_of": view.fields.get("rerun_of") or None, "superseded_by": view.fields.get("superseded_by") or None,
    }


def list_jobs(batch_id: str, states: Iterable[str] | None = None, *, latest: bool = False,
              store: JobStore | None = None, storage: Storage | None = None) -> Iterator[dict[str, Any]]:
    """One row per job of the batch, in enqueue order, whose outcome is in `states` (all if None).
    `latest`: each item's last re-run instead of the job first enqueued. When `states` names `missing` or
    `succeeded`, each success's outputs are checked in S3 (a lost one is `missing`); otherwise S3 is not read."""
    store = store or JobStore()
    require_batch(store, batch_id)
    wanted = set(states) if states else None
    check_s3 = wanted is not None and bool(wanted & {"missing", "succeeded"})
    storage = storage or (get_storage() if check_s3 else None)
    for ids in batch_job_ids(store, batch_id):
        views = [v for v in store.get_many(_latest(store, ids) if latest else ids) if v is not None]
        for view, out in zip(views, outcomes_of(views, storage, check_s3), strict=True):
            if wanted is None or out in wanted:
                yield row(view, out)


def latest_outcomes(batch_id: str, store: JobStore | None = None) -> dict[str, int]:
    """Per item of the batch, the outcome of the last job that ran it (its re-runs followed), counted."""
    store = store or JobStore()
    counts: dict[str, int] = {}
    for ids in batch_job_ids(store, batch_id):
        for view in store.get_many(_latest(store, ids)):
            out = "expired from redis" if view is None else outcome(view.state.value, view.json_field("error"))
            counts[out] = counts.get(out, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------- rerun
@dataclass(frozen=True)
class RerunReport:
    rerun_of: str
    batch_id: str | None = None  # None: nothing to re-run, no batch made
    enqueued: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (old job id, existing job id)
    skipped: list[tuple[str, str | None, str]] = field(default_factory=list)  # (job id, custom_id, why)
    still_running: int = 0


def parse_only(text: str | None) -> frozenset[str]:
    if not text:
        return RERUNNABLE
    wanted = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = wanted - RERUNNABLE
    if unknown:
        raise ValueError(f"--only: {', '.join(sorted(unknown))} not one of {', '.join(sorted(RERUNNABLE))}")
    return wanted


def _rerun_job(view: JobView, old: EditJob, new_batch: str, overrides: dict[str, Any], out: str) -> EditJob:
    """The job that re-runs `view` (whose job as enqueued is `old`): same inputs (stored content-addressed), new
    ids; with `overrides`, the changed parameters and a new idempotency key (a changed parameter makes a new job).
    Raises ValueError."""
    fields = set(JobRequest.model_fields) - {"idempotency_key"}
    data = {**old.model_dump(include=fields), **overrides}
    req = checked_request(data)
    if out == "moderated" and view.provider in req.route and req.prompt == old.prompt:
        raise ValueError(f"moderated by {view.provider}; not sent there again with the same prompt "
                         "(re-run with --provider or a changed prompt)")
    changed = req.model_dump(include=fields) != old.model_dump(include=fields)
    key = content_key(req, [i.sha256 for i in old.inputs], old.mask_input.sha256 if old.mask_input else None) \
        if changed else old.idempotency_key
    from editq.producer.api import new_id

    job = EditJob(**req.model_dump(exclude={"idempotency_key"}), job_id=new_id("job"), batch_id=new_batch,
                  inputs=old.inputs, mask_input=old.mask_input, idempotency_key=key)
    problems = [msg for name in req.route for msg in registry.protocol_of(name).validate(job)]
    if problems:
        raise ValueError("; ".join(problems))
    return job


def rerun(batch_id: str, only: Iterable[str] = RERUNNABLE, overrides: dict[str, Any] | None = None, *,
          new_batch_id: str | None = None, max_cost: float | None = None, on_budget: str | None = None,
          store: JobStore | None = None, storage: Storage | None = None) -> RerunReport:
    """A new batch with exactly the items of `batch_id` whose latest outcome is in `only`.

    Money: the new batch's budget is `max_cost` if given; else, if the original batch had one, what is left
    of it (its cap minus what it spent), with its `on_budget` choice, so re-running a capped catalogue
    cannot spend more than the catalogue was allowed to."""
    from editq.producer.api import _kick, new_id
    from editq.producer.estimate import worst_case_micro

    store = store or JobStore()
    storage = storage or get_storage()
    require_batch(store, batch_id)
    orig = store.r.hgetall(store.k.batch(batch_id))
    if max_cost is None and orig.get("max_cost") not in (None, ""):
        max_cost = max(0, int(orig["max_cost"]) - int(orig.get("spent") or 0)) / MICRO
    on_budget = on_budget or orig.get("on_budget") or "wait"
    if on_budget not in ("wait", "fail"):
        raise ValueError("on_budget must be 'wait' or 'fail'")
    if max_cost is not None and max_cost < 0:
        raise ValueError("max_cost must be at least 0")
    only = frozenset(only)
    overrides = dict(overrides or {})
    made: str | None = None  # the new batch, once it has something to run
    enqueued = still_running = 0
    by_outcome: dict[str, int] = {}
    duplicates: list[tuple[str, str]] = []
    skipped: list[tuple[str, str | None, str]] = []
    new_batch = new_batch_id or new_id("batch")
    kicked: set[str] = set()
    for ids in batch_job_ids(store, batch_id):
        todo: list[tuple[JobView, EditJob, str]] = []
        # a job expired from Redis (older than EDITQ_JOB_TTL_S) is left out: its line can be submitted again
        views = [v for v in store.get_many(_latest(store, ids)) if v is not None]
        chosen: list[tuple[JobView, str]] = []
        for view, out in zip(views, outcomes_of(views, storage, "missing" in only), strict=True):
            if view.state not in (State.succeeded, State.failed, State.cancelled):
                still_running += 1
                continue
            if out in only:
                chosen.append((view, out))
        # a finished job is compacted in Redis: its job as enqueued comes back from its manifest
        compacted = [v for v, _ in chosen if v.compact]
        manifests = dict(zip((v.job_id for v in compacted), job_manifests(store, storage, compacted), strict=True))
        for view, out in chosen:
            try:
                if view.compact:
                    m = manifests.get(view.job_id)
                    if not m or "job" not in m:
                        raise ValueError("its manifest is neither in Redis nor in S3")
                    old = job_from_manifest(view, m)
                else:
                    old = view.job
                todo.append((view, _rerun_job(view, old, new_batch, overrides, out), out))
            except ValueError as exc:
                skipped.append((view.job_id, view.custom_id, str(exc)))
        if not todo:
            continue
        if made is None:  # the batch exists only once it has something to run
            made = new_batch
            head: dict[str, Any] = {
                "created_at": repr(time.time()), "source": f"rerun of {batch_id}", "rerun_of": batch_id,
                "rerun_only": ",".join(sorted(only)), "on_budget": on_budget,
            }
            if max_cost is not None:
                head["max_cost"] = round(max_cost * MICRO)
                store.r.sadd(store.k.budget_batches, new_batch)
            store.r.hset(store.k.batch(new_batch), mapping=head)
        pipe = store.r.pipeline(transaction=False)
        for view, job, out in todo:
            replaceable = (*REPLACEABLE, State.succeeded) if out == "missing" else REPLACEABLE
            store.create(job, pipe=pipe, replaceable=replaceable, worst_case=worst_case_micro(job),
                         extra={"rerun_of": view.job_id, "rerun_of_batch": view.batch_id})
        links = store.r.pipeline(transaction=False)
        for (view, job, out), res in zip(todo, pipe.execute(), strict=True):
            if int(res[0]):
                enqueued += 1
                by_outcome[out] = by_outcome.get(out, 0) + 1
                links.hset(store.k.job(view.job_id), "superseded_by", job.job_id)
                kicked.add(job.route[0])
            else:
                duplicates.append((view.job_id, res[1]))
        links.execute()
    report = RerunReport(rerun_of=batch_id, batch_id=made, enqueued=enqueued, by_outcome=by_outcome,
                         duplicates=duplicates, skipped=skipped, still_running=still_running)
    if made is None:
        return report
    store.r.rpush(store.k.batch_reruns(batch_id), new_batch)
    _write_rerun_links(store, storage, batch_id)
    from editq.producer.api import close_batch

    close_batch(store, new_batch)
    _kick(kicked)
    return report


def _write_rerun_links(store: JobStore, storage: Storage, batch_id: str) -> None:
    """`{prefix}/{batch}/reruns.json` next to the original's manifest: the batches that re-ran its items."""
    reruns = []
    for bid in store.r.lrange(store.k.batch_reruns(batch_id), 0, -1):
        meta = store.r.hgetall(store.k.batch(bid))
        reruns.append({"batch_id": bid, "created_at": float(meta.get("created_at", 0) or 0),
                       "only": (meta.get("rerun_only") or "").split(","), "jobs": int(meta.get("total", 0) or 0)})
    storage.put_json(f"{storage.settings.s3_prefix}/{batch_id}/reruns.json", {"batch_id": batch_id, "reruns": reruns})


# ---------------------------------------------------------------------------------------------- cancel
@dataclass(frozen=True)
class CancelReport:
    batch_id: str
    cancelled: int = 0
    at_provider: int = 0  # of which the provider held a request (cancelled there by the cancel_remote task)
    left_finishing: int = 0  # ready/collecting: the provider is done (and paid); their outputs are stored
    finished: int = 0


def cancel_batch(batch_id: str, store: JobStore | None = None) -> CancelReport:
    """Cancel every job of the batch that the provider has not finished, through the state machine (a job
    that moves meanwhile is read again); the provider side is left to a short task, ids only."""
    from editq.worker.triggers import Kicker, queue_name

    store = store or JobStore()
    require_batch(store, batch_id)
    counts = dict.fromkeys(("cancelled", "at_provider", "left_finishing", "finished"), 0)
    remote: list[str] = []
    batch_finished = False
    storage = get_storage()
    for ids in batch_job_ids(store, batch_id):
        written: list[JobManifest] = []
        for view in store.get_many(ids):
            for _ in range(5):  # a job may move between the read and the move: read it again
                if view is None:
                    break
                if view.state not in CANCELLABLE:
                    if view.state in (State.ready, State.collecting):
                        counts["left_finishing"] += 1
                    else:
                        counts["finished"] += 1
                    break
                # a reservation in flight stays committed (the provider may have run it): the manifest says so
                manifest = build(view, State.cancelled.value, [], None, None, cost=spent_cost(view, reservation(view)))
                moved = store.move(view.job_id, [view.state], State.cancelled, note="batch cancelled by user",
                                   fields={"manifest": manifest.model_dump_json()})
                if moved.ok:
                    counts["cancelled"] += 1
                    written.append(manifest)
                    if view.request_id:
                        remote.append(view.job_id)
                    counts["at_provider"] += 1 if view.request_id else 0
                    batch_finished = batch_finished or moved.batch_finished
                    break
                view = store.get(view.job_id)
        # each job's manifest to S3 here (the job is compacted by its move; the batch manifest may be written
        # before a task could read the staged one back)
        with ThreadPoolExecutor(max_workers=S3_CHECKS) as pool:
            list(pool.map(lambda m: write_job_manifest(storage, m), written))
    if remote:
        kicker = Kicker()
        for i in range(0, len(remote), CANCEL_TASK_CHUNK):
            kicker.app.send_task("editq.cancel_remote", args=[remote[i:i + CANCEL_TASK_CHUNK]], queue=queue_name())
    if batch_finished:
        store.lease_finalizing(batch_id, time.time() + get_settings().finalize_lease_s)
        Kicker().finalize(batch_id)
    return CancelReport(batch_id=batch_id, **counts)


def dumps_row(r: dict[str, Any]) -> str:
    return json.dumps(r, sort_keys=True)
