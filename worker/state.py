"""The job state machine: every state, every allowed transition, applied atomically in Redis.

A job lives in exactly one index that matches its state, and every move between states is one
Lua script, so a crash can never leave a job half-moved, and two workers racing on the same job
(a webhook and the poller, a redelivered task and the original) cannot both win:

    queued      -> its tenant's pending list {p}:pending:{provider}:{lane}[:t:{tenant}], the tenant in the
                   lane's ring {p}:fair:{provider}:{lane} (worker/lua/fair.lua: fair sharing by weight)
    budget_wait -> {p}:budgetwait:{scope} list (the budget it waits for); no slot, no reservation
    submitting  -> {p}:inflight  zset, score = claim lease deadline; holds a provider slot
    submitted   -> {p}:inflight  zset, score = next poll time;       holds a provider slot
    retry_wait  -> {p}:retry     zset, score = due time
    ready       -> {p}:ready     list (collect drains it)
    collecting  -> {p}:collecting zset, score = lease deadline
    succeeded | failed | cancelled: terminal, no index; the move rewrites the job hash to a compact record
                (~0.4 KB, `JobView.compact`) and stages its manifest for the batch manifest; expires after job_ttl_s.

Per-batch counters (`n_<state>`, `done`) move in the same script, so `editq status` is O(1).

Money moves with the job: the claim reserves its worst-case cost against its batch and tenant budgets
(worker/lua/claim.lua, with the other global limits) and the move script settles the reservation when the
job leaves the provider's hands (worker/lua/move.lua): released, kept (an attempt that may have been billed)
or adjusted to the real cost (`settle` field). Amounts are integer micro-USD.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, partial
from importlib import resources
from typing import Any

import redis

from editq.schemas.job import EditJob
from editq.schemas.manifest import StateChange
from editq.schemas.settings import get_settings
from editq.worker.keys import Keys, keys, lua_preamble
from editq.worker.redis_client import get_redis
from editq.worker.roundtrips import RoundTrips


class State(StrEnum):
    queued = "queued"
    budget_wait = "budget_wait"
    submitting = "submitting"
    submitted = "submitted"
    retry_wait = "retry_wait"
    ready = "ready"
    collecting = "collecting"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL = frozenset({State.succeeded, State.failed, State.cancelled})
ACTIVE = frozenset(State) - TERMINAL
# a job that ended in one of these does not hold its idempotency key: the same line submitted again runs
REPLACEABLE = (State.failed, State.cancelled)

# The only moves the pipeline makes. Anything else is a bug and is refused.
TRANSITIONS: dict[State, frozenset[State]] = {
    # queued/retry_wait -> ready: the late, signed answer of an earlier request that was lost in a crash
    State.queued: frozenset({State.submitting, State.ready, State.cancelled, State.failed, State.budget_wait}),
    # waits for money: back to the queue when its budget has room, or failed (--on-budget fail), or cancelled
    State.budget_wait: frozenset({State.queued, State.failed, State.cancelled}),
    State.submitting: frozenset(
        {State.submitted, State.ready, State.retry_wait, State.queued, State.failed, State.cancelled}
    ),
    State.submitted: frozenset({State.ready, State.retry_wait, State.queued, State.failed, State.cancelled}),
    State.retry_wait: frozenset({State.queued, State.ready, State.failed, State.cancelled}),
    State.ready: frozenset({State.collecting, State.cancelled}),
    State.collecting: frozenset({State.succeeded, State.ready, State.failed, State.retry_wait}),
    State.succeeded: frozenset(),
    State.failed: frozenset(),
    State.cancelled: frozenset(),
}

LUA_DIR = "lua"  # worker/lua/*.lua, package data
_INCLUDE = re.compile(r"^--@include (\S+)$", re.MULTILINE)


def _lua_source(name: str) -> str:
    return (resources.files("editq.worker") / LUA_DIR / name).read_text(encoding="utf-8")


def _expand(name: str, seen: set[str]) -> str:
    """`name` with each `--@include <file>` line replaced by that file, itself expanded; a file already
    included (directly or by another include) is left out, so libraries may include what they use."""

    def include(m: re.Match[str]) -> str:
        lib = m.group(1)
        if lib in seen:
            return f"-- ({lib}: included above)"
        seen.add(lib)
        return _expand(lib, seen).rstrip("\n")

    return _INCLUDE.sub(include, _lua_source(name))


def lua_script(name: str) -> str:
    """The full text of the script `worker/lua/<name>` as sent to Redis: the key layout's preamble
    (worker/keys.py), then the file with each `--@include <file>` line replaced by that file."""
    return lua_preamble() + _expand(name, {name})


# Every move, claim and creation is one of these (ARGV, returns: see the head of each file).
_LUA_TRANSITION = lua_script("transition.lua")
_LUA_CLAIM = lua_script("claim.lua")
_LUA_CREATE = lua_script("create.lua")
_LUA_CLOSE = lua_script("close.lua")
_LUA_RELEASE = lua_script("release.lua")
_LUA_CLAIM_READY = lua_script("claim_ready.lua")
LANES = ("interactive", "bulk")  # the claim's order: every interactive job of any tenant before bulk
MICRO = 1_000_000  # budgets and reservations are integer micro-USD


@dataclass(frozen=True)
class Moved:
    ok: bool
    previous: str
    batch_finished: bool = False
    freed: str = ""  # provider whose slot this move released while it has queued jobs
    kicks: int = 0  # wake-ups this move claimed (bit 1: dispatch of `freed`, bit 2: collect)


def _reply(res: Any) -> Moved:
    """The transition script's reply."""
    return Moved(bool(res[0]), res[1] or "", bool(res[2]), res[3] if len(res) > 3 else "",
                 int(res[4]) if len(res) > 4 else 0)


@dataclass
class JobView:
    """A job as read back from Redis."""

    job_id: str
    state: State
    provider: str
    lane: str
    attempts: int
    request_id: str | None
    fields: dict[str, str]

    @cached_property
    def job(self) -> EditJob:
        """The job as enqueued, parsed on first use (the receiver's path never needs it). A finished job keeps
        only its compact record (`compact`): its full job is in its manifest (worker/manifest.py `full_job`)."""
        if self.compact:
            raise LookupError(f"job {self.job_id} is finished and compacted: its spec is in its manifest")
        return EditJob.model_validate_json(self.fields["spec"])

    @property
    def compact(self) -> bool:
        """A finished job's compact record (worker/lua/move.lua `compact`): no spec, history or manifest."""
        return "spec" not in self.fields

    def _spec_field(self, name: str, short: str) -> str | None:
        if self.compact:
            return self.fields.get(short) or None
        value = getattr(self.job, name)
        return str(value) if value is not None else None

    @property
    def batch_id(self) -> str:
        return self.fields.get("batch_id", "")

    @property
    def custom_id(self) -> str | None:
        return self._spec_field("custom_id", "cid")

    @property
    def group(self) -> str | None:
        return self._spec_field("group", "grp")

    @property
    def variant(self) -> str | None:
        return self._spec_field("variant", "var")

    @property
    def parent_job_id(self) -> str | None:
        return self._spec_field("parent_job_id", "par")

    def outputs(self) -> list[dict[str, Any]]:
        """The output records (schemas/manifest.py OutputRecord, without source_url once compacted)."""
        if "outputs" in self.fields or not self.compact:
            return self.json_field("outputs") or []
        out = []
        for name, meta in self.fields.items():
            if not name.startswith("o."):
                continue
            idx = name[2:]
            ext, size, dims, ctype = [*meta.split("|", 3), "", "", ""][:4]
            width, _, height = dims.partition("x")
            prefix = self.fields.get(f"kp.{idx}", "")
            key = self.fields.get(f"k.{idx}") or f"{prefix}/{self.batch_id}/{self.job_id}/{idx}.{ext}"
            out.append({"index": int(idx), "key": key, "sha256": self.fields.get(f"s.{idx}", ""),
                        "bytes": int(size or 0), "content_type": ctype, "width": int(width or 0),
                        "height": int(height or 0)})
        return sorted(out, key=lambda o: o["index"])

    @property
    def history(self) -> list[StateChange]:
        out = []
        for line in self.fields.get("h", "").splitlines():
            parts = line.split("\t", 2)
            if len(parts) >= 2:
                out.append(StateChange(state=parts[0], at=float(parts[1]), note=parts[2] if len(parts) > 2 else None))
        return out

    def json_field(self, name: str) -> Any:
        raw = self.fields.get(name)
        return json.loads(raw) if raw else None


def create_entry(job: EditJob, extra: Mapping[str, str] | None = None,
                 worst_case: Mapping[str, int] | None = None, spec: str | None = None) -> list[Any]:
    """One job as create.lua takes it: [job_id, batch_id, idempotency key, provider, lane, custom_id, tenant,
    created_at, [field, value, ...]] (the job hash's own fields: `spec`, `created_at`, `tenant`, `wc.<provider>`,
    `extra`). `spec`: the job's JSON when the caller has it already (`job.model_dump_json(exclude_none=True)`)."""
    fields = {"spec": spec if spec is not None else job.model_dump_json(exclude_none=True),
              "created_at": repr(job.created_at), **(extra or {})}
    if job.tenant:
        fields["tenant"] = job.tenant
    for provider, micro in (worst_case or {}).items():
        fields[f"wc.{provider}"] = str(int(micro))
    flat: list[str] = []
    for f, v in fields.items():
        flat += [f, str(v)]
    return [job.job_id, job.batch_id, job.idempotency_key, job.route[0], job.priority.value, job.custom_id or "",
            fields.get("tenant") or "", fields["created_at"], flat]


class SentCreate:
    """A create.lua call sent on a connection of its own, its reply not read yet (JobStore.send_create_many)."""

    def __init__(self, store: JobStore, args: list[Any]) -> None:
        self.store, self.args = store, args
        self.pool = store.r.connection_pool
        self.conn: Any = self.pool.get_connection()
        try:
            self.conn.send_command("EVALSHA", store._create.sha, 0, *args)
        except BaseException:
            self._release(broken=True)
            raise

    def _release(self, broken: bool = False) -> None:
        if self.conn is None:
            return
        if broken:
            self.conn.disconnect()  # a reply may still be on its way: this connection is not reused
        self.pool.release(self.conn)
        self.conn = None

    def result(self) -> list[tuple[bool, str]]:
        """(created, job id or the existing job's id) per entry, in order."""
        if self.conn is None:
            raise RuntimeError("the reply was read already")
        try:
            res = self.conn.read_response()
        except redis.exceptions.NoScriptError:  # Redis lost its scripts (a restart): nothing ran; load and run
            self._release()
            res = self.store._create(keys=[], args=self.args)
        except BaseException:
            self._release(broken=True)
            raise
        self._release()
        return [(bool(int(res[i])), res[i + 1]) for i in range(0, len(res), 2)]


class JobStore:
    """Atomic job state in Redis. Every method is safe to call twice."""

    def __init__(self, r: Any = None, k: Keys | None = None) -> None:
        self.r: Any = r or get_redis()
        self.k = k or keys()
        # Wake-ups: with `kick_ms` > 0 the move script sets the coalescing flags of worker/triggers.py
        # itself, and the callback runs only when it set one (a burst of moves sends one task):
        # `on_slot_freed(provider)` when a move frees one of its slots while it has queued jobs,
        # `on_ready()` when a job becomes ready. With 0 (the default) moves wake nothing.
        self.kick_ms = 0
        self.on_slot_freed: Callable[[str], None] | None = None
        self.on_ready: Callable[[], None] | None = None
        self._transition = self.r.register_script(_LUA_TRANSITION)
        self._claim = self.r.register_script(_LUA_CLAIM)
        self._create = self.r.register_script(_LUA_CREATE)
        self._close = self.r.register_script(_LUA_CLOSE)
        self._release = self.r.register_script(_LUA_RELEASE)
        self._claim_ready = self.r.register_script(_LUA_CLAIM_READY)

    def warm_up(self) -> None:
        """Load the scripts into Redis now (the first EVALSHA of each would otherwise miss and resend)."""
        for script in (self._transition, self._claim, self._create, self._close, self._release, self._claim_ready):
            script.sha = self.r.script_load(script.script)

    # -- creation -------------------------------------------------------------------------
    def create(self, job: EditJob, pipe: Any = None, *, replaceable: Iterable[State] = REPLACEABLE,
               extra: Mapping[str, str] | None = None, worst_case: Mapping[str, int] | None = None) -> Any:
        """Create a queued job unless its idempotency key is held by a job in a state other than
        `replaceable` (default: failed, cancelled). Returns [1, id] or [0, existing id]. A job that
        replaces another is recorded on it (`superseded_by`). `extra`: more fields of the job hash.
        `worst_case`: provider -> the job's worst-case cost there (micro-USD), what a claim reserves.
        (A chunk of one for `create_many`: with `pipe`, the reply [1, id] / [0, id] comes from the pipeline.)"""
        return self._create(keys=[], args=self._create_args([create_entry(job, extra, worst_case)], replaceable),
                            client=pipe or self.r)

    def create_many(self, entries: Sequence[list[Any]], *, replaceable: Iterable[State] = REPLACEABLE
                    ) -> list[tuple[bool, str]]:
        """`create` for a chunk of jobs in one script call (one round trip, one EVALSHA): `entries` from
        `create_entry`, created in order; (created, job id or the existing job's id) per entry."""
        if not entries:
            return []
        return self.send_create_many(entries, replaceable=replaceable).result()

    def send_create_many(self, entries: Sequence[list[Any]], *, replaceable: Iterable[State] = REPLACEABLE
                         ) -> SentCreate:
        """`create_many` in two halves: the script call is sent now and `.result()` reads its reply, so the
        caller prepares its next chunk while Redis runs this one. Read it (always: that returns the connection)
        before sending a chunk that could hold the same idempotency keys."""
        return SentCreate(self, self._create_args(entries, replaceable))

    def _create_args(self, entries: Sequence[list[Any]], replaceable: Iterable[State]) -> list[Any]:
        return [self.k.prefix, get_settings().job_ttl_s, ",".join(s.value for s in replaceable),
                json.dumps(entries, ensure_ascii=False, separators=(",", ":"))]

    def close_batch(self, batch_id: str) -> bool:
        return bool(self._close(keys=[], args=[self.k.prefix, batch_id, repr(time.time())]))

    # -- transitions ------------------------------------------------------------------------
    def move(
        self,
        job_id: str,
        frm: Iterable[State],
        to: State,
        *,
        score: float = 0.0,
        note: str = "",
        fields: Mapping[str, Any] | None = None,
        before: Callable[[Any], None] | None = None,
        found: str = "",
    ) -> Moved:
        """`before(pipe)`: commands to run ahead of the move in the same round trip (a non-transactional
        pipeline: they run whatever the move decides, so they must be safe to apply twice).
        `found`: "provider|via", counted in `Keys.stats_found` by the move's script when the job moves."""
        args = self._move_args(job_id, frm, to, score, note, fields, found)
        res = None
        if before is not None:
            pipe = self.r.pipeline(transaction=False)
            before(pipe)
            # EVALSHA itself: redis-py's Script in a pipeline would first ask SCRIPT EXISTS (a round trip)
            pipe.evalsha(self._transition.sha, 0, *args)
            try:
                res = pipe.execute()[-1]
            except redis.exceptions.NoScriptError:  # Redis lost its scripts (a restart): the rest ran; the
                res = None  # Script object below loads it and moves
        if res is None:
            res = self._transition(keys=[], args=args)
        return self._moved(res)

    async def move_shared(
        self,
        trips: RoundTrips,
        job_id: str,
        frm: Iterable[State],
        to: State,
        *,
        score: float = 0.0,
        note: str = "",
        fields: Mapping[str, Any] | None = None,
        before: Callable[[Any], None] | None = None,
    ) -> Moved:
        """`move` from a task on an event loop, in the round trip it shares with the loop's other tasks that
        move (or write) in the same iteration (worker/roundtrips.py). The same script, arguments and result."""
        args = self._move_args(job_id, frm, to, score, note, fields)
        return self._moved(await self._script_shared(trips, self._transition, args, before))

    async def _script_shared(self, trips: RoundTrips, script: Any, args: list[Any],
                             before: Callable[[Any], None] | None = None) -> Any:
        """`script`'s reply to `args`, called (after `before(pipe)`'s commands) in the round trip shared with the
        loop's other tasks (worker/roundtrips.py); a command's error is raised. Redis without the script (it
        lost its scripts in a restart): loaded and called on its own."""
        def queue(pipe: Any) -> None:
            if before is not None:
                before(pipe)
            pipe.evalsha(script.sha, 0, *args)

        results = await trips.send(queue)
        for res in results[:-1]:
            if isinstance(res, Exception):
                raise res
        res = results[-1]
        if isinstance(res, redis.exceptions.NoScriptError):
            return script(keys=[], args=args)
        if isinstance(res, Exception):
            raise res
        return res

    def _move_args(self, job_id: str, frm: Iterable[State], to: State, score: float, note: str,
                   fields: Mapping[str, Any] | None, found: str = "") -> list[Any]:
        """`found`: "provider|via", counted in `Keys.stats_found` by the script when the job moves."""
        frm = list(frm)
        for f in frm:
            if to not in TRANSITIONS[f]:
                raise ValueError(f"illegal transition {f} -> {to}")
        flat: list[Any] = []
        for name, value in (fields or {}).items():
            flat += [name, value if isinstance(value, str) else json.dumps(value)]
        return [
            self.k.prefix, job_id, ",".join(frm), to.value, repr(time.time()), repr(score),
            note.replace("\n", " ")[:500], get_settings().job_ttl_s, len(flat) // 2, *flat, self.kick_ms,
            *([found] if found else []),
        ]

    async def amove(self, ar: Any, job_id: str, frm: Iterable[State], to: State, *,
                    fields: Mapping[str, Any] | None = None, found: str = "") -> Moved:
        """`move` over `ar`, a redis.asyncio client on the running loop (the receiver's): its event loop serves
        other deliveries while Redis answers, without a thread hop per move. The same script, arguments and
        result; the wake-up callbacks (a Celery send, about once a second at most: the flags coalesce them) run
        on a thread."""
        args = self._move_args(job_id, frm, to, 0.0, "", fields, found)
        try:
            res = await ar.evalsha(self._transition.sha, 0, *args)
        except redis.exceptions.NoScriptError:  # Redis lost its scripts (a restart): load it again
            self._transition.sha = await ar.script_load(self._transition.script)
            res = await ar.evalsha(self._transition.sha, 0, *args)
        moved = _reply(res)
        for wake in self._wake_ups(moved):
            await asyncio.to_thread(wake)
        return moved

    def _moved(self, res: Any) -> Moved:
        moved = _reply(res)
        for wake in self._wake_ups(moved):
            wake()
        return moved

    def _wake_ups(self, moved: Moved) -> list[Callable[[], None]]:
        """What a move asks to be woken (its script's `kicks`): dispatch for the provider whose slot it freed,
        collect for a job it made ready."""
        wakes: list[Callable[[], None]] = []
        if moved.kicks & 1 and self.on_slot_freed is not None:
            wakes.append(partial(self.on_slot_freed, moved.freed))
        if moved.kicks & 2 and self.on_ready is not None:
            wakes.append(self.on_ready)
        return wakes

    def claim(
        self, provider: str, want: int, cap: int, reserve: int, rpm: int, lease_s: float,
        reserve_hold_s: float | None = None, owner: str = "",
    ) -> list[str]:
        """`reserve_hold_s` None: the interactive reserve is always held; else only while interactive
        jobs are queued or one was claimed in the last `reserve_hold_s` seconds. Jobs over budget go to
        `budget_wait` (see `claim_budgeted` for the ones their batch wants failed)."""
        return self.claim_budgeted(provider, want, cap, reserve, rpm, lease_s, reserve_hold_s, owner=owner)[0]

    def claim_ready(self, want: int, lease_until: float, owner: str) -> list[str]:
        """Up to `want` ready jobs, popped and moved to `collecting` in one script (worker/lua/claim_ready.lua):
        leased until `lease_until`, owned by `owner`, their `collect_attempts` counted."""
        return list(self._claim_ready(keys=[], args=self._claim_ready_args(want, lease_until, owner)))

    def _claim_ready_args(self, want: int, lease_until: float, owner: str) -> list[Any]:
        return [self.k.prefix, repr(time.time()), want, repr(lease_until), owner]

    async def claim_ready_shared(self, trips: RoundTrips, want: int, lease_until: float, owner: str
                                 ) -> list[JobView]:
        """`claim_ready`, then the claimed jobs as `get_many` reads them, from a task on an event loop: each in
        the round trip it shares with the loop's other tasks (worker/roundtrips.py)."""
        args = self._claim_ready_args(want, lease_until, owner)
        ids = list(await self._script_shared(trips, self._claim_ready, args))
        if not ids:
            return []

        def read(pipe: Any) -> None:
            for jid in ids:
                pipe.hgetall(self.k.job(jid))

        records = await trips.send(read)
        views = []
        for jid, fields in zip(ids, records, strict=True):
            if isinstance(fields, Exception):
                raise fields
            view = job_view(jid, fields)
            if view is not None:
                views.append(view)
        return views

    def claim_budgeted(
        self, provider: str, want: int, cap: int, reserve: int, rpm: int, lease_s: float,
        reserve_hold_s: float | None = None, now: float | None = None, owner: str = "",
    ) -> tuple[list[str], list[str]]:
        """`claim`, also returning the jobs that did not fit their budget and whose batch chose
        `--on-budget fail` (they are `budget_wait` now; the caller fails them with `budget_exceeded`).
        `owner`: the claiming worker (`worker_id()`), recorded on each job inside the claim."""
        hold_ms = -1 if reserve_hold_s is None or reserve_hold_s == float("inf") else int(reserve_hold_s * 1000)
        caps, default = tenant_caps()
        weights, default_weight = tenant_weights()
        res = self._claim(
            keys=[], args=[self.k.prefix, provider, repr(now if now is not None else time.time()), want, cap,
                           reserve, rpm, lease_s, hold_ms, caps, default, max(1000, want * 16), weights,
                           repr(default_weight), owner]
        )
        return list(res[0]), list(res[1])

    def release_budget(self, scope: str, limit: int = 1000, now: float | None = None) -> int:
        """Send jobs waiting for money in `scope` (`batch:<id>`, `tenant:<name>`) back to the queue while
        their worst case fits the room left. Returns how many."""
        caps, default = tenant_caps()
        return int(self._release(keys=[], args=[self.k.prefix, scope, repr(now if now is not None else time.time()),
                                               caps, default, limit]))

    def has_queued(self, provider: str) -> bool:
        return has_queued(self.r, self.k, provider)

    def budget_scopes(self) -> list[str]:
        return list(self.r.smembers(self.k.budget_scopes))

    # -- reads ----------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobView | None:
        return job_view(job_id, self.r.hgetall(self.k.job(job_id)))

    def get_many(self, job_ids: list[str]) -> list[JobView | None]:
        pipe = self.r.pipeline(transaction=False)
        for jid in job_ids:
            pipe.hgetall(self.k.job(jid))
        return [job_view(j, f) for j, f in zip(job_ids, pipe.execute(), strict=True)]

    def set_fields(self, job_id: str, **fields: Any) -> None:
        self.r.hset(
            self.k.job(job_id),
            mapping={k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()},
        )

    def due(self, zset: str, now: float, limit: int) -> list[str]:
        return list(self.r.zrangebyscore(zset, "-inf", now, start=0, num=limit))

    def reschedule(self, zset: str, job_id: str, at: float) -> None:
        """Move a job's next check (only if it is still in that index)."""
        self.r.zadd(zset, {job_id: at}, xx=True)

    def claim_finalizing(self, now: float, lease_s: float, limit: int = 100) -> list[str]:
        """Batches due for their manifest: each one returned is leased `lease_s` ahead (another claim
        skips it meanwhile); it leaves the index only when `finalized` is called after a successful write."""
        due = list(self.r.zrangebyscore(self.k.finalize, "-inf", now, start=0, num=limit))
        if not due:
            return []
        pipe = self.r.pipeline(transaction=False)
        for bid in due:
            pipe.zadd(self.k.finalize, {bid: now + lease_s}, xx=True)
        pipe.execute()
        return due

    def lease_finalizing(self, batch_id: str, until: float) -> None:
        self.r.zadd(self.k.finalize, {batch_id: until}, xx=True)

    def finalized(self, batch_id: str) -> None:
        self.r.zrem(self.k.finalize, batch_id)

    def batch_counts(self, batch_id: str) -> dict[str, int]:
        raw = self.r.hgetall(self.k.batch(batch_id))
        return {k: int(v) for k, v in raw.items() if k in ("total", "done") or k.startswith("n_")}

    def record_request(self, job_id: str, entry: dict[str, Any]) -> None:
        """Append to the job's provider request log (read-modify-write under WATCH)."""
        jk = self.k.job(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(jk)
                    current = json.loads(pipe.hget(jk, "requests") or "[]")
                    current.append(entry)
                    pipe.multi()
                    pipe.hset(jk, "requests", json.dumps(current))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue


def batch_scope(batch_id: str) -> str:
    """The budget scope of a batch (the claim script spells the same: 'batch:' .. id)."""
    return f"batch:{batch_id}"


def tenant_scope(tenant: str) -> str:
    return f"tenant:{tenant}"


def tenant_caps() -> tuple[str, int]:
    """The settings' tenant budgets for the scripts: (JSON tenant -> micro-USD per day, default or -1)."""
    s = get_settings()
    caps = {t: round(usd * MICRO) for t, usd in s.tenant_budgets.items()}
    default = -1 if s.tenant_budget_default is None else round(s.tenant_budget_default * MICRO)
    return (json.dumps(caps) if caps else ""), default


def has_queued(r: Any, k: Keys, provider: str) -> bool:
    """Jobs of any tenant, in either lane, are queued for `provider` (one round trip)."""
    return bool(r.exists(*(key for lane in LANES for key in (k.fair(provider, lane), k.pending(provider, lane)))))


def queued_heads(r: Any, k: Keys, providers: Iterable[str]) -> dict[tuple[str, str], list[str]]:
    """(provider, lane) -> the job at the head of each tenant's queue there (the oldest queued job of the
    lane is one of them). Two round trips whatever the number of providers and tenants."""
    pairs = [(p, lane) for p in providers for lane in LANES]
    pipe = r.pipeline(transaction=False)
    for p, lane in pairs:
        pipe.zrange(k.fair(p, lane), 0, -1)
    lists = [(p, lane, k.pending_tenant(p, lane, t) if t else k.pending(p, lane))
             for (p, lane), tenants in zip(pairs, pipe.execute(), strict=True) for t in sorted({"", *tenants})]
    pipe = r.pipeline(transaction=False)
    for _, _, key in lists:
        pipe.lindex(key, 0)
    heads: dict[tuple[str, str], list[str]] = {}
    for (p, lane, _), head in zip(lists, pipe.execute(), strict=True):
        if head:
            heads.setdefault((p, lane), []).append(head)
    return heads


def tenant_weights() -> tuple[str, float]:
    """The settings' tenant weights for the claim script: (JSON tenant -> weight, the default weight)."""
    s = get_settings()
    return (json.dumps(s.tenant_weights) if s.tenant_weights else ""), s.tenant_weight_default


def job_view(job_id: str, fields: dict[str, str] | None) -> JobView | None:
    """A job from its Redis hash (as read by HGETALL); None when there is no such job."""
    if not fields or "state" not in fields:  # (a stray field set on an expired job is no job)
        return None
    return JobView(
        job_id=job_id,
        state=State(fields["state"]),
        provider=fields.get("provider", ""),
        lane=fields.get("lane", "bulk"),
        attempts=int(fields.get("attempts", "0")),
        request_id=fields.get("request_id") or None,
        fields=fields,
    )
