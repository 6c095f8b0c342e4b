"""The job state machine: every state, every allowed transition, applied atomically in Redis.

A job lives in exactly one index that matches its state, and every move between states is one
Lua script, so a crash can never leave a job half-moved, and two workers racing on the same job
(a webhook and the poller, a redelivered task and the original) cannot both win:

    queued      -> pending list  {p}:pending:{provider}:{lane}
    submitting  -> {p}:inflight  zset, score = claim lease deadline; holds a provider slot
    submitted   -> {p}:inflight  zset, score = next poll time;       holds a provider slot
    retry_wait  -> {p}:retry     zset, score = due time
    ready       -> {p}:ready     list (collect drains it)
    collecting  -> {p}:collecting zset, score = lease deadline
    succeeded | failed | cancelled: terminal, no index; the job hash expires after job_ttl_s.

Per-batch counters (`n_<state>`, `done`) move in the same script, so `editq status` is O(1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any

import redis

from schemas.job import EditJob
from schemas.manifest import StateChange
from schemas.settings import get_settings
from worker.keys import Keys, keys
from worker.redis_client import get_redis


class State(StrEnum):
    queued = "queued"
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

# The only moves the pipeline makes. Anything else is a bug and is refused.
TRANSITIONS: dict[State, frozenset[State]] = {
    # queued/retry_wait -> ready: the late, signed answer of an earlier request that was lost in a crash
    State.queued: frozenset({State.submitting, State.ready, State.cancelled, State.failed}),
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

_LUA_MOVE = r"""
local function move(prefix, jid, cur, to, now, score, note, ttl)
  local jk = prefix .. ':job:' .. jid
  if cur == 'submitting' or cur == 'submitted' then redis.call('ZREM', prefix .. ':inflight', jid)
  elseif cur == 'retry_wait' then redis.call('ZREM', prefix .. ':retry', jid)
  elseif cur == 'collecting' then redis.call('ZREM', prefix .. ':collecting', jid) end
  local provider = redis.call('HGET', jk, 'provider')
  if to == 'queued' then
    local lane = redis.call('HGET', jk, 'lane')
    redis.call('RPUSH', prefix .. ':pending:' .. provider .. ':' .. lane, jid)
    redis.call('SADD', prefix .. ':providers', provider)
  elseif to == 'submitting' or to == 'submitted' then redis.call('ZADD', prefix .. ':inflight', score, jid)
  elseif to == 'retry_wait' then redis.call('ZADD', prefix .. ':retry', score, jid)
  elseif to == 'ready' then
    -- collect pops from the head: interactive results are stored ahead of any bulk backlog
    if redis.call('HGET', jk, 'lane') == 'interactive' then redis.call('LPUSH', prefix .. ':ready', jid)
    else redis.call('RPUSH', prefix .. ':ready', jid) end
  elseif to == 'collecting' then redis.call('ZADD', prefix .. ':collecting', score, jid) end
  local entry = to .. '\t' .. now
  if note ~= '' then entry = entry .. '\t' .. note end
  redis.call('HSET', jk, 'state', to, 'updated_at', now,
             'h', (redis.call('HGET', jk, 'h') or '') .. entry .. '\n')
  local terminal = (to == 'succeeded' or to == 'failed' or to == 'cancelled')
  local finished = 0
  local bid = redis.call('HGET', jk, 'batch_id')
  if bid then
    local bk = prefix .. ':batch:' .. bid
    redis.call('HINCRBY', bk, 'n_' .. cur, -1)
    redis.call('HINCRBY', bk, 'n_' .. to, 1)
    if terminal then
      local d = redis.call('HINCRBY', bk, 'done', 1)
      if redis.call('HGET', bk, 'closed') == '1' and d >= tonumber(redis.call('HGET', bk, 'total') or '0') then
        if redis.call('HSETNX', bk, 'finalizing', now) == 1 then
          redis.call('RPUSH', prefix .. ':finalize', bid)
          finished = 1
        end
      end
    end
  end
  if terminal and ttl > 0 then redis.call('EXPIRE', jk, ttl) end
  return finished
end
"""

# ARGV: prefix, job_id, from_csv, to, now, score, note, ttl, nfields, f1, v1, ..., kick_ms
_LUA_TRANSITION = _LUA_MOVE + r"""
local prefix, jid, from, to = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local jk = prefix .. ':job:' .. jid
local cur = redis.call('HGET', jk, 'state')
if not cur then return {0, '', 0} end
local allowed = false
for s in string.gmatch(from, '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {0, cur, 0} end
local old_provider = redis.call('HGET', jk, 'provider')
local n = tonumber(ARGV[9])
for i = 0, n - 1 do redis.call('HSET', jk, ARGV[10 + 2 * i], ARGV[11 + 2 * i]) end
local freed = ''
if to ~= 'submitting' and to ~= 'submitted' and old_provider then
  if redis.call('ZREM', prefix .. ':slots:' .. old_provider, jid) == 1
     and (redis.call('LLEN', prefix .. ':pending:' .. old_provider .. ':interactive') > 0
          or redis.call('LLEN', prefix .. ':pending:' .. old_provider .. ':bulk') > 0) then
    freed = old_provider
  end
end
local finished = move(prefix, jid, cur, to, ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]))
-- wake-ups in the same round trip: a kick flag set here (NX, it coalesces a burst and a running pump
-- holds it) tells the caller to send that task; bit 1 dispatch of the freed provider, bit 2 collect
local kicks = 0
local kick_ms = tonumber(ARGV[10 + 2 * n] or '0')
if kick_ms > 0 then
  if freed ~= '' and redis.call('SET', prefix .. ':kick:dispatch:' .. freed, '1', 'NX', 'PX', kick_ms) then
    kicks = kicks + 1
  end
  if to == 'ready' and redis.call('SET', prefix .. ':kick:collect', '1', 'NX', 'PX', kick_ms) then
    kicks = kicks + 2
  end
end
return {1, cur, finished, freed, kicks}
"""

# ARGV: prefix, provider, now, want, cap, reserve, rpm, lease_s, hold_ms
# Claims up to `want` queued jobs of one provider, interactive lane first, within the global
# concurrency cap (bulk may not use the last `reserve` slots) and the requests-per-minute budget.
# hold_ms < 0: the reserve is always held. hold_ms >= 0: it is held only while interactive jobs are
# queued or one was claimed in the last hold_ms, so a bulk-only workload can use the whole cap.
_LUA_CLAIM = _LUA_MOVE + r"""
local prefix, provider = ARGV[1], ARGV[2]
local now, want, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reserve, rpm, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local hold_ms = tonumber(ARGV[9] or '-1')
if redis.call('EXISTS', prefix .. ':backoff:' .. provider) == 1 then return {} end
local slots = prefix .. ':slots:' .. provider
local free = cap - redis.call('ZCARD', slots)
if free <= 0 then return {} end
local mark = prefix .. ':interactive:' .. provider
if reserve > 0 and hold_ms >= 0 and redis.call('EXISTS', mark) == 0
   and redis.call('LLEN', prefix .. ':pending:' .. provider .. ':interactive') == 0 then
  reserve = 0
end
local budget = want
local rk = prefix .. ':rpm:' .. provider
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - 60)
  local left = rpm - redis.call('ZCARD', rk)
  if left < budget then budget = left end
end
local out = {}
for _, lane in ipairs({'interactive', 'bulk'}) do
  local lane_free = free
  if lane == 'bulk' then lane_free = free - reserve end
  local pk = prefix .. ':pending:' .. provider .. ':' .. lane
  while #out < budget and #out < lane_free do
    local jid = redis.call('LPOP', pk)
    if not jid then break end
    local jk = prefix .. ':job:' .. jid
    if redis.call('HGET', jk, 'state') == 'queued' and redis.call('HGET', jk, 'provider') == provider then
      redis.call('ZADD', slots, now, jid)
      redis.call('HINCRBY', jk, 'attempts', 1)
      if rpm > 0 then redis.call('ZADD', rk, now, jid .. ':' .. now) end
      move(prefix, jid, 'queued', 'submitting', ARGV[3], now + lease, '', 0)
      table.insert(out, jid)
      if lane == 'interactive' and hold_ms > 0 then redis.call('SET', mark, '1', 'PX', hold_ms) end
    end
  end
end
return out
"""

# ARGV: prefix, job_id, batch_id, idem_key, idem_ttl, provider, lane, nfields, f1, v1, ...
# Creates a job unless its idempotency key is already taken; returns {1, job_id} or {0, existing}.
_LUA_CREATE = r"""
local prefix, jid, bid, idem = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ik = prefix .. ':idem:' .. idem
local existing = redis.call('GET', ik)
if existing and redis.call('EXISTS', prefix .. ':job:' .. existing) == 1 then return {0, existing} end
redis.call('SET', ik, jid, 'EX', tonumber(ARGV[5]))
local jk = prefix .. ':job:' .. jid
local n = tonumber(ARGV[8])
for i = 0, n - 1 do redis.call('HSET', jk, ARGV[9 + 2 * i], ARGV[10 + 2 * i]) end
local now = redis.call('HGET', jk, 'created_at')
redis.call('HSET', jk, 'state', 'queued', 'provider', ARGV[6], 'lane', ARGV[7], 'batch_id', bid,
           'attempts', 0, 'h', 'queued\t' .. now .. '\n', 'updated_at', now)
redis.call('RPUSH', prefix .. ':pending:' .. ARGV[6] .. ':' .. ARGV[7], jid)
redis.call('SADD', prefix .. ':providers', ARGV[6])
local bk = prefix .. ':batch:' .. bid
redis.call('HINCRBY', bk, 'total', 1)
redis.call('HINCRBY', bk, 'n_queued', 1)
redis.call('RPUSH', prefix .. ':batch:' .. bid .. ':jobs', jid)
return {1, jid}
"""

# ARGV: prefix, batch_id, now -- marks a batch fully enqueued; finalizes at once if all jobs are done.
_LUA_CLOSE = r"""
local prefix, bid = ARGV[1], ARGV[2]
local bk = prefix .. ':batch:' .. bid
redis.call('HSET', bk, 'closed', '1')
local total = tonumber(redis.call('HGET', bk, 'total') or '0')
local done = tonumber(redis.call('HGET', bk, 'done') or '0')
if done >= total and redis.call('HSETNX', bk, 'finalizing', ARGV[3]) == 1 then
  redis.call('RPUSH', prefix .. ':finalize', bid)
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Moved:
    ok: bool
    previous: str
    batch_finished: bool = False
    freed: str = ""  # provider whose slot this move released while it has queued jobs
    kicks: int = 0  # wake-ups this move claimed (bit 1: dispatch of `freed`, bit 2: collect)


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
        """The job as enqueued, parsed on first use (the receiver's path never needs it)."""
        return EditJob.model_validate_json(self.fields["spec"])

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

    def warm_up(self) -> None:
        """Load the scripts into Redis now (the first EVALSHA of each would otherwise miss and resend)."""
        for script in (self._transition, self._claim, self._create, self._close):
            script.sha = self.r.script_load(script.script)

    # -- creation -------------------------------------------------------------------------
    def create(self, job: EditJob, pipe: Any = None) -> Any:
        """Create a queued job unless its idempotency key exists. Returns [1, id] or [0, existing id]."""
        fields = {"spec": job.model_dump_json(exclude_none=True), "created_at": repr(job.created_at)}
        argv: list[Any] = [
            self.k.prefix, job.job_id, job.batch_id, job.idempotency_key, get_settings().job_ttl_s,
            job.route[0], job.priority.value, len(fields),
        ]
        for f, v in fields.items():
            argv += [f, v]
        return self._create(keys=[], args=argv, client=pipe or self.r)

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
    ) -> Moved:
        frm = list(frm)
        for f in frm:
            if to not in TRANSITIONS[f]:
                raise ValueError(f"illegal transition {f} -> {to}")
        flat: list[Any] = []
        for name, value in (fields or {}).items():
            flat += [name, value if isinstance(value, str) else json.dumps(value)]
        res = self._transition(
            keys=[],
            args=[
                self.k.prefix, job_id, ",".join(frm), to.value, repr(time.time()), repr(score),
                note.replace("\n", " ")[:500], get_settings().job_ttl_s, len(flat) // 2, *flat, self.kick_ms,
            ],
        )
        moved = Moved(bool(res[0]), res[1] or "", bool(res[2]), res[3] if len(res) > 3 else "",
                      int(res[4]) if len(res) > 4 else 0)
        if moved.kicks & 1 and self.on_slot_freed is not None:
            self.on_slot_freed(moved.freed)
        if moved.kicks & 2 and self.on_ready is not None:
            self.on_ready()
        return moved

    def claim(
        self, provider: str, want: int, cap: int, reserve: int, rpm: int, lease_s: float,
        reserve_hold_s: float | None = None,
    ) -> list[str]:
        """`reserve_hold_s` None: the interactive reserve is always held; else only while interactive
        jobs are queued or one was claimed in the last `reserve_hold_s` seconds."""
        hold_ms = -1 if reserve_hold_s is None or reserve_hold_s == float("inf") else int(reserve_hold_s * 1000)
        res = self._claim(
            keys=[], args=[self.k.prefix, provider, repr(time.time()), want, cap, reserve, rpm, lease_s, hold_ms]
        )
        return list(res)

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


def job_view(job_id: str, fields: dict[str, str] | None) -> JobView | None:
    """A job from its Redis hash (as read by HGETALL); None when there is no such job."""
    if not fields or "spec" not in fields:
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
