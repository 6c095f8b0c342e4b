"""Python API: `submit`, `submit_batch`, `submit_file`, `status`, `wait`, `cancel`.

A batch is streamed: lines are parsed, validated (canonical rules, then each provider's rules at
enqueue time), their inputs fetched once and stored, and the jobs written to Redis 500 at a time.
A bad line is reported with its number and reason; the rest of the batch goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from editq import providers as registry
from editq.producer.inputs import InputError, InputPreparer
from editq.schemas.job import (
    MAX_DEPTH,
    EditJob,
    InputRecord,
    JobRequest,
    content_key,
    describe_errors,
    nesting_problem,
    request_from_json,
)
from editq.schemas.settings import get_settings
from editq.schemas.variants import label_error, parse_line
from editq.worker.redis_client import replicated
from editq.worker.state import (
    MICRO,
    TERMINAL,
    JobStore,
    SentCreate,
    State,
    batch_scope,
    create_entry,
    tenant_scope,
)
from editq.worker.storage import get_storage

log = structlog.get_logger("editq.producer")

CHUNK = 500
FIRST_CHUNK = 50  # the first jobs reach the workers after 50 lines, not 500: dispatch starts while the rest is read


def new_id(kind: str) -> str:
    return f"{kind}_{time.time_ns() // 1_000_000:x}{os.urandom(5).hex()}"  # (secrets.token_hex(5), one call less)


def job_of(req: JobRequest, batch_id: str, inputs: list[InputRecord], mask: InputRecord | None, key: str,
           stored_ref: Callable[[str, InputRecord], str]) -> EditJob:
    """The EditJob of a validated request, built without validating it all again: every field comes from `req`
    (validated), from the inputs as fetched and checked, or is an id made here. `stored_ref` gives the reference
    the job keeps for an input (a data: URI becomes its stored object's s3:// URL).

    What `EditJob.model_construct` does (set the instance's `__dict__` and fields set, no extra, no private
    attributes), without its per-field default and alias lookups, which cost more than validating the job
    (~70 us against ~20 us a line; this: ~5 us). tests/test_enqueue_fast.py holds that the job equals the one
    `EditJob(...)` validates from the same parts, and that EditJob has nothing this would skip (post-init hook,
    private attributes, aliases)."""
    values = dict(req.__dict__)
    values["images"] = [stored_ref(ref, rec) for ref, rec in zip(req.images, inputs, strict=True)]
    if req.mask and mask is not None:
        values["mask"] = stored_ref(req.mask, mask)
    values["metadata"] = dict(req.metadata)  # (the job's own, as model_dump's copy was)
    values.update(job_id=new_id("job"), batch_id=batch_id, inputs=inputs, mask_input=mask, idempotency_key=key,
                  created_at=time.time())
    job = EditJob.__new__(EditJob)
    object.__setattr__(job, "__dict__", {name: values[name] for name in _JOB_FIELDS})
    object.__setattr__(job, "__pydantic_fields_set__", set(_JOB_FIELDS_SET))
    object.__setattr__(job, "__pydantic_extra__", None)
    object.__setattr__(job, "__pydantic_private__", None)
    return job


_JOB_FIELDS = tuple(EditJob.model_fields)
_JOB_FIELDS_SET = frozenset(_JOB_FIELDS) - {"created_at"}  # (as `EditJob(...)` of the same parts set them)


@dataclass(frozen=True)
class LineError:
    line: int
    error: str
    custom_id: str | None = None


@dataclass(frozen=True)
class BatchReport:
    """What `submit_batch` did (frozen: a result, like producer/results.py's; `Tally` is what counts it)."""

    batch_id: str
    enqueued: int = 0
    job_ids: list[str] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)
    invalid: list[LineError] = field(default_factory=list)
    refused: bool = False
    keep_ids: bool = True

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.refused


@dataclass
class Tally:
    """A batch's enqueue as it goes (`Enqueuer.write` / `reject` count into it); `report()` is its result."""

    batch_id: str
    keep_ids: bool = True
    enqueued: int = 0
    job_ids: list[str] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)
    invalid: list[LineError] = field(default_factory=list)

    def report(self, *, refused: bool = False) -> BatchReport:
        """The report as of now; its lists are copies, so it does not change as the tally goes on."""
        return BatchReport(batch_id=self.batch_id, enqueued=self.enqueued, job_ids=list(self.job_ids),
                           duplicates=list(self.duplicates), invalid=list(self.invalid), refused=refused,
                           keep_ids=self.keep_ids)


def checked_request(data: dict[str, Any]) -> JobRequest:
    """A job request by the canonical rules, every provider of its route registered. Raises ValueError naming
    the field."""
    try:
        req = JobRequest.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None
    return checked_route(req)


def checked_route(req: JobRequest) -> JobRequest:
    for name in req.route:
        try:
            registry.spec_of(name)
        except KeyError as exc:
            raise ValueError(f"provider: {exc.args[0]}") from None
    return req


class Enqueuer:
    """Turns request lines into stored jobs. One per batch; keeps an input cache across lines.

    `dry=True` (editq estimate, submit --dry-run): `prepare` validates exactly the same, reading inputs but
    writing nothing to S3, and no Redis connection is made. `budgeted`: the batch has a cost cap, so a line
    routed to a provider without a price model is refused (its cost could not be held to the cap)."""

    def __init__(self, batch_id: str, base_dir: Path, store: JobStore | None = None, *, dry: bool = False,
                 budgeted: bool = False) -> None:
        self.batch_id = batch_id
        self._store = store
        self.storage = get_storage()
        self.inputs = InputPreparer(self.storage, base_dir, store=not dry)
        self.budgeted = budgeted
        self._inflight: tuple[list[tuple[int, EditJob]], SentCreate] | None = None
        self.chunks = 0  # chunks sent to Redis
        self._routes: set[str] = set()  # routes (`provider` as validated) whose providers are all registered

    @property
    def store(self) -> JobStore:
        if self._store is None:
            self._store = JobStore()
        return self._store

    def prepare(self, raw: Line, defaults: dict[str, Any] | None) -> EditJob:
        """Parse and validate one line that is one job (no variants); raises ValueError with a readable message."""
        jobs = self.prepare_line(raw, defaults)
        if len(jobs) != 1:
            raise ValueError(f"this line expands to {len(jobs)} jobs (variants); use prepare_line")
        return jobs[0]

    def prepare_line(self, raw: Line, defaults: dict[str, Any] | None,
                     seeds: int | None = None) -> list[EditJob]:
        """One line -> its jobs (one, or one per variant: schemas/variants.py). A line whose variants are not
        all valid is refused whole (a group with a missing variant is no comparison); the error names the variant.
        Raises ValueError with a readable message naming the field: whatever the line holds, only ValueError
        (or an outage of Redis or S3) leaves."""
        try:
            return self._prepare_line(raw, defaults, seeds)
        except ValueError:
            raise
        except Exception as exc:
            if _outage(exc):
                raise
            log.warning("unexpected error preparing a line", error=type(exc).__name__)
            raise ValueError(f"could not be read ({type(exc).__name__})") from None

    def _prepare_line(self, raw: Line, defaults: dict[str, Any] | None, seeds: int | None) -> list[EditJob]:
        if not defaults and not seeds and not isinstance(raw, dict):
            # the usual line (one job, no defaults to merge): parsed and validated in one step from its bytes;
            # a line this refuses takes the ordinary path below, which says exactly what is wrong with it
            req = request_from_json(raw)
            if req is not None:
                return [self.prepared(self._routed(req))]
        requests = parse_line(read_line(raw), defaults, seeds)
        jobs = []
        for data in requests:
            try:
                jobs.append(self.prepare_request(data))
            except ValueError as exc:
                raise ValueError(label_error(data, str(exc))) from None
        return jobs

    def _routed(self, req: JobRequest) -> JobRequest:
        """`checked_route`, asked once per distinct route of the batch (the registry does not change under it)."""
        if req.provider not in self._routes:
            checked_route(req)
            if len(self._routes) < 1024:
                self._routes.add(req.provider)
        return req

    def prepare_request(self, data: dict[str, Any]) -> EditJob:
        """Validate one job request (canonical rules, inputs fetched and stored, each provider's rules)."""
        return self.prepared(checked_request(data))

    def prepared(self, req: JobRequest) -> EditJob:
        """The job of a valid request: inputs fetched and stored, ids assigned, each provider's rules checked."""
        try:
            inputs = [self.inputs.prepare(ref, f"images[{i}]") for i, ref in enumerate(req.images)]
            mask = self.inputs.prepare(req.mask, "mask", mask=True) if req.mask else None
        except InputError as exc:
            raise ValueError(str(exc)) from None
        if mask is not None and mask.format != "png":
            raise ValueError("mask: must be a PNG with an alpha channel (transparent = area to edit)")
        if mask is not None and (mask.width, mask.height) != (inputs[0].width, inputs[0].height):
            raise ValueError(
                f"mask: is {mask.width}x{mask.height} but images[0] is {inputs[0].width}x{inputs[0].height}; "
                "they must be the same size"
            )
        key = req.idempotency_key or content_key(req, [i.sha256 for i in inputs], mask.sha256 if mask else None)
        # a data: URI is kept once, as its stored input: the job (in Redis, in every manifest) names that object
        job = job_of(req, self.batch_id, inputs, mask, key, self._stored_ref)
        problems = [msg for name in req.route for msg in registry.protocol_of(name).validate(job)]
        if problems:
            raise ValueError("; ".join(problems))
        if self.budgeted:
            unpriced = [name for name in req.route if registry.price_model_of(name) is None]
            if unpriced:
                raise ValueError(f"provider: {', '.join(unpriced)} has no price model, so the batch's --max-cost "
                                 "cannot hold it")
        return job

    def _stored_ref(self, ref: str, rec: InputRecord) -> str:
        return f"s3://{self.storage.bucket}/{rec.s3_key}" if ref.startswith("data:") else ref

    def write(self, jobs: list[tuple[int, EditJob]], report: Tally) -> None:
        """Send the chunk's jobs to Redis in one script call (create.lua takes the whole chunk) and return while
        Redis runs it: its reply is read, and `report` updated, by the next `write` or by `flush`, so the next
        chunk is prepared meanwhile. One chunk in flight at most: it ends before the next is sent (the next may
        hold the same idempotency keys)."""
        self.flush(report)
        if not jobs:
            return
        from editq.producer.estimate import worst_case_micro

        entries = [create_entry(job, worst_case=worst_case_micro(job)) for _, job in jobs]
        self._inflight = (jobs, self.store.send_create_many(entries))
        self.chunks += 1

    def flush(self, report: Tally) -> None:
        """Read the reply of the chunk in flight, if any, into `report`."""
        if self._inflight is None:
            return
        jobs, sent = self._inflight
        self._inflight = None
        providers: set[str] = set()
        for (lineno, job), (created, jid) in zip(jobs, sent.result(), strict=True):
            if created:
                report.enqueued += 1
                if report.keep_ids:
                    report.job_ids.append(jid)
                providers.add(job.route[0])
            else:
                report.duplicates.append((lineno, jid))
        replicated(self.store.r, self.store.k, "enqueue")  # with replicas: the chunk survives a failover
        _kick(providers)

    def abandon(self) -> None:
        """After a failure: wait for the chunk in flight (Redis may be running it) without reading it into a
        report, so what the batch holds is settled before anyone looks."""
        if self._inflight is not None:
            sent, self._inflight = self._inflight[1], None
            with contextlib.suppress(Exception):
                sent.result()

    def close(self) -> None:
        close_batch(self.store, self.batch_id)

    def reject(self, err: LineError, report: Tally) -> None:
        report.invalid.append(err)
        self.store.r.rpush(
            self.store.k.batch_errors(self.batch_id),
            json.dumps({"line": err.line, "error": err.error, "custom_id": err.custom_id}),
        )


Line = str | bytes | dict[str, Any]


def read_line(raw: Line) -> dict[str, Any]:
    """One JSONL line to a dict. Refuses, with a message, bytes that are not UTF-8, text that is not JSON
    (however deeply it nests), anything but an object, and a field nested deeper than MAX_DEPTH."""
    if isinstance(raw, dict):
        data = dict(raw)
    else:
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"not valid UTF-8 (byte {exc.start + 1}); the file must be UTF-8") from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise ValueError(f"not valid JSON (nested too deep; at most {MAX_DEPTH} levels per field)") from None
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object")
    for name, value in data.items():
        problem = nesting_problem(value)
        if problem:
            raise ValueError(f"{_field_name(name)}: {problem}")
    return data


def _field_name(name: object) -> str:
    text = str(name)
    return text if len(text) <= 64 and text.isprintable() else repr(text[:64])


def _outage(exc: BaseException) -> bool:
    """Redis or S3 failing is not the line's fault: it stops the batch (the lines are not lost: rerun it,
    enqueue is idempotent) instead of refusing every line after it."""
    import redis
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(exc, redis.RedisError | BotoCoreError | ClientError)


def close_batch(store: JobStore, batch_id: str) -> None:
    """The batch is fully enqueued. If its jobs are all done already, the state machine indexed it for
    its manifest: lease that entry (the tick leaves it meanwhile) and send the finalize task now."""
    if store.close_batch(batch_id):
        from editq.worker.triggers import Kicker

        store.lease_finalizing(batch_id, time.time() + get_settings().finalize_lease_s)
        Kicker().finalize(batch_id)


def _kick(providers: set[str]) -> None:
    if not providers:
        return
    from editq.worker.triggers import Kicker

    kicker = Kicker()
    for name in providers:
        kicker.dispatch(name, registry.spec_of(name).synchronous)


def _numbered(lines: Iterable[Line]) -> Iterator[tuple[int, Line]]:
    for n, line in enumerate(lines, start=1):
        if isinstance(line, str | bytes) and not line.strip():
            continue
        yield n, line


def _custom_id(raw: Line) -> str | None:
    try:
        data = read_line(raw)
    except ValueError:
        return None
    cid = data.get("custom_id")
    return str(cid)[:256] if isinstance(cid, str | int | float) else None


class UnknownProvider(ValueError):
    """The default provider of a whole batch is not one we know: said once, nothing is enqueued."""


def check_defaults(defaults: dict[str, Any] | None) -> None:
    provider = (defaults or {}).get("provider")
    if not provider:
        return
    for name in (p.strip() for p in str(provider).split(",") if p.strip()):
        try:
            registry.spec_of(name)
        except KeyError:
            known = ", ".join(sorted(registry.names()))
            raise UnknownProvider(f"unknown provider {name!r}; known providers: {known}") from None




def enqueue_lines(enq: Enqueuer, numbered: Iterable[tuple[int, Line]], tally: Tally, *,
                  defaults: dict[str, Any] | None = None, seeds: int | None = None,
                  on_progress: Callable[[BatchReport], None] | None = None) -> None:
    """Prepare and write numbered lines into the enqueuer's batch, a chunk at a time; a bad line is rejected
    with its number. On an exception the chunk in flight is left to `enq.abandon()`."""
    chunk: list[tuple[int, EditJob]] = []
    for n, raw in numbered:
        try:
            chunk.extend((n, job) for job in enq.prepare_line(raw, defaults, seeds))
        except ValueError as exc:
            enq.reject(LineError(n, str(exc), _custom_id(raw)), tally)
        if len(chunk) >= (CHUNK if enq.chunks else FIRST_CHUNK):
            enq.write(chunk, tally)
            chunk = []
            if on_progress:
                on_progress(tally.report())
    enq.write(chunk, tally)
    enq.flush(tally)


def submit_batch(
    lines: Iterable[Line] | Callable[[], Iterable[Line]],
    *,
    batch_id: str | None = None,
    base_dir: Path | str = ".",
    strict: bool = False,
    defaults: dict[str, Any] | None = None,
    source: str | None = None,
    on_progress: Callable[[BatchReport], None] | None = None,
    keep_ids: bool = True,
    seeds: int | None = None,
    max_cost: float | None = None,
    on_budget: str = "wait",
    fill: Callable[[Enqueuer, Tally], None] | None = None,
) -> BatchReport:
    """Enqueue a batch. With `strict`, every line is checked first and any bad line refuses the whole batch
    (pass a callable returning a fresh iterator so the lines can be read twice without holding them).
    `keep_ids=False` leaves `report.job_ids` empty, so memory stays flat however long the batch is
    (the ids are in Redis under the batch, and in its manifest). `seeds`: lines without `variants` run that many
    times as one group (`editq submit --variants N`).

    `max_cost` (USD): the batch's budget; each job reserves its worst case when it is claimed, and a job that
    does not fit waits in `budget_wait` (`on_budget="wait"`, until `set_batch_budget` raises it or money frees
    up) or fails with `budget_exceeded` (`on_budget="fail"`).

    `fill(enq, tally)`: writes the jobs instead of the loop over `lines` (`lines` is then read only by the
    `strict` check): producer/split.py, several processes on one file."""
    if on_budget not in ("wait", "fail"):
        raise ValueError("on_budget must be 'wait' or 'fail'")
    if max_cost is not None and max_cost < 0:
        raise ValueError("max_cost must be at least 0")
    check_defaults(defaults)
    batch_id = batch_id or new_id("batch")
    enq = Enqueuer(batch_id, Path(base_dir), budgeted=max_cost is not None)
    tally = Tally(batch_id=batch_id, keep_ids=keep_ids)
    source_fn = lines if callable(lines) else (lambda: lines)
    if strict:
        for n, raw in _numbered(source_fn()):
            try:
                enq.prepare_line(raw, defaults, seeds)
            except ValueError as exc:
                tally.invalid.append(LineError(n, str(exc), _custom_id(raw)))
        if tally.invalid:
            return tally.report(refused=True)
    existed = bool(enq.store.r.exists(enq.store.k.batch(batch_id)))
    head: dict[str, Any] = {"created_at": repr(time.time()), "source": source or "", "on_budget": on_budget}
    if max_cost is not None:
        head["max_cost"] = round(max_cost * MICRO)
        enq.store.r.sadd(enq.store.k.budget_batches, batch_id)
    enq.store.r.hset(enq.store.k.batch(batch_id), mapping=head)
    try:
        if fill is not None:
            fill(enq, tally)
        else:
            enqueue_lines(enq, _numbered(source_fn()), tally, defaults=defaults, seeds=seeds,
                          on_progress=on_progress)
    except Exception:
        # S3 or Redis failed under us: a batch that holds no job is removed, not left empty behind;
        # one that does is closed, so what was enqueued runs and gets its manifest
        enq.abandon()
        if not existed and not enq.store.r.llen(enq.store.k.batch_jobs(batch_id)):
            enq.store.r.delete(enq.store.k.batch(batch_id), enq.store.k.batch_errors(batch_id))
        else:
            enq.close()
        raise
    enq.close()
    final = tally.report()
    if on_progress:
        on_progress(final)
    return final


def submit_file(path: Path | str, *, procs: int | None = 1, **kwargs: Any) -> BatchReport:
    """Stream a JSONL file (one job per line, never the whole file in memory). `procs`: producer processes
    reading it, each a byte range of it (producer/split.py; 0: one per CPU for a large file; None:
    `EDITQ_SUBMIT_PROCS`, what `editq submit` uses). More than one are started with multiprocessing's spawn:
    a script must then call this under `if __name__ == "__main__":`."""
    path = Path(path)

    def lines() -> Iterator[bytes]:
        with path.open("rb") as fh:  # decoded line by line: a line that is not UTF-8 is that line's error
            yield from fh

    kwargs.setdefault("base_dir", path.parent)
    kwargs.setdefault("source", str(path))
    from editq.producer.split import split_fill

    fill = split_fill(path, procs, kwargs)
    return submit_batch(lines, fill=fill, **kwargs)


def submit(job: JobRequest | dict[str, Any], *, base_dir: Path | str = ".", batch_id: str | None = None) -> str:
    """Enqueue one job (a batch of one). Returns its job id (the existing one if it is a duplicate)."""
    raw = job.model_dump(mode="json", exclude_none=True) if isinstance(job, JobRequest) else job
    report = submit_batch([raw], base_dir=base_dir, batch_id=batch_id)
    if report.invalid:
        raise ValueError(report.invalid[0].error)
    return report.job_ids[0] if report.job_ids else report.duplicates[0][1]


def status(ident: str, store: JobStore | None = None, *, groups: bool = False, batch_id: str | None = None,
           latest: bool = True) -> dict[str, Any]:
    """Counts by state for a batch id (with `groups`, also per A/B group: {group: {state: n}}), or the state,
    history and outputs of a job id (or of a custom_id within `batch_id`). For a batch that was re-run,
    `latest` counts each item's latest outcome."""
    from editq.producer.batches import UnknownId, latest_outcomes, resolve
    from editq.producer.watch import provider_split

    store = store or JobStore()
    if batch_id is None and store.r.exists(store.k.batch(ident)):
        raw = store.r.hgetall(store.k.batch(ident))
        counts = {k[2:]: int(v) for k, v in raw.items() if k.startswith("n_") and int(v)}
        total, done = int(raw.get("total", 0)), int(raw.get("done", 0))
        extra: dict[str, Any] = {}
        if groups:
            from editq.producer.groups import group_counts

            extra["groups"] = group_counts(ident, store)
        reruns = list(store.r.lrange(store.k.batch_reruns(ident), 0, -1))
        failures = {k: int(v) for k, v in store.r.hgetall(store.k.batch_failures(ident)).items()}
        return {**extra,
            "kind": "batch", "batch_id": ident, "total": total, "done": done, "counts": counts,
            "invalid": store.r.llen(store.k.batch_errors(ident)),
            "closed": raw.get("closed") == "1", "finished": batch_finished(raw),
            "manifest_key": raw.get("manifest_key"), "created_at": float(raw.get("created_at", 0) or 0),
            "rerun_of": raw.get("rerun_of"), "reruns": reruns,
            "latest": latest_outcomes(ident, store) if reruns and latest else None,
            "failures": failures, "providers": provider_split(raw),
            **batch_money(store, ident, raw),
        }
    view = store.get(resolve(ident, batch_id, store) if batch_id else ident)
    if view is None:
        raise UnknownId(f"no batch or job with id {ident!r}")
    ident = view.job_id
    history = [h.model_dump() for h in view.history]
    outputs = view.outputs()
    if view.compact:  # a finished job keeps a compact record: its history and outputs are in its manifest
        from editq.worker.manifest import job_manifests

        manifest = job_manifests(store, get_storage(), [view])[0] or {}
        history = manifest.get("history") or [
            {"state": "queued", "at": float(view.fields.get("created_at") or 0), "note": None},
            {"state": view.state.value, "at": float(view.fields.get("updated_at") or 0), "note": None}]
        outputs = manifest.get("outputs") or outputs
    return {
        "kind": "job", "job_id": ident, "batch_id": view.batch_id, "custom_id": view.custom_id,
        "group": view.group, "variant": view.variant, "parent_job_id": view.parent_job_id,
        "state": view.state.value, "provider": view.provider, "request_id": view.request_id,
        "attempts": view.attempts, "history": history,
        "outputs": outputs, "error": view.json_field("error"),
        "finished": view.state in TERMINAL, "rerun_of": view.fields.get("rerun_of") or None,
        "superseded_by": view.fields.get("superseded_by") or None,
        "cost_usd": _job_cost(view.fields), "budget_reason": view.fields.get("budget_reason") or None,
    }


def _usd(micro: str | int | None) -> float:
    return round(int(micro or 0) / MICRO, 6)


def _job_cost(fields: dict[str, str]) -> float | None:
    manifest = fields.get("manifest")
    if manifest:
        return json.loads(manifest).get("cost_usd")  # type: ignore[no-any-return,unused-ignore]
    if fields.get("cost_usd"):  # a compacted job: its manifest's figure
        return float(fields["cost_usd"])
    return _usd(fields.get("spent")) if fields.get("spent") else None


def batch_money(store: JobStore, batch_id: str, raw: dict[str, str] | None = None) -> dict[str, Any]:
    """A batch's money: `cost_usd` (settled: what its finished attempts cost or keep committed), `committed_usd`
    (that plus the reservations of jobs in flight), its cap, its `--on-budget` choice, and why jobs wait."""
    raw = raw if raw is not None else store.r.hgetall(store.k.batch(batch_id))
    waiting = int(raw.get("n_budget_wait", 0) or 0)
    reason = None
    if waiting:
        head = store.r.lrange(store.k.budget_wait(batch_scope(batch_id)), 0, 0)
        jid = head[0] if head else None
        if jid is None:  # waiting on a tenant's budget: find one job that says why
            for jid in store.r.lrange(store.k.batch_jobs(batch_id), 0, 2000):
                if store.r.hget(store.k.job(jid), "state") == State.budget_wait.value:
                    break
            else:
                jid = None
        reason = store.r.hget(store.k.job(jid), "budget_reason") if jid else None
    return {
        "cost_usd": _usd(raw.get("spent")),
        "committed_usd": _usd(raw.get("committed")),
        "max_cost_usd": _usd(raw["max_cost"]) if raw.get("max_cost") not in (None, "") else None,
        "on_budget": raw.get("on_budget") or "wait",
        "budget_waiting": waiting,
        "budget_reason": reason,
    }


def batch_budget(batch_id: str, store: JobStore | None = None) -> dict[str, Any]:
    """`batch_money` of a batch that must exist (UnknownId otherwise)."""
    from editq.producer.batches import require_batch

    store = store or JobStore()
    require_batch(store, batch_id)
    return batch_money(store, batch_id)


def set_batch_budget(batch_id: str, max_cost: float | None, store: JobStore | None = None) -> dict[str, Any]:
    """Set (or with None, remove) a batch's cap; jobs waiting for it that now fit go back to the queue."""
    from editq.producer.batches import require_batch

    store = store or JobStore()
    require_batch(store, batch_id)
    if max_cost is None:
        store.r.hdel(store.k.batch(batch_id), "max_cost")
    else:
        if max_cost < 0:
            raise ValueError("max_cost must be at least 0")
        store.r.hset(store.k.batch(batch_id), "max_cost", round(max_cost * MICRO))
        if not store.r.hget(store.k.batch(batch_id), "manifest_key"):
            store.r.sadd(store.k.budget_batches, batch_id)
    released = store.release_budget(batch_scope(batch_id))
    _kick_waiting(store)
    return {**batch_money(store, batch_id), "released": released}


def set_tenant_budget(tenant: str, max_cost: float | None, store: JobStore | None = None) -> dict[str, Any]:
    """Set a tenant's daily cap in Redis (it overrides EDITQ_TENANT_BUDGETS; None: back to the settings)."""
    store = store or JobStore()
    if max_cost is None:
        store.r.hdel(store.k.tenant_budgets, tenant)
    else:
        if max_cost < 0:
            raise ValueError("max_cost must be at least 0")
        store.r.hset(store.k.tenant_budgets, tenant, round(max_cost * MICRO))
    released = store.release_budget(tenant_scope(tenant))
    _kick_waiting(store)
    return {**tenant_money(tenant, store), "released": released}


def tenant_money(tenant: str, store: JobStore | None = None, now: float | None = None) -> dict[str, Any]:
    from editq.worker.state import tenant_caps

    store = store or JobStore()
    day = int((now if now is not None else time.time()) // 86400)
    raw = store.r.hgetall(store.k.tenant_day(tenant, day))
    override = store.r.hget(store.k.tenant_budgets, tenant)
    caps_json, default = tenant_caps()
    caps = json.loads(caps_json) if caps_json else {}
    cap = int(override) if override is not None else caps.get(tenant, default if default >= 0 else None)
    return {"tenant": tenant, "day_utc": time.strftime("%Y-%m-%d", time.gmtime(day * 86400)),
            "cost_usd": _usd(raw.get("spent")), "committed_usd": _usd(raw.get("committed")),
            "max_cost_usd": _usd(cap) if cap is not None else None,
            "waiting": store.r.llen(store.k.budget_wait(tenant_scope(tenant)))}


def _kick_waiting(store: JobStore) -> None:
    """Jobs sent back to the queue wait for the tick's dispatch; wake their providers now."""
    _kick({p for p in store.r.smembers(store.k.providers) if p in registry.names() and store.has_queued(p)})


def batch_finished(raw: dict[str, Any]) -> bool:
    """A batch (its hash's `closed`, `done`, `total`) is finished: fully enqueued and every job ended."""
    return raw.get("closed") == "1" and int(raw.get("done") or 0) >= int(raw.get("total") or 0)


# the fields of a batch hash that `batch_settled` reads (editq.aio polls just these)
SETTLED_FIELDS = ("closed", "done", "total", "manifest_key")


def batch_settled(raw: dict[str, Any]) -> bool:
    return batch_finished(raw) and bool(raw.get("manifest_key"))


def job_settled(state: str | None) -> bool:
    return state is not None and State(state) in TERMINAL


def settled(st: dict[str, Any]) -> bool:
    """What `wait` waits for (a status): a job finished; a batch finished and its manifest written."""
    return bool(st["finished"]) and (st["kind"] == "job" or bool(st.get("manifest_key")))


def wait(ident: str, timeout: float = 600.0, interval: float = 0.5) -> dict[str, Any]:
    """Block until a batch or job is `settled`. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(ident)
        if settled(st):
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ident} not finished after {timeout}s: {st}")
        time.sleep(interval)


def cancel(job_id: str) -> bool:
    from editq.worker import aio
    from editq.worker.pipeline import Pipeline

    return aio.run(Pipeline().cancel(job_id))


__all__ = ["BatchReport", "LineError", "State", "batch_budget", "batch_money", "cancel", "set_batch_budget",
           "set_tenant_budget", "settled", "status", "submit", "submit_batch", "submit_file", "tenant_money", "wait"]
