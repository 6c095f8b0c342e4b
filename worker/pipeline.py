"""The steps of a job's life: dispatch (submit), complete (webhook or poll), collect, finalize, tick.

Every step is short, idempotent and driven by the state machine in `worker.state`; no step waits
for a provider to think. Long waits live in Redis (retry and inflight sorted sets) and the tick
moves them along, so nothing depends on Celery countdowns or a task staying alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from typing import Any

import structlog

import editq.worker.budgets  # noqa: F401  (registers the budgets' metrics reader)
from editq import providers
from editq.providers.pricing import to_micro
from editq.providers.protocol import ProviderProtocol
from editq.providers.types import InputUrls, Outcome, ProviderRequest, Result, Submitted
from editq.schemas.manifest import ErrorInfo, OutputRecord, Usage
from editq.schemas.settings import Settings, get_settings
from editq.worker import aio, events, policy, startup
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.manifest import build, reservation, spent_cost, write_batch_manifest, write_job_manifest_async
from editq.worker.netguard import UnsafeURL
from editq.worker.outcomes import failure_label
from editq.worker.provider_client import client_for, on_wire
from editq.worker.redis_client import replicated
from editq.worker.roundtrips import RoundTrips
from editq.worker.state import MICRO, JobStore, JobView, State
from editq.worker.storage import Storage, get_storage
from editq.worker.sweep import Sweeper, sweeps
from editq.worker.triggers import COALESCE_MS, Kicker
from editq.worker.webhook_auth import delivery_url

log = structlog.get_logger("editq.pipeline")

POLL_TASK_LEASE_S = 10.0  # a job handed to a poll task is due again this long after, should the task be lost
LATENCY_READ_S = 1.0  # a provider's shared latency median is read again after this long (see _latency_median)
STREAM_S = 2.0  # one dispatch or collect call keeps taking work this long, then returns to its pump
# A dispatch call that refilled slots and then found none free keeps looking this long (every LINGER_POLL_S)
# before it returns: at a wave boundary slots free every few ms, and a pump that ended there was started
# again by the next freed slot's kick through the broker (50-350 ms, each time) while freed slots waited.
LINGER_S = 0.3
LINGER_POLL_S = 0.02


def _now() -> float:
    return time.time()


_WORKER_IDS: dict[int, str] = {}


def worker_id() -> str:
    """This process, as its heartbeat names it (`host:pid:nonce`); recorded on every job it claims. The nonce
    tells apart two lives of one pid (a container restarted in the same pod keeps its hostname and often
    its pid): the new life's heartbeat must not keep the dead one's claims from being recovered."""
    pid = os.getpid()
    wid = _WORKER_IDS.get(pid)
    if wid is None:
        wid = _WORKER_IDS[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(3)}"
    return wid


Steps = tuple[int, list[Coroutine[Any, Any, None]]]


async def _windowed(
    size: Callable[[], int], fill: Callable[[int], Steps] | None, what: str,
    linger_s: float = 0.0, afill: Callable[[int], Awaitable[Steps]] | None = None,
) -> int:
    """Keep up to size() steps in flight for up to STREAM_S: whenever an eighth of the window is free,
    fill(room) claims up to `room` jobs and returns (how many it claimed, their steps); `fill` runs on a
    thread, `afill` (instead) on the loop. Returns the number claimed once nothing is left running and
    nothing was claimed for `linger_s` (checked every LINGER_POLL_S; it lingers only after a claim of its
    own). A step that raises leaves its job in its state; the job's lease hands it back."""
    total = 0
    running = aio.Window()
    deadline = time.monotonic() + STREAM_S
    last_claim = -math.inf
    while True:
        window = size()
        room = window - running.running
        if room >= max(1, window // 8) and time.monotonic() < deadline:
            if afill is not None:
                claimed, steps = await afill(room)
            else:
                # on a thread: the claim's round trips (a script, the jobs, their records) took 5-50 ms on a
                # loaded Redis, and the answers of the requests in flight waited behind them
                assert fill is not None
                claimed, steps = await asyncio.to_thread(fill, room)
            total += claimed
            if claimed:
                last_claim = time.monotonic()
            for step in steps:
                running.start(step)
        if not running.running:
            now = time.monotonic()
            if now - last_claim < linger_s and now < deadline:
                await asyncio.sleep(LINGER_POLL_S)
                continue
            return total
        for fut in await running.finished():
            if fut.exception() is not None:
                log.error(f"{what} failed", exc_info=fut.exception())


class Pipeline:
    def __init__(
        self,
        store: JobStore | None = None,
        storage: Storage | None = None,
        settings: Settings | None = None,
        kick: Kicker | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        startup.register_secrets(self.settings)  # every key this process knows is redacted from its logs
        self.store = store or JobStore()
        self.storage = storage or get_storage()
        self.kick = kick or Kicker()
        self.r = self.store.r
        self.k = self.store.k
        self.trips = RoundTrips(self.r)  # per-job writes of the loop's tasks, one round trip per iteration
        # a released slot with work waiting starts the next submit now, not at the next tick
        # (the move script sets the coalescing flag itself, so a burst of moves sends one task)
        self.store.kick_ms = COALESCE_MS
        self.store.on_slot_freed = lambda provider: self.kick.send_dispatch(
            provider, providers.spec_of(provider).synchronous)
        self.store.on_ready = self.kick.send_collect
        self._latency: dict[str, tuple[float, float | None]] = {}  # provider -> (read at, median latency s)
        # a redis.asyncio client on the caller's loop (worker/redis_client.py `loop_redis`), set by the receiver:
        # `complete` moves a job over it instead of on a thread
        self.aredis: Any = None

    # ================================================================ dispatch (submit)
    def limits(self, adapter: ProviderProtocol) -> tuple[int, int, int, float]:
        cap = max(1, adapter.settings.concurrency)
        reserve = int(cap * self.settings.interactive_reserve)
        sync_lease = adapter.settings.timeout_s + self.settings.sync_lease_margin_s
        lease = sync_lease if providers.spec_of(adapter.name).synchronous else self.settings.submit_lease_s
        return cap, reserve, adapter.settings.rpm, lease

    async def dispatch(self, provider: str) -> int:
        """Claim queued jobs within the global limits and submit them concurrently.

        One request per job (most providers): a window of `submit_batch` submits stays in flight, and
        each answer makes room for the next claim, for up to STREAM_S. Rounds that waited for
        the slowest of 64 answers before claiming again refilled freed provider slots at a fraction of
        the rate they freed up. Synchronous providers and batch protocols keep one round per call."""
        adapter = providers.protocol_of(provider)
        spec = providers.spec_of(provider)
        sync_want = max(1, min(self.limits(adapter)[0], 8))
        size = adapter.claim_size()
        want = size if size is not None else (sync_want if spec.synchronous else self.settings.submit_batch)
        if want <= 0:  # the protocol takes no more now (OpenAI Batch: max_open_batches in flight)
            return 0
        if spec.synchronous or spec.batches:
            claimed, items, failing = self._claim(adapter, want)
            await asyncio.gather(*failing)
            if not spec.batches:
                await asyncio.gather(*(self._submit_one(adapter, v, r) for v, r in items))
            else:  # the protocol groups jobs into one provider request (OpenAI Batch)
                on_wire.set(lambda: self._mark_sent([v for v, _ in items]))
                results = await adapter.submit_many(client_for(provider), [(v.job, r) for v, r in items])
                for (view, _), res in zip(items, results, strict=True):
                    await self._record_submit(adapter, view, res, confirm=False)
                if items:
                    replicated(self.r, self.k, "request ids")
            if claimed >= want:
                self.kick.dispatch(provider, spec.synchronous)
            return claimed

        def fill(room: int) -> tuple[int, list[Coroutine[Any, Any, None]]]:
            claimed, items, failing = self._claim(adapter, room)
            if claimed >= room:
                self.kick.dispatch(provider, spec.synchronous)  # other workers may help
            # one request per job: each answer is recorded the moment it arrives (shortest crash window)
            return claimed, [self._submit_one(adapter, v, r) for v, r in items] + failing

        return await _windowed(lambda: want, fill, f"submit to {provider}", linger_s=LINGER_S)

    def dispatchable(self, provider: str) -> bool:
        """Jobs are queued for this provider and one of its slots is free: a dispatch could claim now
        (unless a backoff, the rpm, the interactive reserve or a budget holds them; the tick retries those)."""
        cap = max(1, providers.settings_of(provider).concurrency)
        return self.store.has_queued(provider) and self.r.zcard(self.k.slots(provider)) < cap

    def _claim(
        self, adapter: ProviderProtocol, want: int,
    ) -> tuple[int, list[tuple[JobView, ProviderRequest]], list[Coroutine[Any, Any, None]]]:
        """Claim up to `want` jobs and record each one's attempt as `sending` before any request leaves. Also
        returns the steps that fail the jobs over budget whose batch chose `--on-budget fail`."""
        provider = adapter.name
        cap, reserve, rpm, lease = self.limits(adapter)
        ids, over_budget = self.store.claim_budgeted(provider, want, cap, reserve, rpm, lease,
                                                     self.settings.interactive_reserve_hold_s, owner=worker_id())
        failing = [self._fail_over_budget(over_budget)] if over_budget else []
        if not ids:
            return 0, [], failing
        views = [v for v in self.store.get_many(ids) if v is not None]
        items = []
        circuit_open = self._circuit_open(provider)
        sending = self.r.pipeline(transaction=False)  # one round trip for the round's "sending" records
        for view in views:
            if circuit_open and self._reroute(view, State.submitting, "circuit open", keep=False):
                continue
            req = adapter.build_request(view.job, self.input_urls(view), self.webhook_url(adapter, view))
            sending.hset(self.k.job(view.job_id), f"req.{view.attempts}", self._req_entry(view, "sending"))
            items.append((view, req))
        if items:
            sending.execute()
            replicated(self.r, self.k, "claim")  # a failover must not forget a claim whose request is leaving
        return len(ids), items, failing

    def _mark_sent(self, views: list[JobView]) -> None:
        """A connection to the provider is open for these jobs' request: from now on it may reach the
        provider. Written before the first byte of the request leaves; a worker lost before this point
        never sent it (`_recover_submitting` records such an attempt `not_sent`, not `uncertain`)."""
        pipe = self.r.pipeline(transaction=False)
        for view in views:
            pipe.hset(self.k.job(view.job_id), f"req.{view.attempts}", self._req_entry(view, "sent"))
        pipe.execute()

    async def _mark_sent_shared(self, view: JobView) -> None:
        """`_mark_sent` for one job's submit, in the round trip it shares with the loop's other tasks
        (worker/roundtrips.py); the request waits for it before it writes a byte."""
        key, field, entry = self.k.job(view.job_id), f"req.{view.attempts}", self._req_entry(view, "sent")
        (res,) = await self.trips.send(lambda pipe: pipe.hset(key, field, entry))
        if isinstance(res, Exception):
            raise res

    async def _submit_one(self, adapter: ProviderProtocol, view: JobView, req: ProviderRequest) -> None:
        wire: list[bool] = []

        def mark() -> Awaitable[None]:
            wire.append(True)
            return self._mark_sent_shared(view)

        on_wire.set(mark)  # this task's own context: one job's submit
        try:
            try:
                res: Submitted | ProviderError = await adapter.submit(client_for(adapter.name), view.job, req)
            except ProviderError as exc:
                res = exc
            await self._record_submit(adapter, view, res)
        except Exception:
            # Anything else (a defect, Redis gone for longer than its retries). A request that never went on
            # the wire, or a synchronous provider's (its answer came on this connection and is gone): the job
            # is made due now and the tick recovers it as for a lost worker, instead of after its lease (a
            # synchronous provider's: timeout + 60 s). A queue provider's request that may have been accepted
            # keeps its lease: its webhook (or the sweep) can still re-attach it before the lease runs out and
            # the attempt is recorded `uncertain` and sent again.
            due_now = not wire or providers.spec_of(adapter.name).synchronous
            log.exception("submit step failed", job_id=view.job_id, provider=adapter.name,
                          recovered="by the next tick" if due_now else "when its lease runs out")
            if due_now:
                with contextlib.suppress(Exception):
                    self.store.reschedule(self.k.inflight, view.job_id, _now())

    async def _record_submit(self, adapter: ProviderProtocol, view: JobView, res: Submitted | ProviderError,
                             confirm: bool = True) -> None:
        if isinstance(res, ProviderError):
            events.submit_failed(view, res.info(), res.maybe_billed)
            self._record_failure(adapter.name, res)
            await self.retry_or_fail(view, res, State.submitting, sent=True)
        else:
            await self.submitted(adapter, view, res, confirm=confirm)

    def _latency_median(self, provider: str) -> float | None:
        """The provider's recent median latency (when to poll a job no webhook answered), shared through Redis
        (worker/events.py keeps it) and read at most once per LATENCY_READ_S per provider: it moves by a few
        percent per finished job, and reading it cost a round trip per submit."""
        now = time.monotonic()
        hit = self._latency.get(provider)
        if hit is None or now - hit[0] > LATENCY_READ_S:
            raw = self.r.hget(self.k.latency_median, provider)
            hit = self._latency[provider] = (now, float(raw) if raw else None)
        return hit[1]

    def input_urls(self, view: JobView) -> InputUrls:
        job = view.job
        mask = self.storage.presign(job.mask_input.s3_key) if job.mask_input else None
        return InputUrls(images=[self.storage.presign(i.s3_key) for i in job.inputs], mask=mask)

    def webhooks_on(self, adapter: ProviderProtocol) -> bool:
        """Whether this provider's jobs are submitted with a webhook URL."""
        s = self.settings
        return bool(s.webhooks_enabled and s.webhook_base_url and providers.spec_of(adapter.name).webhooks
                    and adapter.settings.webhooks and s.webhook_secret is not None
                    and s.webhook_secret.get_secret_value())

    def webhook_url(self, adapter: ProviderProtocol, view: JobView) -> str | None:
        """The job's webhook URL, bound to it by its token (worker/webhook_auth.py); None = poll only. Without
        EDITQ_WEBHOOK_SECRET (the CLI refuses to start a worker so configured) the job is polled."""
        if not self.webhooks_on(adapter):
            return None
        s = self.settings
        assert s.webhook_base_url is not None
        return delivery_url(s.webhook_base_url, adapter.name, view.job_id, s)

    def _req_entry(self, view: JobView, status: str, **extra: Any) -> str:
        entry = {"attempt": view.attempts, "provider": view.provider, "status": status, "at": _now(), **extra}
        return json.dumps({k: v for k, v in entry.items() if v is not None})

    async def submitted(self, adapter: ProviderProtocol, view: JobView, sub: Submitted, confirm: bool = True) -> None:
        """Record the provider's request id before anything else happens to the job (and, with replicas, on a
        replica: `confirm`; a caller recording many at once confirms once after the last)."""
        if os.environ.get("EDITQ_FAULT_CRASH_BEFORE_RECORD") == "1":  # fault injection: answer lost in a crash
            os.kill(os.getpid(), signal.SIGKILL)
        provider = adapter.name
        s = self.settings
        delay = policy.poll_delay(0, base_s=s.poll_interval_s, max_s=s.poll_max_s,
                                  webhooks=self.webhooks_on(adapter), webhook_s=s.poll_interval_webhook_s,
                                  cap_s=adapter.poll_cap_s(), latency_s=self._latency_median(provider),
                                  quiet_min_s=s.poll_quiet_min_s)
        fields = {
            "request_id": sub.request_id,
            "handle": json.dumps(sub.handle),
            "submitted_at": repr(_now()),
            "polls": "0",
            "poll_errors": "0",
            f"req.{view.attempts}": self._req_entry(view, "accepted", request_id=sub.request_id),
        }
        def first(pipe: Any) -> None:  # the same round trip as the move, ahead of it
            pipe.set(self.k.request(provider, sub.request_id), view.job_id, ex=s.job_ttl_s)  # the id, found by
            pipe.delete(self.k.circuit_fails(provider))  # webhooks; the success resets the circuit breaker

        moved = await self.store.move_shared(self.trips, view.job_id, [State.submitting], State.submitted,
                                             score=_now() + delay, fields=fields, before=first)
        if confirm:
            replicated(self.r, self.k, "request id")
        events.submitted(view, sub.request_id)
        if not moved.ok:
            # A fast webhook may have completed the job first (it is `ready` now): keep the id and the
            # request log entry, nothing else.
            self.store.set_fields(view.job_id, request_id=sub.request_id, handle=json.dumps(sub.handle),
                                  **{f"req.{view.attempts}": fields[f"req.{view.attempts}"]})
            if moved.previous == State.cancelled:
                await adapter.cancel(client_for(provider), sub.request_id, sub.handle)
        if os.environ.get("EDITQ_FAULT_CRASH_AFTER_SUBMIT") == "1":  # fault injection for crash tests
            os.kill(os.getpid(), signal.SIGKILL)
        if sub.outcome is not None and moved.ok:
            await self.complete(view.job_id, sub.outcome, frm=(State.submitted,), provider=provider, via="submit")

    # ================================================================ completion (webhook or poll)
    async def complete(
        self, job_id: str, outcome: Outcome, *, frm: tuple[State, ...] = (State.submitted,),
        request_id: str | None = None, provider: str = "", via: str = "",
    ) -> bool:
        """Move a job on from what the provider said. Safe to call twice: the second call is a no-op.
        `provider` and `via` (webhook, poll, sweep, submit): counted in `Keys.stats_found` when the job moved."""
        if not outcome.done:
            return False
        if outcome.result is not None:
            fields: dict[str, Any] = {
                "result": json.dumps(_result_json(outcome.result)),
                "provider_done_at": repr(_now()),
            }
            if request_id:
                fields["request_id"] = request_id
            found = f"{provider}|{via}" if provider and via else ""  # counted by the move when it moves
            if self.aredis is not None:  # the receiver: its loop waits on Redis, no thread hop per move
                return (await self.store.amove(self.aredis, job_id, frm, State.ready, fields=fields,
                                               found=found)).ok

            def to_ready() -> bool:
                # the move kicks collect
                return self.store.move(job_id, frm, State.ready, fields=fields, found=found).ok

            # on a thread, so the loop (the receiver's: hundreds of deliveries at once) serves other work
            # while the round trips wait
            return await asyncio.to_thread(to_ready)
        view = self.store.get(job_id)
        if view is None or view.state not in frm:
            return False
        assert outcome.error is not None
        self.found(provider, via)
        await self.retry_or_fail(view, outcome.error, view.state, sent=True)
        return True

    def found(self, provider: str, via: str) -> None:
        """A provider's finish moved a job: count it by the path that found it (shared by every process)."""
        if provider and via:
            try:
                self.r.hincrby(self.k.stats_found, f"{provider}|{via}", 1)
            except Exception:  # a metric only
                log.warning("finish not counted", provider=provider, via=via, exc_info=True)

    async def retry_or_fail(self, view: JobView, err: ProviderError, frm: State, *, sent: bool) -> None:
        """Apply the policy's decision (worker/policy.py) to a failed attempt."""
        s = self.settings
        if err.retry_after_s:
            ms = int(min(err.retry_after_s, s.retry_max_s) * 1000)
            self.r.set(self.k.backoff(view.provider), "1", px=max(ms, 1), nx=False)
        if sent:
            status = "uncertain" if err.maybe_billed else "failed"
            self.store.set_fields(
                view.job_id, **{f"req.{view.attempts}": self._req_entry(view, status, request_id=view.request_id,
                                                                         error=err.reason[:300])}
            )
        info = err.info(view.attempts)
        # waits for a rate limit do not use up attempts; a failure streak is timed from its first failure
        free = int(view.fields.get("free_attempts", "0") or 0) + (0 if policy.counts_attempt(err) else 1)
        failing_since = float(view.fields.get("failing_since") or 0) or _now()
        keep = err.maybe_billed  # an attempt that may have been billed keeps its money committed
        decision = policy.decide(err, attempt=view.attempts - free, max_attempts=s.max_attempts,
                                 route=view.job.route, provider=view.provider, base_s=s.retry_base_s,
                                 cap_s=s.retry_max_s, waited_s=_now() - failing_since, give_up_s=s.retry_give_up_s)
        if isinstance(decision, policy.Retry):
            events.retrying(view, info, decision.delay_s)
            self.store.move(
                view.job_id, [frm], State.retry_wait, score=_now() + decision.delay_s, note=err.reason[:200],
                fields={"error": info.model_dump_json(), "request_id": "", "handle": "",
                        "free_attempts": str(free), "failing_since": repr(failing_since), **settle_field(keep)},
            )
            return
        if isinstance(decision, policy.Reroute) and self._reroute(view, frm, err.reason, events.error_class(info),
                                                                  keep=keep):
            return
        await self.finish_failed(view, frm, info, keep=keep)

    async def finish_failed(self, view: JobView, frm: State, info: ErrorInfo, *, keep: bool = True) -> None:
        """Fail the job. `keep`: the attempt in flight (if any) may have been billed, so its reservation stays
        committed as spent; False releases it (the provider says it did not run, or nothing was sent)."""
        events.failed(view, info)
        kept = reservation(view) if keep else 0
        manifest = build(view, State.failed.value, [], None, info, cost=spent_cost(view, kept))
        await write_job_manifest_async(self.storage, aio.http_client(), manifest)
        moved = self.store.move(
            view.job_id, [frm], State.failed, note=info.reason[:200],
            fields={"error": info.model_dump_json(), "manifest": manifest.model_dump_json(), **settle_field(keep)},
        )
        if moved.ok:  # the batch's failures by reason, for `editq status --watch`
            self.r.hincrby(self.k.batch_failures(view.job.batch_id), failure_label(info.reason), 1)
        if moved.batch_finished:
            self.drain_finalize()

    async def _fail_over_budget(self, job_ids: list[str]) -> None:
        """Jobs that did not fit their budget, in a batch that chose `--on-budget fail`."""
        for view in self.store.get_many(job_ids):
            if view is None or view.state is not State.budget_wait:
                continue
            why = view.fields.get("budget_reason") or "over budget"
            info = ErrorInfo(kind="terminal", reason=f"budget_exceeded: {why}"[:2000], provider_code="budget_exceeded",
                             attempt=view.attempts)
            await self.finish_failed(view, State.budget_wait, info, keep=False)

    def _reroute(self, view: JobView, frm: State, why: str, error_class: str = "circuit_open", *,
                 keep: bool) -> bool:
        """Send the job to the next provider of its route, if it has one (`keep`: as in finish_failed)."""
        nxt = policy.next_provider(view.job.route, view.provider)
        if nxt is None:
            return False
        events.rerouted(view, nxt, error_class, why)
        moved = self.store.move(
            view.job_id, [frm], State.queued, note=f"fallback to {nxt}: {why}"[:200],
            fields={"provider": nxt, "request_id": "", "handle": "", **settle_field(keep)},
        )
        if moved.ok:
            self.kick.dispatch(nxt, providers.spec_of(nxt).synchronous)
        return moved.ok

    # circuit breaker: consecutive non-terminal failures per provider, shared through Redis
    def _record_failure(self, provider: str, err: ProviderError) -> None:
        if not policy.counts_for_circuit(err):
            return
        key = self.k.circuit_fails(provider)
        if self.r.incr(key) >= policy.CIRCUIT_FAILURES:
            self.r.set(self.k.circuit(provider), "open", ex=policy.CIRCUIT_OPEN_S)
        self.r.expire(key, policy.CIRCUIT_OPEN_S)

    def _circuit_open(self, provider: str) -> bool:
        return bool(self.r.exists(self.k.circuit(provider)))

    # ================================================================ polling (the safety net)
    async def poll(self, provider: str, job_ids: list[str], via: str = "poll") -> int:
        """Ask the provider about these jobs' requests. `via`: who handed them over (the tick's safety net,
        `poll`; the sweep, which saw them finished in the provider's history, `sweep`)."""
        adapter = providers.protocol_of(provider)
        client = client_for(provider)
        views = [v for v in self.store.get_many(job_ids) if v is not None and v.state is State.submitted]
        items = [(v.request_id or "", v.json_field("handle") or {}) for v in views]
        try:
            outcomes = await adapter.poll_many(client, items)
        except Exception:  # a protocol's own group call failed: each request on its own, so one bad answer
            log.warning("poll group failed; polling one by one", provider=provider, exc_info=True)
            outcomes = [await adapter.poll_guarded(client, rid, handle) for rid, handle in items]
        latency = self.r.hget(self.k.latency_median, provider) if views else None
        for view, outcome in zip(views, outcomes, strict=True):
            try:
                await self._after_poll(adapter, view, outcome, float(latency) if latency else None, via)
            except Exception:  # this job only; its inflight entry (rescheduled by the tick) brings it back
                log.exception("after poll failed", provider=provider, job_id=view.job_id)
        return len(views)

    async def _after_poll(self, adapter: ProviderProtocol, view: JobView, outcome: Outcome | ProviderError,
                          latency_s: float | None = None, via: str = "poll") -> None:
        handle = view.json_field("handle") or {}
        polls = int(view.fields.get("polls", "0")) + 1
        retry_after = None
        errors = 0  # polls in a row the provider did not answer
        if isinstance(outcome, ProviderError):
            retry_after = outcome.retry_after_s
            if retry_after:  # the provider asked every poller to wait: the tick holds this provider's polls
                self.r.set(self.k.backoff_poll(adapter.name), "1",
                           px=int(min(retry_after, self.settings.retry_max_s) * 1000))
            errors = int(view.fields.get("poll_errors", "0") or 0) + 1
            polls -= 1  # it learned nothing: not a step along the poll schedule
            outcome = Outcome.running(error=outcome.reason)
        if outcome.done:
            events.provider_done(view, outcome.result is not None, via)
            await self.complete(view.job_id, outcome, provider=adapter.name, via=via)
            return
        submitted_at = float(view.fields.get("submitted_at", "0") or 0)
        limit = adapter.deadline_s() or self.settings.provider_deadline_s
        if submitted_at and _now() - submitted_at > limit:
            await adapter.cancel(client_for(adapter.name), view.request_id or "", handle)
            late = ProviderError(ErrorKind.retryable, f"{adapter.name}: no result within {limit:.0f}s")
            await self.retry_or_fail(view, late, State.submitted, sent=False)
            return
        s = self.settings
        delay = policy.poll_delay(polls, base_s=s.poll_interval_s, max_s=s.poll_max_s,
                                  webhooks=self.webhooks_on(adapter), webhook_s=s.poll_interval_webhook_s,
                                  cap_s=adapter.poll_cap_s(), retry_after_s=retry_after, latency_s=latency_s,
                                  quiet_min_s=s.poll_quiet_min_s)
        if errors:
            delay = policy.poll_error_delay(errors, scheduled_s=delay, retry_after_s=retry_after)
        self.store.set_fields(view.job_id, polls=str(polls), poll_errors=str(errors))
        self.store.reschedule(self.k.inflight, view.job_id, _now() + delay)

    # ================================================================ collect (store outputs + manifest)
    def dispatching(self) -> bool:
        """A dispatch pump is refilling freed provider slots right now (it holds its kick flag)."""
        providers = list(self.r.smembers(self.k.providers))
        return bool(providers) and bool(self.r.exists(*(self.k.kick_dispatch(p) for p in providers)))

    async def collect(self, limit: int | None = None) -> int:
        """Store the outputs and manifests of `ready` jobs: a window of collects stays in flight, each one
        finished makes room for the next, for up to STREAM_S (rounds that waited for the slowest of 32
        stored the last wave of a batch at a fraction of the rate S3 takes it)."""
        s = self.settings
        window, decided_at = 0, -1.0

        def size() -> int:
            nonlocal window, decided_at
            if time.monotonic() - decided_at > 0.25:
                # Submitting is on the critical path (a free provider slot earns nothing); storing outputs
                # is not. While a dispatch pump works, collect keeps a small window so the CPU goes to
                # refilling slots first.
                window = limit or (s.collect_batch_dispatching if self.dispatching() else s.collect_batch)
                decided_at = time.monotonic()
            return window

        async def afill(room: int) -> Steps:
            views = await self._claim_ready(room)
            return len(views), [self._collect_one(v) for v in views]

        try:
            total = await _windowed(size, None, "collect", afill=afill)
        finally:
            events.flush_shared(self.r, self.k)  # the round's cost and latency figures, one round trip
        if self.r.llen(self.k.ready):
            self.kick.collect()
        return total

    async def _claim_ready(self, n: int) -> list[JobView]:
        # every claim counts (the script adds it), so a collect that dies with its worker is counted too.
        # On the loop, in the round trips its collects' moves share (worker/roundtrips.py): while a dispatch
        # pump works the window is 4, so this claims one job at a time, and a thread hop per claim cost more
        # than the claim
        return await self.store.claim_ready_shared(self.trips, n, _now() + self.settings.collect_lease_s, worker_id())

    async def _collect_one(self, view: JobView) -> None:
        """Store a ready job's outputs and manifest. Any failure of any step is recorded on the job and
        counted; the job is collected again after a back-off, and fails with that reason once its
        collect attempts (max_attempts + 2) are used up. A failure because our own S3 is unreachable does
        not use one up while the provider keeps the output (worker/policy.py `collect_try_counts`)."""
        claims = int(view.fields.get("collect_attempts", "1") or 1)
        free = int(view.fields.get("collect_free", "0") or 0)  # failed while our S3 was down: not the job's
        tries = claims - free
        limit = self.settings.max_attempts + 2
        if tries > limit:  # earlier attempts died without a word (the worker was lost)
            last = view.fields.get("collect_error") or "the collecting worker was lost"
            reason = f"{view.provider}: outputs not stored after {limit} attempts: {last}"
            await self.finish_failed(view, State.collecting, ErrorInfo(kind="unknown", reason=reason[:2000],
                                                                      attempt=view.attempts))
            return
        try:
            await self._store_outputs(view)
        except Exception as exc:
            if isinstance(exc, ProviderError):
                err = exc
            elif isinstance(exc, UnsafeURL):  # the provider named an output we will not fetch: no retry helps
                err = ProviderError(ErrorKind.terminal, f"{view.provider} collect: output URL refused: {exc}")
            else:
                err = ProviderError(ErrorKind.retryable, f"{view.provider} collect: {type(exc).__name__}: {exc}"[:2000])
            if not isinstance(exc, ProviderError):
                # not a provider's answer (S3 refusing the upload, a bug): with its traceback, which, like every
                # traceback, is printed without local variables (here: the output download's auth headers)
                log.warning("collect failed", job_id=view.job_id, provider=view.provider, error=err.reason,
                            exc_info=not isinstance(exc, UnsafeURL))
            s = self.settings
            # the output's age: since the provider finished (or, not recorded, since the first outage)
            since = float(view.fields.get("provider_done_at") or view.fields.get("collect_outage_since") or 0)
            counts = policy.collect_try_counts(err, output_age_s=_now() - (since or _now()),
                                               outage_give_up_s=s.storage_outage_give_up_s)
            extra = {} if counts or since else {"collect_outage_since": repr(_now())}
            free += 0 if counts else 1
            self.store.set_fields(view.job_id, collect_failures=str(claims), collect_error=err.reason[:300],
                                  collect_free=str(free), **extra)
            if err.kind is ErrorKind.retryable and (not counts or tries < limit):
                # stays `collecting`; the tick hands it back to `ready` when this back-off runs out
                # the back-off grows with the collects that counted (`tries`), not with every claim: the ones
                # lost to our own S3 being down must not leave the job waiting minutes once it is back
                delay = policy.collect_delay(max(1, tries), outage=not counts, lease_s=s.collect_lease_s,
                                             outage_max_s=s.storage_retry_max_s)
                self.store.reschedule(self.k.collecting, view.job_id, _now() + delay)
                return
            await self.finish_failed(view, State.collecting, err.info(view.attempts))

    async def _store_outputs(self, view: JobView) -> None:
        res = view.json_field("result") or {}
        adapter = providers.protocol_of(view.provider)
        client = client_for(view.provider)
        job = view.job
        outputs: list[OutputRecord] = []
        for i, out in enumerate(res.get("outputs", [])):
            url = out.get("url")
            rec = await self.storage.store_output(
                aio.http_client(),
                url=url,
                b64=out.get("b64"),
                index=i,
                key_for_ext=lambda ext, i=i: self.storage.output_key(job.batch_id, job.job_id, i, ext),
                headers=client.output_headers(url, adapter.output_auth(url)) if url else None,
            )
            outputs.append(rec)
        if not outputs:
            raise ProviderError(ErrorKind.terminal, f"{view.provider}: completed without any output image")
        usage = Usage.model_validate(res["usage"]) if res.get("usage") else None
        micro, source = run_cost(view, outputs, usage)
        manifest = build(view, State.succeeded.value, outputs, usage, None, cost=spent_cost(view, micro, source))
        await write_job_manifest_async(self.storage, aio.http_client(), manifest)
        moved = await self.store.move_shared(
            self.trips, view.job_id, [State.collecting], State.succeeded,
            fields={
                "outputs": json.dumps([o.model_dump(mode="json") for o in outputs]),
                "manifest": manifest.model_dump_json(),
                "result": "",
                "settle": str(micro),  # the reservation becomes this run's cost (worker/lua/move.lua)
            },
        )
        if moved.ok:
            events.succeeded(view, micro / MICRO if source else None, len(outputs))
        if moved.batch_finished:
            self.drain_finalize()

    # ================================================================ batch
    def drain_finalize(self) -> None:
        """Batches whose last job finished (indexed atomically by the state machine) and batches whose
        manifest write failed or was lost with its worker (their lease ran out): each claimed and kicked."""
        for bid in self.store.claim_finalizing(_now(), self.settings.finalize_lease_s):
            self.kick.finalize(bid)

    def finalize(self, batch_id: str) -> str:
        """Write the batch manifest. A failure is recorded on the batch and counted; the batch stays in
        the finalize index, so the tick claims it again when its lease runs out."""
        try:
            key, _ = write_batch_manifest(self.store, self.storage, batch_id)
        except Exception as exc:
            self.r.hset(self.k.batch(batch_id), "finalize_error", f"{type(exc).__name__}: {exc}"[:300])
            self.r.hincrby(self.k.batch(batch_id), "finalize_failures", 1)
            log.warning("batch manifest not written; will retry", batch_id=batch_id, error=str(exc)[:300])
            raise
        self.store.finalized(batch_id)
        return key

    # ================================================================ tick (leader-elected, every tick_interval_s)
    def tick(self, reap: bool = False) -> dict[str, int]:
        """`reap`: this worker has been connected long enough to tell a dead worker from a Redis outage
        (see `reap_dead_workers`)."""
        now = _now()
        ttl_ms = max(100, int(self.settings.tick_interval_s * 900))
        if not self.r.set(self.k.tick_lock, os.getpid(), nx=True, px=ttl_ms):
            return {}
        stats = {"retried": 0, "recovered": 0, "polled": 0, "recollect": 0, "reaped": 0}
        if reap:
            stats["reaped"] = self.reap_dead_workers(now)
        for jid in self.store.due(self.k.retry, now, 1000):
            if self.store.move(jid, [State.retry_wait], State.queued).ok:
                stats["retried"] += 1
        to_poll: dict[str, list[str]] = {}
        due = self.store.due(self.k.inflight, now, 2000)
        for view in self.store.get_many(due):
            if view is None:
                continue
            if view.state is State.submitting:
                stats["recovered"] += self._recover_submitting(view)
            elif view.state is State.submitted:
                to_poll.setdefault(view.provider, []).append(view.job_id)
                # the poll task reschedules it properly; if that task is lost (its worker killed with the task
                # prefetched), the job is due again after POLL_TASK_LEASE_S (30 s cost a chaos run's last job)
                self.store.reschedule(self.k.inflight, view.job_id, now + POLL_TASK_LEASE_S)
        for provider, ids in to_poll.items():
            held_ms = self.r.pttl(self.k.backoff_poll(provider))
            if held_ms > 0:  # the provider answered a poll with Retry-After: its polls wait that long
                for jid in ids:
                    self.store.reschedule(self.k.inflight, jid, now + held_ms / 1000)
                continue
            for i in range(0, len(ids), 50):
                self.kick.poll(provider, ids[i : i + 50])
                stats["polled"] += len(ids[i : i + 50])
        sweeper = Sweeper(self)
        for provider in self.swept_providers():  # lost webhooks, found in the provider's own request history
            if sweeper.due(provider):
                self.kick.sweep(provider)
                stats["sweeps"] = stats.get("sweeps", 0) + 1
        for scope in self.store.budget_scopes():  # money freed or a cap raised: waiting jobs try again
            stats["budget_released"] = stats.get("budget_released", 0) + self.store.release_budget(scope, now=now)
        for jid in self.store.due(self.k.collecting, now, 1000):
            if self.store.move(jid, [State.collecting], State.ready, note="collect retry").ok:
                stats["recollect"] += 1
        for provider in self.r.smembers(self.k.providers):
            # not while every slot is taken (a task twice a second that claims nothing); a freed slot kicks
            if provider in providers.names() and self.dispatchable(provider):
                self.kick.dispatch(provider, providers.spec_of(provider).synchronous)
        if self.r.llen(self.k.ready):
            self.kick.collect()
        self.drain_finalize()
        return stats

    def swept_providers(self) -> list[str]:
        """Providers whose jobs get webhooks and whose request history the sweep reads (worker/sweep.py)."""
        if self.settings.sweep_interval_s <= 0:
            return []
        return [p for p in providers.names() if self.webhooks_on(providers.protocol_of(p)) and sweeps(p)]

    def reap_dead_workers(self, now: float) -> int:
        """Workers whose heartbeat is older than `worker_dead_after_s` are dead (SIGKILL, OOM, a lost
        host): the submits and collects they had claimed are made due now, so this tick recovers them
        (`_recover_submitting`, the collect lease) instead of waiting out their leases (120 s, and
        timeout + 60 s for a synchronous provider's call). Only jobs whose `owner` is that worker are
        touched; the scan of the two indexes runs only when a worker died. The caller must itself have
        been connected for longer than `worker_dead_after_s` (after a Redis outage every heartbeat is
        old, and the workers behind them are reconnecting, not dead)."""
        dead = set(self.r.zrangebyscore(self.k.alive, "-inf", now - self.settings.worker_dead_after_s))
        if not dead:
            return 0
        due = 0
        for index, state in ((self.k.inflight, State.submitting), (self.k.collecting, State.collecting)):
            ids = list(self.r.zrangebyscore(index, now, "+inf"))
            for start in range(0, len(ids), 1000):
                chunk = ids[start:start + 1000]
                pipe = self.r.pipeline(transaction=False)
                for jid in chunk:
                    pipe.hmget(self.k.job(jid), "state", "owner")
                for jid, (st, owner) in zip(chunk, pipe.execute(), strict=True):
                    if st == state.value and owner in dead:
                        self.store.reschedule(index, jid, now)
                        due += 1
        self.r.zrem(self.k.alive, *dead)
        if due:
            log.warning("claims of dead workers recovered", workers=sorted(dead), jobs=due)
        return due

    def _recover_submitting(self, view: JobView) -> int:
        """A claim whose lease ran out: the submitting worker died or hung."""
        if view.request_id:  # it got as far as the provider's answer: re-attach, never resubmit
            return int(self.store.move(view.job_id, [State.submitting], State.submitted, score=_now(),
                                       note="re-attached after lost worker").ok)
        entry = view.json_field(f"req.{view.attempts}") or {}
        # `sending`: no connection to the provider was ever open for it, it cannot have been billed. No record
        # at all is most often a worker lost between its claim and that record, but Redis losing its last
        # writes (a hard crash under `appendfsync everysec`, a failover whose WAIT timed out) can drop a
        # `sent` record too: that one stays `uncertain`, never a hidden second charge.
        if entry.get("status") == "sending":
            status, why = "not_sent", "worker lost before the request was sent"
        else:  # We cannot know whether the provider received it. Record that, then try again.
            status, why = "uncertain", "worker lost while submitting; may have been billed"
        self.store.set_fields(view.job_id, **{f"req.{view.attempts}": self._req_entry(view, status, error=why)})
        keep = status == "uncertain"  # its reservation stays committed only if the request may have left
        if view.attempts >= self.settings.max_attempts:
            info = ErrorInfo(kind="unknown", reason="worker lost while submitting, attempts exhausted",
                             attempt=view.attempts)
            aio.run(self.finish_failed(view, State.submitting, info, keep=keep))
            return 1
        return int(self.store.move(view.job_id, [State.submitting], State.queued, note="lease expired",
                                   fields=settle_field(keep)).ok)

    # ================================================================ cancel
    async def cancel_remote(self, job_ids: list[str]) -> int:
        """After `editq cancel BATCH` moved these jobs to `cancelled` (and wrote their manifests): cancel each
        request the provider holds. Returns how many provider requests were cancelled."""
        n = 0
        for view in self.store.get_many(job_ids):
            if view is None or view.state is not State.cancelled:
                continue
            if view.request_id:
                try:
                    await providers.protocol_of(view.provider).cancel(
                        client_for(view.provider), view.request_id, view.json_field("handle") or {})
                    n += 1
                except Exception:  # best effort: the job is cancelled here whatever the provider says
                    log.warning("provider cancel failed", job_id=view.job_id, provider=view.provider, exc_info=True)
                self.r.hdel(self.k.job(view.job_id), "handle")  # kept by the compact record for this call only
        return n

    async def cancel(self, job_id: str) -> bool:
        view = self.store.get(job_id)
        if view is None:
            return False
        active = [s for s in (State.queued, State.budget_wait, State.submitting, State.submitted, State.retry_wait,
                              State.ready)
                  if s is view.state]
        if not active:
            return False
        # a reservation in flight stays committed: the provider may have run it. The manifest goes with the move
        # (the terminal move compacts the job and stages its manifest: worker/lua/move.lua)
        manifest = build(view, State.cancelled.value, [], None, None, cost=spent_cost(view, reservation(view)))
        moved = self.store.move(job_id, active, State.cancelled, note="cancelled by user",
                                fields={"manifest": manifest.model_dump_json()})
        if moved.ok and view.request_id:
            await providers.protocol_of(view.provider).cancel(client_for(view.provider), view.request_id,
                                                           view.json_field("handle") or {})
        if moved.ok:
            events.cancelled(view)
            await write_job_manifest_async(self.storage, aio.http_client(), manifest)
            if moved.batch_finished:
                self.drain_finalize()
        return moved.ok


def settle_field(keep: bool) -> dict[str, str]:
    """The move field that settles a reservation: keep it all as spent, or release it (worker/lua/move.lua)."""
    return {"settle": "all" if keep else "0"}


def run_cost(view: JobView, outputs: list[OutputRecord], usage: Usage | None) -> tuple[int, str | None]:
    """What a successful run cost (micro-USD) and where the figure comes from: the provider's own figure
    (`provider`: its reported cost, or its reported tokens at the configured prices), else editq's estimate
    from the sizes it produced (`estimate`); (0, None) for a provider without a price model."""
    if usage is not None and usage.cost_usd is not None:
        return to_micro(usage.cost_usd), "provider"
    model = providers.price_model_of(view.provider)
    if model is None:
        return 0, None
    return to_micro(model.actual(view.job, [(o.width, o.height) for o in outputs])), "estimate"


def _result_json(result: Result) -> dict[str, Any]:
    return {
        "outputs": [{k: v for k, v in asdict(o).items() if v is not None} for o in result.outputs],
        "usage": result.usage.model_dump(exclude_none=True) if result.usage else None,
        "raw": result.raw,
    }
