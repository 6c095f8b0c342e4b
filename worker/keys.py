"""Every Redis key editq uses, in one place: the layout is the table `LAYOUT`, written once.

Both layers derive their key names from it:

* Python: the methods and properties of `Keys` (each one fills its template; `tests/test_keys.py`
  checks that every template has exactly one and that they agree);
* Lua: `lua_preamble()` generates a table `K` with one entry per template, prepended to every
  script in `worker/lua/`. A template with parameters becomes a function (`K.job(job_id)`), one
  without becomes a string (`K.inflight`). The prefix is the script's `ARGV[1]`.

Nothing else spells a key: scripts and callers ask `Keys`/`K` for it. Cleanup and measuring code
scans a namespace with `Keys.all` / `Keys.match(name)` / `scan_keys`, and Celery's own keys for a
queue prefix with `broker_patterns`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from editq.schemas.settings import get_settings

# name -> template. `{prefix}` is the key prefix (EDITQ_KEY_PREFIX); every other field is a parameter.
LAYOUT: Mapping[str, str] = {
    # jobs and batches
    "job": "{prefix}:job:{job_id}",  # hash: the job (spec, state, history `h`, fields); compact once finished
    "batch": "{prefix}:batch:{batch_id}",  # hash: per-batch counters (total, done, n_<state>, closed, ...)
    "batch_jobs": "{prefix}:batch:{batch_id}:jobs",  # list: the batch's job ids, in enqueue order
    "batch_errors": "{prefix}:batch:{batch_id}:errors",  # list: lines rejected at enqueue
    "batch_cids": "{prefix}:batch:{batch_id}:cids",  # hash: custom_id -> job id (the first job with it)
    "batch_reruns": "{prefix}:batch:{batch_id}:reruns",  # list: the batches that re-ran items of this one
    "batch_failures": "{prefix}:batch:{batch_id}:failures",  # hash: failure reason (shortened) -> job count
    # hash: job id -> its manifest JSON, from its terminal move until the batch manifest is written (then deleted)
    "batch_manifests": "{prefix}:batch:{batch_id}:manifests",
    "idem": "{prefix}:idem:{key}",  # string: idempotency key -> job id
    "request": "{prefix}:req:{provider}:{request_id}",  # string: provider request id -> job id
    # the state machine's indexes (worker/state.py)
    "pending": "{prefix}:pending:{provider}:{lane}",  # list: queued jobs of one provider and lane without a tenant
    "pending_tenant": "{prefix}:pending:{provider}:{lane}:t:{tenant}",  # list: the same, of one tenant
    "fair": "{prefix}:fair:{provider}:{lane}",  # zset: tenants with queued jobs ('' = none), score = virtual time
    "providers": "{prefix}:providers",  # set: providers that ever had pending work
    "inflight": "{prefix}:inflight",  # zset: submitting/submitted jobs, score = lease or next poll
    "retry": "{prefix}:retry",  # zset: retry_wait jobs, score = due time
    "ready": "{prefix}:ready",  # list: ready jobs (collect drains it)
    "collecting": "{prefix}:collecting",  # zset: collecting jobs, score = lease deadline
    "finalize": "{prefix}:finalize:due",  # zset: batches to finalize, score = due (a claim leases it ahead)
    # global limits, per provider (the claim script)
    "slots": "{prefix}:slots:{provider}",  # zset: job ids holding a concurrency slot
    "rpm": "{prefix}:rpm:{provider}",  # zset: the requests-per-minute window
    "backoff": "{prefix}:backoff:{provider}",  # string with TTL: a 429's Retry-After, no claims meanwhile
    "backoff_poll": "{prefix}:backoff:{provider}:poll",  # string with TTL: Retry-After seen while polling
    "interactive_mark": "{prefix}:interactive:{provider}",  # string with TTL: an interactive job was claimed
    "circuit": "{prefix}:circuit:{provider}",  # string with TTL: the provider's circuit is open
    "circuit_fails": "{prefix}:circuit:{provider}:fails",  # counter: consecutive retryable failures
    # budgets (the claim script reserves, the move script settles; batch budgets live in the batch hash)
    "budget_wait": "{prefix}:budgetwait:{scope}",  # list: budget_wait jobs of one scope (batch:<id>, tenant:<t>)
    "budget_scopes": "{prefix}:budget:waiting",  # set: scopes that have jobs waiting for money
    "tenant_day": "{prefix}:tenant:{tenant}:{day}",  # hash: a tenant's committed/spent micro-USD on one UTC day
    "tenant_budgets": "{prefix}:budget:tenants",  # hash: tenant -> daily cap in micro-USD (editq budget --tenant)
    "budget_batches": "{prefix}:budget:batches",  # set: batches with a cap, until their manifest is written
    # wake-ups (worker/triggers.py) and the tick
    "kick_dispatch": "{prefix}:kick:dispatch:{provider}",  # flag: a dispatch task is queued or pumping
    "kick_collect": "{prefix}:kick:collect",  # flag: a collect task is queued or pumping
    "tick_lock": "{prefix}:lock:tick",  # lock: the worker that runs this tick
    # the sweep of a provider's own request history (worker/sweep.py)
    "sweep_due": "{prefix}:sweep:{provider}:due",  # flag with TTL = the sweep interval: swept (or kicked) lately
    "sweep_lock": "{prefix}:lock:sweep:{provider}",  # lease (a token, with a TTL): the one sweep running now
    "sweep_mark": "{prefix}:sweep:{provider}",  # hash: the watermark, the window the last sweep read and what it found
    "worker": "{prefix}:workers:{host}:{pid}",  # string with TTL: a live worker process
    "alive": "{prefix}:alive",  # zset: worker host:pid -> its last tick (`editq status --watch` counts them;
    # the tick recovers at once what a worker whose last tick is too old had claimed)
    # metrics (worker/metrics.py reads them at scrape time; the scripts keep them)
    "stats_jobs": "{prefix}:stats:jobs",  # hash "state|provider|lane" -> jobs (terminal states: ever finished)
    "stats_latency": "{prefix}:stats:latency",  # hash provider -> moving average of provider latency (s)
    "latency_median": "{prefix}:latency:median",  # hash provider -> running median of provider latency (s)
    "stats_cost": "{prefix}:stats:cost",  # hash provider -> USD of succeeded jobs (a counter)
    "stats_found": "{prefix}:stats:found",  # hash "provider|via" -> requests finished, by the path that found it
    # replication (worker/redis_client.py replicated): a write WAIT can follow on the same connection
    "repl_mark": "{prefix}:repl:mark",  # counter
    # webhooks
    "webhook_seen": "{prefix}:whseen:{provider}:{delivery_id}",  # string with TTL: delivery dedupe
    # provider adapters
    # OpenAI Batch, per provider batch (worker/batch_ingest.py)
    "oaib_meta": "{prefix}:oaib:{batch_id}:meta",  # hash: line count, created at
    "oaib_status": "{prefix}:oaib:{batch_id}:status",  # the shared GET /batches/{id} answer (short TTL)
    "oaib_results": "{prefix}:oaib:{batch_id}:results",  # hash custom_id -> the job's record
    "oaib_lock": "{prefix}:oaib:{batch_id}:lock",  # the ingest lock (a token with a lease)
    "oaib_ingested": "{prefix}:oaib:{batch_id}:ingested",  # set once both files were read whole
    "oaib_cancelled": "{prefix}:oaib:{batch_id}:cancelled",  # set of custom_ids cancelled by editq
    "oaib_open": "{prefix}:oaib:open",  # zset: provider batches created and not yet read back, score = created at
    # benchmarks (bench/naive.py, the design editq is compared with)
    "naive_ready": "{prefix}:naive:ready",  # counter: naive workers that are up
    "naive_done": "{prefix}:naive:done:{batch}",  # list: finished naive jobs of a run
    # the whole namespace (a pattern, for SCAN)
    "all": "{prefix}:*",
}

_LUA_KEYWORDS = frozenset({
    "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if", "in", "local",
    "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
})
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _fields(template: str) -> list[str]:
    """The parameters of a template, in order (`prefix` excluded)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None and f != "prefix"]


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True)
class Keys:
    prefix: str

    def _fill(self, name: str, **params: object) -> str:
        return LAYOUT[name].format(prefix=self.prefix, **params)

    def match(self, name: str) -> str:
        """A SCAN/KEYS pattern for every key of template `name` (each parameter matches anything;
        glob characters in the prefix are escaped). E.g. `match("job")` -> `editq:job:*`."""
        template = LAYOUT[name]
        return template.format(prefix=_glob_escape(self.prefix), **dict.fromkeys(_fields(template), "*"))

    # jobs and batches
    def job(self, job_id: str) -> str:
        return self._fill("job", job_id=job_id)

    def batch(self, batch_id: str) -> str:
        return self._fill("batch", batch_id=batch_id)

    def batch_jobs(self, batch_id: str) -> str:
        return self._fill("batch_jobs", batch_id=batch_id)

    def batch_errors(self, batch_id: str) -> str:
        return self._fill("batch_errors", batch_id=batch_id)

    def batch_cids(self, batch_id: str) -> str:
        return self._fill("batch_cids", batch_id=batch_id)

    def batch_reruns(self, batch_id: str) -> str:
        return self._fill("batch_reruns", batch_id=batch_id)

    def batch_failures(self, batch_id: str) -> str:
        return self._fill("batch_failures", batch_id=batch_id)

    def batch_manifests(self, batch_id: str) -> str:
        """The manifests of a batch's finished jobs, staged for its batch manifest (the jobs keep a compact record)."""
        return self._fill("batch_manifests", batch_id=batch_id)

    def idem(self, key: str) -> str:
        return self._fill("idem", key=key)

    def request(self, provider: str, request_id: str) -> str:
        return self._fill("request", provider=provider, request_id=request_id)

    # indexes
    def pending(self, provider: str, lane: str) -> str:
        return self._fill("pending", provider=provider, lane=lane)

    def pending_tenant(self, provider: str, lane: str, tenant: str) -> str:
        """The queued jobs of one tenant on one provider and lane (jobs without a tenant: `pending`)."""
        return self._fill("pending_tenant", provider=provider, lane=lane, tenant=tenant)

    def fair(self, provider: str, lane: str) -> str:
        """Zset of the tenants with queued jobs on one provider and lane ('' = the jobs without a tenant),
        score = the virtual time of each one's next claim (worker/lua/fair.lua: the lowest goes next)."""
        return self._fill("fair", provider=provider, lane=lane)

    @property
    def providers(self) -> str:
        """Set of providers that have ever had pending work (the tick pumps each)."""
        return self._fill("providers")

    @property
    def inflight(self) -> str:
        return self._fill("inflight")

    @property
    def retry(self) -> str:
        return self._fill("retry")

    @property
    def ready(self) -> str:
        return self._fill("ready")

    @property
    def collecting(self) -> str:
        return self._fill("collecting")

    @property
    def finalize(self) -> str:
        return self._fill("finalize")

    # limits
    def slots(self, provider: str) -> str:
        return self._fill("slots", provider=provider)

    def rpm(self, provider: str) -> str:
        return self._fill("rpm", provider=provider)

    def backoff(self, provider: str) -> str:
        return self._fill("backoff", provider=provider)

    def backoff_poll(self, provider: str) -> str:
        return self._fill("backoff_poll", provider=provider)

    def interactive_mark(self, provider: str) -> str:
        return self._fill("interactive_mark", provider=provider)

    def circuit(self, provider: str) -> str:
        return self._fill("circuit", provider=provider)

    def circuit_fails(self, provider: str) -> str:
        return self._fill("circuit_fails", provider=provider)

    # budgets
    def budget_wait(self, scope: str) -> str:
        return self._fill("budget_wait", scope=scope)

    @property
    def budget_scopes(self) -> str:
        return self._fill("budget_scopes")

    def tenant_day(self, tenant: str, day: int | str) -> str:
        return self._fill("tenant_day", tenant=tenant, day=day)

    @property
    def tenant_budgets(self) -> str:
        return self._fill("tenant_budgets")

    @property
    def budget_batches(self) -> str:
        return self._fill("budget_batches")

    # wake-ups and the tick
    def kick_dispatch(self, provider: str) -> str:
        return self._fill("kick_dispatch", provider=provider)

    @property
    def kick_collect(self) -> str:
        return self._fill("kick_collect")

    @property
    def tick_lock(self) -> str:
        return self._fill("tick_lock")

    def sweep_due(self, provider: str) -> str:
        return self._fill("sweep_due", provider=provider)

    def sweep_lock(self, provider: str) -> str:
        return self._fill("sweep_lock", provider=provider)

    def sweep_mark(self, provider: str) -> str:
        """Hash: the last sweep's window (`start`, `end`: its watermark), when it ran, pages read, found."""
        return self._fill("sweep_mark", provider=provider)

    def worker(self, host: str, pid: int | str) -> str:
        return self._fill("worker", host=host, pid=pid)

    @property
    def alive(self) -> str:
        return self._fill("alive")
    # metrics
    @property
    def stats_jobs(self) -> str:
        """Hash `state|provider|lane` -> jobs in that state, kept by the state machine's scripts."""
        return self._fill("stats_jobs")

    @property
    def stats_latency(self) -> str:
        return self._fill("stats_latency")

    @property
    def latency_median(self) -> str:
        """Hash provider -> a running median of its latency: when to poll a job whose webhook is late."""
        return self._fill("latency_median")

    @property
    def stats_cost(self) -> str:
        return self._fill("stats_cost")

    @property
    def stats_found(self) -> str:
        """Hash `provider|via` -> requests the provider finished, by how editq learned it (webhook, poll,
        sweep, submit); counted when the finish moved the job."""
        return self._fill("stats_found")

    @property
    def repl_mark(self) -> str:
        """A counter bumped right before a Redis WAIT, so the WAIT covers every earlier write."""
        return self._fill("repl_mark")

    # webhooks, adapters, benchmarks
    def webhook_seen(self, provider: str, delivery_id: str) -> str:
        return self._fill("webhook_seen", provider=provider, delivery_id=delivery_id)

    # OpenAI Batch (providers/openai_batch, through worker/batch_ingest.py): per provider batch
    def oaib_meta(self, batch_id: str) -> str:
        """Hash: how many lines the provider batch has (cancel counts against it), when it was created."""
        return self._fill("oaib_meta", batch_id=batch_id)

    def oaib_status(self, batch_id: str) -> str:
        """The last `GET /batches/{id}` answer, shared by every poller for status_ttl_s."""
        return self._fill("oaib_status", batch_id=batch_id)

    def oaib_results(self, batch_id: str) -> str:
        """Hash custom_id -> the job's record (staged output keys, usage, or the classified error)."""
        return self._fill("oaib_results", batch_id=batch_id)

    def oaib_lock(self, batch_id: str) -> str:
        """The ingest lock: one worker reads a batch's files at a time."""
        return self._fill("oaib_lock", batch_id=batch_id)

    def oaib_ingested(self, batch_id: str) -> str:
        """Set (to the batch's final status) once both files have been read whole."""
        return self._fill("oaib_ingested", batch_id=batch_id)

    def oaib_cancelled(self, batch_id: str) -> str:
        """Set of custom_ids cancelled by editq (the batch is cancelled when all are)."""
        return self._fill("oaib_cancelled", batch_id=batch_id)

    @property
    def oaib_open(self) -> str:
        """Zset of the provider batches in flight (created, files not yet read whole), by creation time."""
        return self._fill("oaib_open")

    @property
    def naive_ready(self) -> str:
        return self._fill("naive_ready")

    def naive_done(self, batch: str) -> str:
        return self._fill("naive_done", batch=batch)

    @property
    def all(self) -> str:
        """SCAN pattern of every key under this prefix (Celery's queues excluded: `broker_patterns`)."""
        return _glob_escape(self.prefix) + LAYOUT["all"].removeprefix("{prefix}")

    def scan(self, r: Any, count: int = 1000) -> Iterator[Any]:
        """Every key under this prefix."""
        return scan_keys(r, [self.all], count)


def broker_patterns(queue_prefix: str) -> tuple[str, ...]:
    """SCAN patterns of the keys Celery (kombu) keeps for the queues under `queue_prefix` (EDITQ_QUEUE_PREFIX):
    the queue lists themselves (`q`, `q.sync`, priority sub-queues) and the exchange bindings. Kombu names
    them; they are listed here so cleanup and measuring code does not spell them."""
    q = _glob_escape(queue_prefix)
    return (f"{q}*", f"_kombu.binding.{q}*", f"_kombu.binding_permanent.{q}*")


def namespace_patterns(key_prefix: str, queue_prefix: str) -> tuple[str, ...]:
    """Everything one deployment (or one isolated local stack) owns in Redis: its keys and its queues."""
    return (Keys(key_prefix).all, *broker_patterns(queue_prefix))


def scan_keys(r: Any, patterns: Iterable[str], count: int = 1000) -> Iterator[Any]:
    """Every key matching any of `patterns`, each once (patterns may overlap: with equal key and queue
    prefixes `q*` also matches `q:*`)."""
    seen: set[Any] = set()
    for pattern in patterns:
        for key in r.scan_iter(match=pattern, count=count):
            if key not in seen:
                seen.add(key)
                yield key


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def _lua_expr(template: str) -> str:
    """The Lua expression that builds `template`, with `P` as the prefix and each parameter a local."""
    parts: list[str] = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        if literal:
            parts.append(_lua_string(literal))
        if field is not None:
            parts.append("P" if field == "prefix" else field)
    return " .. ".join(parts)


def lua_preamble() -> str:
    """Lua that defines `K`, the key layout for the prefix in ARGV[1] (prepended to every script)."""
    lines = ["-- generated by worker/keys.py from LAYOUT: every key name the scripts use", "local P = ARGV[1]",
             "local K = {}"]
    for name, template in LAYOUT.items():
        if name == "all":
            continue  # a pattern, not a key
        params = _fields(template)
        for p in params:
            if p in _LUA_KEYWORDS or p == "P" or p == "K" or not p.isidentifier():
                raise ValueError(f"key template {name!r}: parameter {p!r} is not usable in Lua")
        if params:
            lines.append(f"K.{name} = function({', '.join(params)}) return {_lua_expr(template)} end")
        else:
            lines.append(f"K.{name} = {_lua_expr(template)}")
    return "\n".join(lines) + "\n"


def keys() -> Keys:
    return Keys(get_settings().key_prefix)
