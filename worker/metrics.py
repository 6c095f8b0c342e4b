"""Prometheus metrics: every metric editq exposes is declared here, nowhere else.

Two kinds:

* **Read from Redis at scrape time** (`RedisCollector`): jobs by state, provider and lane, provider slots
  in use vs cap, the oldest queued job's age, the backlog in provider-seconds, cost. Redis holds the one
  truth shared by every process, so every process reports the same numbers whatever the number of workers:
  aggregate them with `max` (not `sum`) across instances. The job counts are kept by the state machine's
  own scripts (`Keys.stats_jobs`, one HINCRBY pair per move), so reading them is one HGETALL.
* **Observed in this process** (histograms and counters below): provider latency, queue time, completion
  to stored output, webhook lag, retries / failures / reroutes by error class, webhook deliveries. Each
  process counts what it did: aggregate them with `sum` / `rate` across instances.

The pipeline and the receiver do not touch these objects: they call `worker/events.py`, one call per
lifecycle event, which logs the event and observes it here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# buckets: provider work runs seconds to minutes (OpenAI Batch: hours)
_SLOW = (0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)
_FAST = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)

PROVIDER_LATENCY = Histogram(
    "editq_provider_latency_seconds", "Time from the provider accepting a job to the provider finishing it",
    ["provider"], buckets=_SLOW)
QUEUE_TIME = Histogram(
    "editq_queue_time_seconds", "Time a job waited queued (since its last move to queued) before it was submitted",
    ["provider", "lane"], buckets=_SLOW)
DONE_TO_STORED = Histogram(
    "editq_completion_to_stored_seconds", "Time from the provider finishing a job to its outputs and manifest "
    "stored in S3", ["provider"], buckets=_FAST)
WEBHOOK_LAG = Histogram(
    "editq_webhook_lag_seconds", "Time from the provider signing a webhook (its timestamp header) to editq "
    "receiving it", ["provider"], buckets=_FAST)
SUBMITS = Counter("editq_submits_total", "Provider submissions by outcome", ["provider", "outcome"])
RETRIES = Counter("editq_job_retries_total", "Failed attempts that will be retried, by error class",
                  ["provider", "error_class"])
FAILURES = Counter("editq_job_failures_total", "Jobs failed for good, by error class", ["provider", "error_class"])
REROUTES = Counter("editq_job_reroutes_total", "Jobs sent to the next provider of their route, by reason",
                   ["provider", "to_provider", "error_class"])
SUCCEEDED = Counter("editq_jobs_succeeded_total", "Jobs whose outputs were stored by this process", ["provider"])
DELIVERIES = Counter("editq_webhook_deliveries_total", "Webhook deliveries by outcome", ["provider", "outcome"])
SWEEPS = Counter("editq_sweeps_total", "Sweeps of a provider's request history by outcome (swept, idle, busy, held, "
                 "error)", ["provider", "outcome"])
SWEEP_CALLS = Counter("editq_sweep_list_calls_total", "List calls (pages) the sweeps made to the provider",
                      ["provider"])
SWEEP_FOUND = Counter("editq_sweep_found_total", "Finished requests whose job still waited for its webhook, found "
                      "by a sweep and handed to the poll path", ["provider"])

ACTIVE_STATES = ("queued", "submitting", "submitted", "retry_wait", "ready", "collecting")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_LATENCY_S = 60.0  # the backlog's latency before any job of a provider finished


def parse_job_counts(raw: dict[str, str]) -> Iterator[tuple[str, str, str, int]]:
    """(state, provider, lane, count) from the `stats_jobs` hash (fields `state|provider|lane`)."""
    for field, value in raw.items():
        parts = field.split("|")
        if len(parts) == 3:
            yield parts[0], parts[1], parts[2], int(value)


def backlog_provider_seconds(waiting: int, latency_s: float, cap: int) -> float:
    """How long the provider needs for the jobs waiting for it, at its cap: waiting x latency / cap.
    The number an autoscaler and a human both want: 0 means no backlog; 600 means ten minutes of work queued."""
    return waiting * latency_s / max(1, cap)


# Budgets: readers of the budgets editq enforces, each (redis, keys) -> [(scope, cap_usd, remaining_usd)].
# The budget code registers its reader here (one line); the gauges exist, empty, until one is registered.
BudgetReader = Callable[[Any, Any], Iterable[tuple[str, float, float]]]
BUDGET_READERS: list[BudgetReader] = []


class RedisCollector(Collector):
    """The gauges that must agree across workers, read from Redis when scraped (one pipeline round trip)."""

    def __init__(self, redis: Any = None, keys: Any = None) -> None:
        self._redis = redis
        self._keys = keys

    def _r_k(self) -> tuple[Any, Any]:
        from editq.worker.keys import keys
        from editq.worker.redis_client import get_redis

        return self._redis or get_redis(), self._keys or keys()

    def describe(self) -> Iterable[Metric]:
        return list(self._families({}, {}, {}, {}, []))

    def collect(self) -> Iterable[Metric]:
        from editq import providers
        from editq.worker.state import queued_heads

        r, k = self._r_k()
        names = sorted(set(providers.names()) | set(r.smembers(k.providers)))
        pipe = r.pipeline(transaction=False)
        pipe.hgetall(k.stats_jobs)
        pipe.hgetall(k.stats_latency)
        pipe.hgetall(k.stats_cost)
        pipe.hgetall(k.stats_found)
        for p in names:
            pipe.zcard(k.slots(p))
        res = pipe.execute()
        counts, latency, cost, found = res[0], res[1], res[2], res[3]
        slots = {p: int(n or 0) for p, n in zip(names, res[4:], strict=True)}
        # the oldest queued job of a lane is at the head of one of its tenants' queues
        heads = [(p, lane, jid) for (p, lane), jids in queued_heads(r, k, names).items() for jid in jids]
        oldest: dict[tuple[str, str], float] = {}
        if heads:
            pipe = r.pipeline(transaction=False)
            for _, _, jid in heads:
                pipe.hget(k.job(jid), "updated_at")
            now = time.time()
            for (p, lane, _), at in zip(heads, pipe.execute(), strict=True):
                age = max(0.0, now - float(at)) if at else 0.0
                oldest[(p, lane)] = max(age, oldest.get((p, lane), 0.0))
        ages = [(p, lane, age) for (p, lane), age in oldest.items()]
        budgets = [b for reader in BUDGET_READERS for b in reader(r, k)]
        yield from self._families(counts, latency, cost, slots, ages, budgets, found)

    def _families(self, counts: dict[str, str], latency: dict[str, str], cost: dict[str, str],
                  slots: dict[str, int], ages: list[tuple[str, str, float]],
                  budgets: Iterable[tuple[str, float, float]] = (), found: dict[str, str] | None = None
                  ) -> Iterator[Metric]:
        from editq import providers

        jobs = GaugeMetricFamily("editq_jobs", "Jobs in each active state, by provider and lane (from Redis)",
                                 labels=["state", "provider", "lane"])
        finished = CounterMetricFamily("editq_jobs_finished", "Jobs that reached a terminal state, ever (from Redis)",
                                       labels=["state", "provider", "lane"])
        waiting: dict[str, int] = {}
        for state, provider, lane, n in parse_job_counts(counts):
            if state in TERMINAL_STATES:
                finished.add_metric([state, provider, lane], n)
            else:
                jobs.add_metric([state, provider, lane], n)
                if state in ("queued", "retry_wait"):
                    waiting[provider] = waiting.get(provider, 0) + n
        inflight = GaugeMetricFamily("editq_provider_inflight", "Jobs holding a provider slot (from Redis)",
                                     labels=["provider"])
        cap = GaugeMetricFamily("editq_provider_cap", "The provider's concurrency cap (EDITQ_<P>_CONCURRENCY)",
                                labels=["provider"])
        est = GaugeMetricFamily("editq_provider_latency_estimate_seconds",
                                "Recent provider latency, shared by the workers (the backlog's L)", labels=["provider"])
        backlog = GaugeMetricFamily("editq_backlog_provider_seconds",
                                    "Queued and retry-waiting jobs x provider latency / cap: the seconds of provider "
                                    "work waiting (scale on this)", labels=["provider"])
        for p, used in slots.items():
            try:
                c = max(1, providers.settings_of(p).concurrency)
            except KeyError:
                continue
            lat = float(latency.get(p) or DEFAULT_LATENCY_S)
            inflight.add_metric([p], used)
            cap.add_metric([p], c)
            est.add_metric([p], lat)
            backlog.add_metric([p], backlog_provider_seconds(waiting.get(p, 0), lat, c))
        oldest = GaugeMetricFamily("editq_oldest_queued_job_age_seconds",
                                   "Age of the job at the head of each pending list (0: none queued)",
                                   labels=["provider", "lane"])
        for p, lane, age in ages:
            oldest.add_metric([p, lane], age)
        spent = CounterMetricFamily("editq_cost_usd", "USD of succeeded jobs as priced in their manifests "
                                    "(from Redis)", labels=["provider"])
        for p, usd in cost.items():
            spent.add_metric([p], float(usd))
        budget_cap = GaugeMetricFamily("editq_budget_cap_usd", "Each budget's cap (batch or tenant day)",
                                       labels=["scope"])
        budget_left = GaugeMetricFamily("editq_budget_remaining_usd", "Money left in each budget (cap minus "
                                        "committed and spent)", labels=["scope"])
        for scope, cap_usd, left_usd in budgets:
            budget_cap.add_metric([scope], cap_usd)
            budget_left.add_metric([scope], left_usd)
        finishes = CounterMetricFamily("editq_provider_finished", "Requests the provider finished, by how editq "
                                       "learned it: webhook, poll (safety net), sweep (request history), submit "
                                       "(synchronous) (from Redis)", labels=["provider", "via"])
        for key, total in (found or {}).items():
            name, _, via = key.partition("|")
            finishes.add_metric([name, via], int(total))
        yield from (jobs, finished, inflight, cap, est, backlog, oldest, spent, budget_cap, budget_left, finishes)


_registered = False


def register_redis_collector() -> None:
    """Add the Redis gauges to this process's registry (once; a process that never serves metrics skips it)."""
    global _registered
    if not _registered:
        REGISTRY.register(RedisCollector())
        _registered = True
