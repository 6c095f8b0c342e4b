"""One policy: what a provider's answer means and what happens next.

Pure functions, table-tested (tests/test_policy.py):
* `kind_for_status`: the one HTTP status table (retryable / terminal / unknown);
* `parse_retry_after`: `retry-after-ms` / `retry-after` (seconds or an HTTP date);
* `decide`: retry (after how long), reroute to the next provider of the route, or fail, from the error,
  the attempt count and the route;
* `backoff`: exponential with jitter, capped;
* the circuit breaker's rule (`counts_for_circuit`, `CIRCUIT_FAILURES`, `CIRCUIT_OPEN_S`);
* collect retries: whether a failed collect uses up one of the job's collect attempts (`collect_try_counts`: not
  when our own S3 was down and the provider still keeps the output) and when it is tried again (`collect_delay`).
The pipeline applies the decisions; nothing else decides them.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from editq.worker.errors import ErrorKind, ProviderError, StorageUnavailable

CIRCUIT_FAILURES = 5  # consecutive non-terminal failures of one provider open its circuit...
CIRCUIT_OPEN_S = 60  # ...for this long; routed jobs skip to their next provider meanwhile
UNKNOWN_RETRIES = 1  # an unknown failure is retried this many times, then treated as terminal


# ---- the status table ----------------------------------------------------------------------------------------
def kind_for_status(status: int) -> ErrorKind:
    """408 timeout, 409 conflict, 425 too early, 429 rate limit and every 5xx: retryable; other 4xx:
    terminal (the request itself is wrong, or the account cannot pay); anything else: unknown."""
    if status in (408, 409, 425, 429) or status >= 500:
        return ErrorKind.retryable
    if 400 <= status < 500:
        return ErrorKind.terminal
    return ErrorKind.unknown


def parse_retry_after(headers: Mapping[str, str] | object, *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


# ---- what happens next ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Retry:
    delay_s: float


@dataclass(frozen=True)
class Reroute:
    provider: str


@dataclass(frozen=True)
class Fail:
    pass


Decision = Retry | Reroute | Fail


def backoff(attempt: int, base_s: float, cap_s: float, rand: Callable[[float, float], float] = random.uniform) -> float:
    """base * 2^(attempt-1), capped, with +-20 % jitter (so a wave of failures does not retry in step)."""
    return float(min(cap_s, base_s * (2 ** max(0, attempt - 1))) * rand(0.8, 1.2))


def next_provider(route: Sequence[str], provider: str) -> str | None:
    idx = route.index(provider) if provider in route else 0
    return route[idx + 1] if idx + 1 < len(route) else None


def retryable(err: ProviderError, attempt: int) -> bool:
    return err.kind is ErrorKind.retryable or (err.kind is ErrorKind.unknown and attempt <= UNKNOWN_RETRIES)


def counts_attempt(err: ProviderError) -> bool:
    """A 429 or an answer carrying Retry-After says "not now", not "this failed": waiting for it does not
    use up one of the job's attempts (the caller leaves it out of `attempt`)."""
    return not (err.status_code == 429 or err.retry_after_s is not None) or err.kind is ErrorKind.terminal


def decide(err: ProviderError, *, attempt: int, max_attempts: int, route: Sequence[str], provider: str,
           base_s: float, cap_s: float, waited_s: float = 0.0, give_up_s: float = 0.0,
           rand: Callable[[float, float], float] = random.uniform) -> Decision:
    """Retry while attempts remain (after the longer of the back-off and the provider's Retry-After);
    then a non-terminal failure moves to the next provider of the route; a retryable failure with no
    provider left keeps waiting (back-off capped at `cap_s`) until it has been failing for `give_up_s`
    (`waited_s`: since its first failure), so an outage shorter than that ends with the job done;
    otherwise fail. A moderation block is never retried on the same provider. `attempt` counts only
    the attempts that count (`counts_attempt`)."""
    if err.moderation or err.kind is ErrorKind.terminal:
        return Fail()
    wait = min(err.retry_after_s or 0.0, cap_s)
    if retryable(err, attempt) and attempt < max_attempts:
        return Retry(max(wait, backoff(attempt, base_s, cap_s, rand)))
    nxt = next_provider(route, provider)
    if nxt is not None:
        return Reroute(nxt)
    if err.kind is ErrorKind.retryable and waited_s < give_up_s:
        return Retry(max(wait, backoff(attempt, base_s, cap_s, rand)))
    return Fail()


def counts_for_circuit(err: ProviderError) -> bool:
    """A terminal failure says the request was wrong, not that the provider is down."""
    return err.kind is not ErrorKind.terminal


QUIET_MIN_S = 5.0  # with webhooks on, a request not heard of for this long (or 1.5x its latency) is polled
QUIET_FACTOR = 1.5  # ... times the provider's running median latency


def poll_delay(polls: int, *, base_s: float, max_s: float, webhooks: bool, webhook_s: float,
               cap_s: float | None, retry_after_s: float | None = None, latency_s: float | None = None,
               quiet_min_s: float = QUIET_MIN_S) -> float:
    """When to poll a request again (`polls`: how many times it was polled). Without webhooks: grows 1.5x
    per poll up to `max_s`. With webhooks the poll is a safety net for a late or lost delivery: first when
    the request has gone unheard for QUIET_FACTOR (1.5) times the provider's recent median latency (`latency_s`,
    at least `quiet_min_s`), then 1.5x longer each time, up to `webhook_s` (with no latency known yet: `webhook_s`).
    A delivery that arrives in time moves the job on and the poll never happens; one that does not would
    otherwise hold the provider slot and keep the batch's last jobs waiting for the full `webhook_s` (a
    40 s late delivery held dispatch for ~35 s). Never later than the provider's cap (outputs that
    expire); never sooner than a Retry-After the provider asked for."""
    delay = min(max_s, base_s * (1.5 ** min(polls, 12)))
    if webhooks:
        quiet = max(quiet_min_s, QUIET_FACTOR * latency_s) if latency_s else webhook_s
        delay = min(webhook_s, quiet * (1.5 ** min(polls, 12)))
    if cap_s:
        delay = min(delay, cap_s)
    if retry_after_s:
        delay = max(delay, retry_after_s)
    return delay


POLL_ERROR_BASE_S = 2.0  # an unanswered poll is repeated after 2 s, 4 s, 8 s ... (never later than its schedule)


def poll_error_delay(errors: int, *, scheduled_s: float, retry_after_s: float | None = None,
                     rand: Callable[[float, float], float] = random.uniform) -> float:
    """When to poll again after a poll the provider did not answer (5xx, 429, a transport error; `errors`: how
    many in a row). Such a poll learned nothing, so it does not move the job along its poll schedule: it is
    repeated after a short back-off, never later than the schedule's own next poll (`scheduled_s`) and never
    sooner than a Retry-After the provider asked for. (Counting it as a poll made the next safety-net poll
    1.5x later: a 503 on the first poll of a job whose webhook was lost cost a chaos run's last job 49 s.)"""
    return max(retry_after_s or 0.0, min(scheduled_s, backoff(errors, POLL_ERROR_BASE_S, scheduled_s, rand)))


# ---- collect (provider output -> our S3) ----------------------------------------------------------------------
COLLECT_BASE_S = 2.0  # a failed collect is tried again after 2 s, 4 s, 8 s ...


def collect_try_counts(err: BaseException, *, output_age_s: float, outage_give_up_s: float) -> bool:
    """Whether a failed collect uses up one of the job's collect attempts. An outage of our own S3
    (`StorageUnavailable`: connection refused or reset, a timeout, a 5xx) is ours, not the job's: it does not,
    as long as the provider still keeps the output (`output_age_s`, since the provider finished, below
    `outage_give_up_s`; fal and Replicate drop outputs about an hour after completion). Everything else does:
    a 4xx from S3 (credentials, bucket policy), a failed download from the provider, a bad output."""
    return not (isinstance(err, StorageUnavailable) and output_age_s < outage_give_up_s)


def collect_delay(tries: int, *, outage: bool, lease_s: float, outage_max_s: float,
                  rand: Callable[[float, float], float] = random.uniform) -> float:
    """When a failed collect is tried again (`tries`: its collect claims so far): back-off doubling from
    COLLECT_BASE_S, capped at the collect lease, or at `outage_max_s` while our S3 is down (so the job is
    stored within that long of S3 coming back)."""
    return backoff(tries, COLLECT_BASE_S, outage_max_s if outage else lease_s, rand)
