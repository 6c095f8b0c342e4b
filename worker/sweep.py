"""The sweep: completions whose webhook was lost, found in the provider's own list of requests.

With webhooks on, a lost delivery used to be found by the job's safety-net poll (one status call per job, first
after 1.5 x the provider's median latency, at least `poll_quiet_min_s`). Providers that keep a list of their requests
(fal's request history, Replicate's list of predictions) let one call find them for every job at once: every
`sweep_interval_s`, while the provider holds jobs of ours, one `editq.sweep(provider)` task

1. takes the provider's sweep lease (`Keys.sweep_lock`, a token with a TTL: one sweep of a provider at a time
   across every worker and host; a lost worker's lease runs out after `sweep_lease_s`);
2. lists the requests of the window [oldest job the provider holds (its slot's claim time) - `sweep_margin_s`,
   now), at most `sweep_lookback_s` back and `sweep_max_pages` pages. The window starts before any request of
   ours still open was sent, so it is complete whether the provider filters on the time a request was sent,
   created or ended (fal's docs do not say which);
3. hands every finished request whose job is still `submitted` (waiting for its webhook) to the normal poll
   path (`editq.poll(provider, ids, "sweep")`): the same status/result calls, the same state-machine move and
   its idempotency as a webhook or the safety net. A real webhook arriving after that finds the job moved on
   and changes nothing; so does a second sweep;
4. records the window it read (its watermark), the pages and what it found in `Keys.sweep_mark`.

What is provider-specific (the list request, reading a page, following its cursor) is pure translation in the
provider's protocol (`history_request`, `parse_history`); the calls are made here, through the provider's
client, and nothing here waits on a provider longer than one list call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from editq import providers
from editq.providers.types import Listed
from editq.worker import metrics
from editq.worker.errors import ProviderError
from editq.worker.provider_client import client_for
from editq.worker.state import State

if TYPE_CHECKING:
    from editq.worker.pipeline import Pipeline

log = structlog.get_logger("editq.sweep")

POLL_GROUP = 50  # jobs handed to one poll task


@dataclass
class SweepResult:
    """What one sweep did: `outcome` is swept, idle (no job at the provider), busy (another sweep runs), held
    (the provider asked pollers to wait) or error; `found` are the jobs handed to the poll path."""

    outcome: str
    start: float = 0.0
    end: float = 0.0
    pages: int = 0
    listed: int = 0
    truncated: bool = False
    found: list[str] = field(default_factory=list)


def sweeps(provider: str) -> bool:
    """Whether `provider` is swept: it has a request history and its sweep is on."""
    return providers.protocol_of(provider).history_request(0.0, 1.0) is not None


def window(oldest_claim: float, now: float, margin_s: float, lookback_s: float) -> tuple[float, float]:
    """The window a sweep lists: from the oldest job the provider holds (less the margin) to now."""
    return max(oldest_claim - margin_s, now - lookback_s), now


def waiting(items: list[Listed], jobs: list[str | None], states: list[str | None]) -> list[str]:
    """The jobs to hand over: finished requests of ours whose job still waits in `submitted` (each once)."""
    out: list[str] = []
    for item, jid, state in zip(items, jobs, states, strict=True):
        if item.done and jid and state == State.submitted.value and jid not in out:
            out.append(jid)
    return out


class Sweeper:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.r = pipeline.r
        self.k = pipeline.k
        self.settings = pipeline.settings

    def due(self, provider: str) -> bool:
        """Called by the tick: True (once per interval, across every worker) when `provider` should be swept now."""
        s = self.settings
        if s.sweep_interval_s <= 0 or not self.r.zcard(self.k.slots(provider)):
            return False
        return bool(self.r.set(self.k.sweep_due(provider), "1", nx=True, px=max(1, int(s.sweep_interval_s * 1000))))

    async def sweep(self, provider: str) -> SweepResult:
        s = self.settings
        lock = self.r.lock(self.k.sweep_lock(provider), timeout=s.sweep_lease_s, blocking=False)
        if not lock.acquire(blocking=False):
            return self._done(provider, SweepResult("busy"))
        try:
            return self._done(provider, await self._sweep(provider))
        except ProviderError as exc:
            log.warning("sweep failed", provider=provider, error=exc.reason[:300])
            return self._done(provider, SweepResult("error"))
        finally:
            try:
                lock.release()
            except Exception:  # the lease ran out (a sweep longer than sweep_lease_s): another may have it now
                log.warning("sweep lease lost before its end", provider=provider)

    async def _sweep(self, provider: str) -> SweepResult:
        s = self.settings
        if self.r.pttl(self.k.backoff_poll(provider)) > 0:
            return SweepResult("held")  # the provider asked pollers to wait: so does the sweep
        oldest = self.r.zrange(self.k.slots(provider), 0, 0, withscores=True)
        if not oldest:
            return SweepResult("idle")
        adapter = providers.protocol_of(provider)
        start, end = window(float(oldest[0][1]), time.time(), s.sweep_margin_s, s.sweep_lookback_s)
        request = adapter.history_request(start, end)
        client = client_for(provider)
        result = SweepResult("swept", start, end)
        items: list[Listed] = []
        while request is not None and result.pages < s.sweep_max_pages:
            answer = await client.send(request)
            result.pages += 1
            page = adapter.parse_history(answer, request)
            items += page.items
            request = page.next
        result.listed, result.truncated = len(items), request is not None
        done = [i for i in items if i.done]
        pipe = self.r.pipeline(transaction=False)
        for item in done:
            pipe.get(self.k.request(provider, item.request_id))
        jobs = pipe.execute() if done else []
        for jid in jobs:
            if jid:
                pipe.hget(self.k.job(jid), "state")
            else:
                pipe.echo("")
        states = pipe.execute() if done else []
        result.found = waiting(done, jobs, states)
        from editq.worker.pipeline import POLL_TASK_LEASE_S

        now = time.time()
        for i in range(0, len(result.found), POLL_GROUP):
            group = result.found[i:i + POLL_GROUP]
            for jid in group:  # handed over: the safety net need not poll it meanwhile
                self.p.store.reschedule(self.k.inflight, jid, now + POLL_TASK_LEASE_S)
            self.p.kick.poll(provider, group, via="sweep")
        if result.truncated:
            log.warning("sweep window longer than sweep_max_pages; the rest waits", provider=provider,
                        pages=result.pages)
        return result

    def _done(self, provider: str, result: SweepResult) -> SweepResult:
        metrics.SWEEPS.labels(provider, result.outcome).inc()
        metrics.SWEEP_CALLS.labels(provider).inc(result.pages)
        metrics.SWEEP_FOUND.labels(provider).inc(len(result.found))
        if result.outcome != "swept":
            return result
        self.r.hset(self.k.sweep_mark(provider), mapping={
            "start": repr(result.start), "end": repr(result.end), "at": repr(time.time()), "pages": result.pages,
            "listed": result.listed, "found": len(result.found), "truncated": int(result.truncated)})
        if result.found:
            log.info("sweep found finished requests", provider=provider, jobs=len(result.found), pages=result.pages)
        return result
