"""Provider-neutral job engine.

A provider router validates a submission, builds a :class:`Job` (with an async ``work`` callable
that fetches inputs, renders and stores outputs) and calls :meth:`Runner.submit`.  The runner keeps
the job IN_QUEUE while ``concurrency`` jobs of that provider are IN_PROGRESS (normal priority ahead
of low), runs ``work`` concurrently with a ``latency_s + U(0, jitter_s)`` sleep, then marks it
COMPLETED with a :class:`JobOutcome` and hands the webhook (if any) to the dispatcher, signed by the
provider's :class:`ProviderAdapter`.  Everything runs on the event loop: one asyncio task per
IN_PROGRESS job, none per queued job, no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from editq.sandbox.config import ConfigHolder, SandboxConfig
from editq.sandbox.faults import Dice
from editq.sandbox.signing import WebhookSigner
from editq.sandbox.webhooks import WebhookDispatcher, WebhookRecord, WebhookStats

PRIORITY_NORMAL = 0
PRIORITY_LOW = 1
_PRIORITIES = (PRIORITY_NORMAL, PRIORITY_LOW)
MAX_LOG_ENTRIES = 200_000


class JobState(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class CancelResult(StrEnum):
    CANCELLED = "CANCELLED"  # was queued: removed and completed as cancelled
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"  # was running: its task was cancelled
    ALREADY_COMPLETED = "ALREADY_COMPLETED"


@dataclass
class JobOutcome:
    """Terminal result in the provider's own terms (body and HTTP status of its result call)."""

    ok: bool
    status_code: int = 200
    body: Any = None
    error: str | None = None
    error_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reason: str = "ok"  # ok | error | injected_failure | cancelled | start_timeout | crash


WorkFn = Callable[["Job"], Awaitable[JobOutcome]]


@dataclass(eq=False)
class Job:
    provider: str
    request_id: str
    model: str
    work: WorkFn
    payload: Any = None  # validated input for ``work``; dropped on completion
    input_summary: Any = None  # what the request log shows (big data URIs elided)
    webhook_url: str | None = None
    base_url: str = ""
    priority: int = PRIORITY_NORMAL
    start_timeout_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # provider-private data
    # runtime state
    state: JobState = JobState.IN_QUEUE
    received_at: float = field(default_factory=time.time)
    received_mono: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    started_mono: float | None = None
    completed_at: float | None = None
    completed_mono: float | None = None
    planned_duration_s: float | None = None
    outcome: JobOutcome | None = None
    cancel_requested: bool = False
    logs: list[dict[str, Any]] = field(default_factory=list)
    webhook: WebhookRecord | None = None
    task: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # set on COMPLETED (synchronous APIs wait)

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append(
            {
                "message": message,
                "level": level,
                "source": "USER",
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
        )

    @property
    def inference_time(self) -> float | None:
        if self.started_mono is None or self.completed_mono is None:
            return None
        return round(self.completed_mono - self.started_mono, 6)

    def log_entry(self) -> dict[str, Any]:
        outcome = self.outcome
        queue_wait = None
        if self.started_mono is not None:
            queue_wait = round(self.started_mono - self.received_mono, 6)
        elif self.completed_mono is not None:
            queue_wait = round(self.completed_mono - self.received_mono, 6)
        return {
            "provider": self.provider,
            "request_id": self.request_id,
            "model": self.model,
            "status": self.state.value,
            "outcome": outcome.reason if outcome else None,
            "status_code": outcome.status_code if outcome else None,
            "error": outcome.error if outcome else None,
            "error_type": outcome.error_type if outcome else None,
            "received_at": self.received_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "queue_wait_s": queue_wait,
            "inference_time_s": self.inference_time,
            "priority": "low" if self.priority == PRIORITY_LOW else "normal",
            "headers": self.headers,
            "webhook_url": self.webhook_url,
            "webhook": self.webhook.to_dict() if self.webhook else None,
            "input": self.input_summary,
        }


class ProviderAdapter:
    """Provider-specific hooks the runner needs.  Subclass per provider and register it.

    ``signer``: signs webhook bodies (None: the provider has no webhooks).
    Override the ``*_outcome`` methods to shape errors the way the provider does, and
    ``webhook_payload`` to wrap the outcome in the provider's webhook envelope.
    """

    name: str = "base"
    signer: WebhookSigner | None = None

    def webhook_payload(self, job: Job) -> Any:
        """JSON payload POSTed to ``job.webhook_url``; None to send nothing."""
        return job.outcome.body if job.outcome else None

    def failure_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 500, {"detail": "injected failure"}, "injected failure",
                          "internal_server_error", reason="injected_failure")

    def cancelled_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 400, {"detail": "cancelled"}, "cancelled", "request_cancelled",
                          reason="cancelled")

    def start_timeout_outcome(self, job: Job) -> JobOutcome:
        return JobOutcome(False, 504, {"detail": "timed out before starting"}, "request timeout",
                          "request_timeout", reason="start_timeout")

    def crash_outcome(self, job: Job, exc: BaseException) -> JobOutcome:
        return JobOutcome(False, 500, {"detail": "Internal server error"}, f"{type(exc).__name__}: {exc}",
                          "internal_server_error", reason="crash")


@dataclass
class ProviderStats:
    accepted: int = 0
    completed: int = 0
    succeeded: int = 0
    failed: int = 0  # completed with a provider error (incl. injected failures)
    cancelled: int = 0
    timed_out: int = 0  # X-Fal-Request-Timeout-style start timeouts
    in_queue: int = 0
    in_progress: int = 0
    max_in_progress: int = 0
    in_flight: int = 0  # accepted and not yet completed
    max_in_flight: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason: 429, 5xx, timeout, ...
    webhooks: WebhookStats = field(default_factory=WebhookStats)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "completed": self.completed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
            "in_queue": self.in_queue,
            "in_progress": self.in_progress,
            "max_in_progress": self.max_in_progress,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rejected": dict(self.rejected),
            "webhooks": self.webhooks.to_dict(),
        }

    def reset(self) -> None:
        """Zero counters; gauges stay (jobs are still running) and maxima restart from them."""
        self.accepted = self.completed = self.succeeded = self.failed = 0
        self.cancelled = self.timed_out = 0
        self.max_in_progress = self.in_progress
        self.max_in_flight = self.in_flight
        self.rejected.clear()
        self.webhooks.reset()


class Runner:
    def __init__(self, config: ConfigHolder, dice: Dice, webhooks: WebhookDispatcher) -> None:
        self._config = config
        self._dice = dice
        self._webhooks = webhooks
        self._adapters: dict[str, ProviderAdapter] = {}
        self._jobs: dict[tuple[str, str], Job] = {}
        self._queues: dict[str, tuple[deque[Job], ...]] = {}
        self._stats: dict[str, ProviderStats] = {}
        self._webhook_totals = WebhookStats()
        self._file_faults: Counter[str] = Counter()
        self._log: deque[Job] = deque(maxlen=MAX_LOG_ENTRIES)
        self._completed_order: deque[Job] = deque()
        self._retention_s = 3600.0
        self._started = time.time()
        config.subscribe(self._on_config_change)

    # --- registration -----------------------------------------------------------------------

    def register(self, adapter: ProviderAdapter) -> None:
        self._adapters[adapter.name] = adapter
        self._queues.setdefault(adapter.name, tuple(deque() for _ in _PRIORITIES))
        self._stats.setdefault(adapter.name, ProviderStats())

    @property
    def providers(self) -> list[str]:
        return list(self._adapters)

    @property
    def config(self) -> SandboxConfig:
        return self._config.current

    # --- submission -------------------------------------------------------------------------

    def reject(self, provider: str, reason: str) -> None:
        """Count a submission that was not accepted (fault, auth, validation...), or an injected fault of
        another kind (sandbox/http_faults.py); faults of output downloads ("" provider) count under `files`."""
        if provider in self._stats:
            self._stats[provider].rejected[reason] += 1
        else:
            self._file_faults[reason] += 1

    def submit(self, job: Job) -> None:
        if job.provider not in self._adapters:
            raise KeyError(f"provider {job.provider!r} is not registered")
        self._evict_expired()
        key = (job.provider, job.request_id)
        if key in self._jobs:
            raise ValueError(f"duplicate request id {job.request_id}")
        self._jobs[key] = job
        self._log.append(job)
        if job.webhook_url:
            job.webhook = WebhookRecord(url=job.webhook_url)
        stats = self._stats[job.provider]
        stats.accepted += 1
        stats.in_flight += 1
        stats.in_queue += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        priority = job.priority if job.priority in _PRIORITIES else PRIORITY_NORMAL
        self._queues[job.provider][priority].append(job)
        job.log("Request queued.")
        if job.start_timeout_s is not None:
            asyncio.get_running_loop().call_later(job.start_timeout_s, self._expire, job)
        self._pump(job.provider)

    def get(self, provider: str, request_id: str) -> Job | None:
        return self._jobs.get((provider, request_id))

    def jobs(self, provider: str) -> list[Job]:
        """Every request of ``provider`` the sandbox still keeps (one hour after completion), in no order:
        what the providers' list APIs (fal's request history, Replicate's list of predictions) read."""
        self._evict_expired()
        return [job for (name, _), job in self._jobs.items() if name == provider]

    def queue_position(self, job: Job) -> int:
        """Number of jobs of the same provider that will start before ``job`` (0 = next)."""
        if job.state is not JobState.IN_QUEUE:
            return 0
        ahead = 0
        for priority, queue in enumerate(self._queues[job.provider]):
            if priority < job.priority:
                ahead += len(queue)
            elif priority == job.priority:
                try:
                    return ahead + queue.index(job)
                except ValueError:
                    return ahead
        return ahead

    def cancel(self, job: Job) -> CancelResult:
        if job.state is JobState.COMPLETED:
            return CancelResult.ALREADY_COMPLETED
        job.cancel_requested = True
        if job.state is JobState.IN_QUEUE:
            self._dequeue(job)
            self._finish(job, self._adapters[job.provider].cancelled_outcome(job))
            return CancelResult.CANCELLED
        if job.task is not None:
            job.task.cancel()
        return CancelResult.CANCELLATION_REQUESTED

    # --- scheduling ---------------------------------------------------------------------------

    def _dequeue(self, job: Job) -> None:
        queue = self._queues[job.provider][job.priority if job.priority in _PRIORITIES else 0]
        try:
            queue.remove(job)
        except ValueError:
            return
        self._stats[job.provider].in_queue -= 1

    def _pump(self, provider: str) -> None:
        stats = self._stats[provider]
        cap = self._config.current.concurrency
        queues = self._queues[provider]
        while stats.in_progress < cap:
            queue = next((q for q in queues if q), None)
            if queue is None:
                return
            self._start(queue.popleft())

    def _start(self, job: Job) -> None:
        cfg = self._config.current
        stats = self._stats[job.provider]
        stats.in_queue -= 1
        stats.in_progress += 1
        stats.max_in_progress = max(stats.max_in_progress, stats.in_progress)
        job.state = JobState.IN_PROGRESS
        job.started_at, job.started_mono = time.time(), time.monotonic()
        job.planned_duration_s = cfg.latency_s + self._dice.uniform("jitter", 0.0, cfg.jitter_s)
        fail = self._dice.roll("job_failure", cfg.rate(job.provider, "job_failure_rate"))
        job.log("Request started.")
        job.task = asyncio.get_running_loop().create_task(self._run(job, fail))

    async def _run(self, job: Job, fail: bool) -> None:
        adapter = self._adapters[job.provider]
        duration = job.planned_duration_s or 0.0
        try:
            if fail:
                await asyncio.sleep(duration)
                outcome = adapter.failure_outcome(job)
            else:
                outcome, _ = await asyncio.gather(self._safe_work(job, adapter), asyncio.sleep(duration))
        except asyncio.CancelledError:
            if not job.cancel_requested:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            outcome = adapter.cancelled_outcome(job)
        self._finish(job, outcome)

    @staticmethod
    async def _safe_work(job: Job, adapter: ProviderAdapter) -> JobOutcome:
        try:
            return await job.work(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            job.log(f"Unhandled error: {type(exc).__name__}: {exc}", "ERROR")
            return adapter.crash_outcome(job, exc)

    def _expire(self, job: Job) -> None:
        if job.state is not JobState.IN_QUEUE:
            return
        self._dequeue(job)
        self._finish(job, self._adapters[job.provider].start_timeout_outcome(job))

    def _finish(self, job: Job, outcome: JobOutcome) -> None:
        if job.state is JobState.COMPLETED:
            return
        stats = self._stats[job.provider]
        was_running = job.state is JobState.IN_PROGRESS
        job.state = JobState.COMPLETED
        job.completed_at, job.completed_mono = time.time(), time.monotonic()
        job.outcome = outcome
        job.payload = None
        job.task = None
        job.finished.set()
        job.log("Request completed." if outcome.ok else f"Request failed: {outcome.error}",
                "INFO" if outcome.ok else "ERROR")
        stats.completed += 1
        stats.in_flight -= 1
        if outcome.ok:
            stats.succeeded += 1
        elif outcome.reason == "cancelled":
            stats.cancelled += 1
        elif outcome.reason == "start_timeout":
            stats.timed_out += 1
        else:
            stats.failed += 1
        self._completed_order.append(job)
        if was_running:
            stats.in_progress -= 1
            self._pump(job.provider)
        adapter = self._adapters[job.provider]
        if job.webhook is not None and adapter.signer is not None:
            payload = adapter.webhook_payload(job)
            if payload is not None:
                self._webhooks.schedule(
                    record=job.webhook,
                    payload=payload,
                    signer=adapter.signer,
                    request_id=job.request_id,
                    stats=stats.webhooks,
                    totals=self._webhook_totals,
                )

    def _evict_expired(self) -> None:
        horizon = time.monotonic() - self._retention_s
        order = self._completed_order
        while order and (order[0].completed_mono or 0.0) < horizon:
            job = order.popleft()
            self._jobs.pop((job.provider, job.request_id), None)

    def _on_config_change(self, old: SandboxConfig, new: SandboxConfig) -> None:
        if new.seed != old.seed:
            self._dice.reseed(new.seed)
        if new.concurrency > old.concurrency:
            for provider in self._adapters:
                self._pump(provider)

    # --- introspection ----------------------------------------------------------------------

    def log_entries(self, provider: str | None = None) -> list[dict[str, Any]]:
        return [job.log_entry() for job in self._log if provider is None or job.provider == provider]

    def stats(self) -> dict[str, Any]:
        providers = {name: s.to_dict() for name, s in self._stats.items()}
        total_keys = ("accepted", "completed", "succeeded", "failed", "cancelled", "timed_out",
                      "in_queue", "in_progress", "in_flight")
        totals: dict[str, Any] = {k: sum(s[k] for s in providers.values()) for k in total_keys}
        totals["rejected"] = dict(sum((s.rejected for s in self._stats.values()), Counter()))
        totals["webhooks"] = self._webhook_totals.to_dict()
        totals["file_faults"] = dict(self._file_faults)
        return {
            "uptime_s": round(time.time() - self._started, 3),
            "concurrency": self._config.current.concurrency,
            "providers": providers,
            "totals": totals,
        }

    def reset(self) -> None:
        """Clear the request log and counters.  Running jobs keep running; keys are untouched."""
        self._log.clear()
        for stats in self._stats.values():
            stats.reset()
        self._webhook_totals.reset()
        self._file_faults.clear()

    async def aclose(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
