"""A job's lifecycle events: one call per event from the pipeline and the receiver, which writes the log line
(with batch_id, job_id, custom_id, provider and request_id on every one) and observes the metrics
(worker/metrics.py). Nothing here changes a job; a failure to observe never fails the step that called it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog

from editq.schemas.manifest import ErrorInfo
from editq.worker import metrics

log = structlog.get_logger("editq.jobs")


def ids(view: Any, **extra: Any) -> dict[str, Any]:
    """The identifiers every lifecycle line carries (a JobView; its spec is parsed only for custom_id)."""
    fields = view.fields
    try:  # the parsed job when the caller has it; else only this field of the spec (the receiver never parses it)
        if "job" in view.__dict__:
            custom_id = view.__dict__["job"].custom_id
        elif "spec" in fields:
            custom_id = json.loads(fields["spec"]).get("custom_id")
        else:  # a finished job's compact record (worker/lua/move.lua)
            custom_id = fields.get("cid")
    except Exception:  # a job without a readable spec still gets its line
        custom_id = None
    out = {"batch_id": fields.get("batch_id"), "job_id": view.job_id, "custom_id": custom_id,
           "provider": view.provider, "request_id": view.request_id, "attempt": view.attempts}
    out.update(extra)
    return out


def _float(fields: dict[str, str], name: str) -> float | None:
    raw = fields.get(name)
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


def _last_queued_at(view: Any) -> float | None:
    for change in reversed(view.history):
        if change.state == "queued":
            return float(change.at)
    return None


def submitted(view: Any, request_id: str) -> None:
    queued_at = _last_queued_at(view)
    if queued_at is not None:
        metrics.QUEUE_TIME.labels(view.provider, view.lane).observe(max(0.0, time.time() - queued_at))
    metrics.SUBMITS.labels(view.provider, "accepted").inc()
    log.info("job submitted", **ids(view, request_id=request_id))


def error_class(info: ErrorInfo) -> str:
    """A bounded label for an error: its kind and HTTP status, e.g. `retryable_429`, `terminal_400`,
    `retryable_none` (no answer: a connection error or timeout)."""
    status = info.status_code if info.status_code and 100 <= info.status_code <= 599 else None
    return f"{info.kind}_{status if status is not None else 'none'}"


def submit_failed(view: Any, info: ErrorInfo, maybe_billed: bool) -> None:
    metrics.SUBMITS.labels(view.provider, "uncertain" if maybe_billed else "failed").inc()
    log.info("submit failed", **ids(view, error_class=error_class(info), maybe_billed=maybe_billed,
                                    reason=info.reason[:200]))


def provider_done(view: Any, ok: bool, how: str) -> None:
    """The provider finished a job (`how`: webhook, poll or sweep); the job moves to ready (or to its retry)."""
    log.info("provider finished", **ids(view, ok=ok, via=how))


def retrying(view: Any, info: ErrorInfo, delay_s: float) -> None:
    cls = error_class(info)
    metrics.RETRIES.labels(view.provider, cls).inc()
    log.info("job will retry", **ids(view, error_class=cls, delay_s=round(delay_s, 3), reason=info.reason[:200]))


def rerouted(view: Any, to_provider: str, error_class: str, reason: str) -> None:
    metrics.REROUTES.labels(view.provider, to_provider, error_class).inc()
    log.info("job rerouted", **ids(view, to_provider=to_provider, error_class=error_class, reason=reason[:200]))


def failed(view: Any, info: ErrorInfo) -> None:
    cls = error_class(info)
    metrics.FAILURES.labels(view.provider, cls).inc()
    log.warning("job failed", **ids(view, error_class=cls, reason=info.reason[:200]))


def succeeded(view: Any, cost_usd: float | None, outputs: int) -> None:
    """Outputs and manifest stored. This process's histograms are observed now; the figures shared through
    Redis (cost, the provider's recent latency) are gathered and written by `flush_shared`, once per collect
    round instead of one round trip per job."""
    now = time.time()
    submitted_at, done_at = _float(view.fields, "submitted_at"), _float(view.fields, "provider_done_at")
    latency = done_at - submitted_at if submitted_at and done_at and done_at >= submitted_at else None
    if latency is not None:
        metrics.PROVIDER_LATENCY.labels(view.provider).observe(latency)
    if done_at:
        metrics.DONE_TO_STORED.labels(view.provider).observe(max(0.0, now - done_at))
    metrics.SUCCEEDED.labels(view.provider).inc()
    with _shared_lock:
        if cost_usd:
            _cost_due[view.provider] = _cost_due.get(view.provider, 0.0) + cost_usd
        if latency is not None:
            _latency_due[view.provider] = (_ewma(view.provider, latency), _median(view.provider, latency))
    log.info("job succeeded", **ids(view, outputs=outputs, cost_usd=cost_usd,
                                    latency_s=round(latency, 3) if latency is not None else None))


_shared_lock = threading.Lock()
_cost_due: dict[str, float] = {}  # provider -> USD of succeeded jobs not yet added to Keys.stats_cost
_latency_due: dict[str, tuple[float, float]] = {}  # provider -> (EWMA, running median) not yet written


def flush_shared(r: Any, k: Any) -> None:
    """Write what `succeeded` gathered to Redis in one round trip: the cost counter (added) and each provider's
    latest latency estimates (set). A failure keeps the cost for the next flush; metrics never fail a step."""
    with _shared_lock:
        cost, latency = dict(_cost_due), dict(_latency_due)
        _cost_due.clear()
        _latency_due.clear()
    if not cost and not latency:
        return
    try:
        pipe = r.pipeline(transaction=False)
        for provider, usd in cost.items():
            pipe.hincrbyfloat(k.stats_cost, provider, usd)
        for provider, (ewma, median) in latency.items():
            pipe.hset(k.stats_latency, provider, repr(round(ewma, 3)))
            pipe.hset(k.latency_median, provider, repr(round(median, 3)))
        pipe.execute()
    except Exception:  # metrics only: the jobs are stored whatever happens here
        with _shared_lock:
            for provider, usd in cost.items():
                _cost_due[provider] = _cost_due.get(provider, 0.0) + usd
        log.warning("shared metrics not recorded", exc_info=True)


def cancelled(view: Any) -> None:
    log.info("job cancelled", **ids(view))


def webhook(provider: str, outcome: str, view: Any = None, request_id: str | None = None,
            sent_at: float | None = None) -> None:
    """A delivery and what became of it; `view`: the job it names, as read before applying it."""
    metrics.DELIVERIES.labels(provider, outcome).inc()
    if sent_at is not None and outcome == "accepted":
        metrics.WEBHOOK_LAG.labels(provider).observe(max(0.0, time.time() - sent_at))
    fields: dict[str, Any] = ids(view) if view is not None else {"provider": provider}
    fields["request_id"] = request_id or fields.get("request_id")
    if outcome == "accepted" and view is not None:
        log.info("provider finished", **fields, via="webhook", outcome=outcome)
    else:
        log.info("webhook", **fields, outcome=outcome)


_latency: dict[str, float] = {}
EWMA_WEIGHT = 0.1  # a new sample's weight: about the last 20 jobs of this worker


def _ewma(provider: str, sample: float) -> float:
    prev = _latency.get(provider)
    value = sample if prev is None else prev + EWMA_WEIGHT * (sample - prev)
    _latency[provider] = value
    return value


_median_of: dict[str, float] = {}
MEDIAN_STEP = 0.05  # each sample moves the running median 5 % towards itself


def running_median(prev: float | None, sample: float, step: float = MEDIAN_STEP) -> float:
    """A running estimate of the median (stochastic approximation): each sample moves it by `step` of its
    value up or down, whatever the sample's size. Unlike a mean, a few results learned late (a lost
    webhook found by the 60 s safety-net poll) barely move it, so the poll schedule built on it
    (worker/policy.py poll_delay) does not drift towards the very delays it is there to cut."""
    if prev is None or prev <= 0:
        return max(sample, 0.001)
    if sample > prev:
        return prev * (1 + step)
    if sample < prev:
        return prev * (1 - step)
    return prev


def _median(provider: str, sample: float) -> float:
    value = running_median(_median_of.get(provider), sample)
    _median_of[provider] = value
    return value
