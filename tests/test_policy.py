"""The one policy (worker/policy.py) as tables: status -> kind, error x attempt x route -> decision."""

from __future__ import annotations

import pytest

from editq.worker import policy
from editq.worker.errors import ErrorKind, ProviderError, StorageUnavailable
from editq.worker.storage import StorageError


def fixed(lo: float, hi: float) -> float:
    return 1.0  # no jitter: the tables are exact


@pytest.mark.parametrize(("status", "kind"), [
    (400, ErrorKind.terminal), (401, ErrorKind.terminal), (403, ErrorKind.terminal), (404, ErrorKind.terminal),
    (422, ErrorKind.terminal), (408, ErrorKind.retryable), (409, ErrorKind.retryable), (425, ErrorKind.retryable),
    (429, ErrorKind.retryable), (500, ErrorKind.retryable), (502, ErrorKind.retryable), (503, ErrorKind.retryable),
    (504, ErrorKind.retryable), (302, ErrorKind.unknown), (200, ErrorKind.unknown),
])
def test_status_table(status: int, kind: ErrorKind) -> None:
    assert policy.kind_for_status(status) is kind


@pytest.mark.parametrize(("headers", "seconds"), [
    ({"retry-after": "7"}, 7.0),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
    ({"retry-after": "Thu, 01 Jan 1970 00:01:40 GMT"}, 40.0),  # an HTTP date, 40 s after `now`
    ({"retry-after": "-3"}, 0.0),
    ({"retry-after": "soon"}, None),
    ({}, None),
])
def test_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    assert policy.parse_retry_after(headers, now=60.0) == seconds


E = ErrorKind
ROUTE = ["fal", "replicate"]


@pytest.mark.parametrize(("kind", "attempt", "route", "provider", "retry_after", "expected"), [
    (E.retryable, 1, ["fal"], "fal", None, policy.Retry(2.0)),
    (E.retryable, 2, ["fal"], "fal", None, policy.Retry(4.0)),
    (E.retryable, 2, ["fal"], "fal", 30.0, policy.Retry(30.0)),  # the provider's Retry-After wins when longer
    (E.retryable, 2, ["fal"], "fal", 9999.0, policy.Retry(300.0)),  # ...capped
    (E.retryable, 3, ["fal"], "fal", None, policy.Fail()),  # attempts used up, no route
    (E.retryable, 3, ROUTE, "fal", None, policy.Reroute("replicate")),
    (E.retryable, 3, ROUTE, "replicate", None, policy.Fail()),  # the route's last provider
    (E.unknown, 1, ["fal"], "fal", None, policy.Retry(2.0)),  # unknown: retried once
    (E.unknown, 2, ["fal"], "fal", None, policy.Fail()),
    (E.unknown, 2, ROUTE, "fal", None, policy.Reroute("replicate")),
    (E.terminal, 1, ["fal"], "fal", None, policy.Fail()),
    (E.terminal, 1, ROUTE, "fal", None, policy.Fail()),  # a refused request is refused everywhere
])
def test_decide(kind: ErrorKind, attempt: int, route: list[str], provider: str, retry_after: float | None,
                expected: policy.Decision) -> None:
    err = ProviderError(kind, "x", retry_after_s=retry_after)
    got = policy.decide(err, attempt=attempt, max_attempts=3, route=route, provider=provider, base_s=2.0,
                        cap_s=300.0, rand=fixed)
    assert got == expected


@pytest.mark.parametrize(("kind", "counts"), [(E.retryable, True), (E.unknown, True), (E.terminal, False)])
def test_circuit_counts_every_failure_but_a_refused_request(kind: ErrorKind, counts: bool) -> None:
    assert policy.counts_for_circuit(ProviderError(kind, "x")) is counts


@pytest.mark.parametrize(("polls", "webhooks", "cap", "retry_after", "latency", "expected"), [
    (1, False, None, None, None, 7.5),
    (12, False, None, None, None, 60.0),  # grows to poll_max_s
    (1, True, None, None, None, 60.0),  # with webhooks the poll is a safety net
    (1, True, 20.0, None, None, 20.0),  # outputs that expire: never later than the provider's cap
    (1, False, None, 45.0, None, 45.0),  # never sooner than the provider's Retry-After
    # with webhooks, a request unheard of for 1.5x the provider's median latency is polled: a late or lost
    # delivery does not hold its slot for the whole safety-net period
    (0, True, None, None, 4.0, 6.0),
    (1, True, None, None, 4.0, 9.0),  # then 1.5x per poll...
    (6, True, None, None, 4.0, 60.0),  # ...up to the safety net
    (0, True, None, None, 2.0, 5.0),  # never sooner than QUIET_MIN_S
    (0, True, None, None, 45.0, 60.0),
])
def test_poll_delay(polls: int, webhooks: bool, cap: float | None, retry_after: float | None,
                    latency: float | None, expected: float) -> None:
    assert policy.poll_delay(polls, base_s=5.0, max_s=60.0, webhooks=webhooks, webhook_s=60.0, cap_s=cap,
                             retry_after_s=retry_after, latency_s=latency) == expected


@pytest.mark.parametrize(("errors", "scheduled", "retry_after", "expected"), [
    (1, 33.0, None, 2.0),  # a poll answered 503 is repeated after 2 s, not on the schedule's next step
    (3, 33.0, None, 8.0),  # then 4 s, 8 s ...
    (6, 33.0, None, 33.0),  # never later than the schedule itself
    (1, 33.0, 40.0, 40.0),  # never sooner than a Retry-After
])
def test_an_unanswered_poll_is_repeated_soon(errors: int, scheduled: float, retry_after: float | None,
                                             expected: float) -> None:
    assert policy.poll_error_delay(errors, scheduled_s=scheduled, retry_after_s=retry_after,
                                   rand=lambda lo, hi: 1.0) == expected


def test_backoff_jitters_within_a_fifth_and_caps() -> None:
    assert policy.backoff(1, 2.0, 300.0, rand=lambda lo, hi: lo) == pytest.approx(1.6)
    assert policy.backoff(20, 2.0, 300.0, rand=lambda lo, hi: hi) == pytest.approx(360.0)


# ---- overnight: waits that do not count, a give-up horizon, moderation ------------------------------------------
@pytest.mark.parametrize(("kind", "attempt", "route", "provider", "waited", "expected"), [
    (E.retryable, 3, ["fal"], "fal", 0.0, policy.Retry(8.0)),  # attempts used up, no route: keeps waiting
    (E.retryable, 12, ["fal"], "fal", 3000.0, policy.Retry(300.0)),  # ...with the back-off capped
    (E.retryable, 12, ["fal"], "fal", 3600.0, policy.Fail()),  # the give-up horizon is reached
    (E.retryable, 3, ROUTE, "fal", 0.0, policy.Reroute("replicate")),  # a route falls back first
    (E.retryable, 3, ROUTE, "replicate", 0.0, policy.Retry(8.0)),  # ...and its last provider keeps waiting
    (E.unknown, 2, ["fal"], "fal", 0.0, policy.Fail()),  # an answer we cannot read is not waited for
    (E.terminal, 1, ["fal"], "fal", 0.0, policy.Fail()),
])
def test_decide_within_the_give_up_horizon(kind: ErrorKind, attempt: int, route: list[str], provider: str,
                                           waited: float, expected: policy.Decision) -> None:
    err = ProviderError(kind, "x")
    got = policy.decide(err, attempt=attempt, max_attempts=3, route=route, provider=provider, base_s=2.0,
                        cap_s=300.0, waited_s=waited, give_up_s=3600.0, rand=fixed)
    assert got == expected


@pytest.mark.parametrize(("err", "counts"), [
    (ProviderError(E.retryable, "429", status_code=429), False),
    (ProviderError(E.retryable, "503 with Retry-After", status_code=503, retry_after_s=5.0), False),
    (ProviderError(E.retryable, "503", status_code=503), True),
    (ProviderError(E.retryable, "timeout"), True),
    (ProviderError(E.terminal, "insufficient_quota", status_code=429), True),  # a 429 waiting cannot fix
])
def test_rate_limit_waits_do_not_use_up_attempts(err: ProviderError, counts: bool) -> None:
    assert policy.counts_attempt(err) is counts


@pytest.mark.parametrize("route", [["openai"], ["openai", "fal"]])
@pytest.mark.parametrize("stage", ["input", "output", "unknown"])
def test_moderation_is_never_retried_on_the_same_provider(route: list[str], stage: str) -> None:
    err = ProviderError(E.retryable, "moderation_blocked", status_code=400, moderation=stage)
    assert err.kind is E.terminal and err.info(1).moderation_stage == stage
    got = policy.decide(err, attempt=1, max_attempts=3, route=route, provider="openai", base_s=2.0, cap_s=300.0,
                        waited_s=0.0, give_up_s=3600.0, rand=fixed)
    assert got == policy.Fail()


def _outage(route: list[str], outage_s: float, *, give_up_s: float) -> tuple[str, float]:
    """Replay the policy over a provider outage of `outage_s` (every attempt on 'fal' fails with 503 until
    then; 429s with Retry-After come first): where the job ends and when. Attempts counted as the
    pipeline counts them (rate-limit waits left out)."""
    now, attempts, free, since = 0.0, 0, 0, None
    provider = route[0]
    while True:
        attempts += 1
        if provider != "fal" or now >= outage_s:
            return f"done on {provider}", now
        err = (ProviderError(E.retryable, "429", status_code=429, retry_after_s=30.0) if attempts <= 5
               else ProviderError(E.retryable, "503", status_code=503))
        free += 0 if policy.counts_attempt(err) else 1
        since = now if since is None else since
        got = policy.decide(err, attempt=attempts - free, max_attempts=3, route=route, provider=provider,
                            base_s=2.0, cap_s=600.0, waited_s=now - since, give_up_s=give_up_s, rand=fixed)
        if isinstance(got, policy.Fail):
            return "failed", now
        if isinstance(got, policy.Reroute):
            provider = got.provider
        else:
            now += got.delay_s


def test_an_hour_long_outage_ends_with_the_job_done() -> None:
    assert _outage(["fal", "replicate"], 3600.0, give_up_s=12 * 3600)[0] == "done on replicate"
    outcome, at = _outage(["fal"], 3600.0, give_up_s=12 * 3600)
    assert outcome == "done on fal" and 3600.0 <= at <= 3600.0 + 600.0  # back within one capped back-off
    assert _outage(["fal"], 5 * 3600.0, give_up_s=3600.0)[0] == "failed"  # past a short horizon it gives up


# ---- outcomes (worker/outcomes.py): what `editq jobs --state` and `editq rerun --only` call a finished job ----
@pytest.mark.parametrize(("state", "error", "expected"), [
    ("succeeded", None, "succeeded"),
    ("cancelled", None, "cancelled"),
    ("submitted", None, "submitted"),
    ("failed", {"reason": "fal: internal error", "kind": "terminal"}, "failed"),
    ("failed", {"reason": "openai edit: moderation_blocked", "moderation_stage": "output"}, "moderated"),
    ("failed", {"reason": "openai_batch: not run: batch_expired in batch b1 (not billed; failed by unrun_policy=fail)",
                "provider_code": "batch_expired"}, "expired"),
    ("failed", {"reason": "openai_batch: not run: expired in batch b1 (not billed; failed by unrun_policy=fail)"},
     "expired"),
    ("failed", {"reason": "fal: no result within 3600s", "kind": "retryable"}, "expired"),
    ("failed", {"reason": "fal: Request timed out before it could start.", "provider_code": "request_timeout"},
     "expired"),
    ("failed", None, "failed"),
])
def test_outcome_of_a_job(state: str, error: dict[str, str] | None, expected: str) -> None:
    from editq.worker.outcomes import outcome

    assert outcome(state, error) == expected


def test_failure_label_counts_one_failure_of_many_jobs_once() -> None:
    from editq.worker.outcomes import failure_label

    a = failure_label("openai edit: HTTP 400: blocked; request ID req_ec69f47f90884e87a462e8f9115e42fa")
    b = failure_label("openai edit: HTTP 400: blocked; request ID req_0123456789abcdef0123456789abcdef")
    assert a == b == "openai edit: HTTP 400: blocked; request ID …"


def test_the_running_median_ignores_a_few_late_results() -> None:
    """The poll schedule with webhooks starts from the provider's median latency: 10 % of results learned at
    the 60 s safety net (lost webhooks) must not drag it there (a mean of these samples is ~9.6 s)."""
    from editq.worker.events import running_median

    m = None
    for i in range(300):
        m = running_median(m, 60.0 if i % 10 == 9 else 4.0)
    assert m is not None and 3.0 < m < 5.5
    for _ in range(100):  # and it follows a provider that really got slower
        m = running_median(m, 30.0)
    assert 25.0 < m < 35.0


# ---- collect: our S3 down is our outage ---------------------------------------------------------------------

GIVE_UP = 3000.0


@pytest.mark.parametrize(("err", "age_s", "counts"), [
    (StorageUnavailable("S3 PUT: ConnectError"), 10.0, False),  # refused / reset / timeout: ours
    (StorageUnavailable("S3 PUT: HTTP 503", status_code=503), 10.0, False),  # S3's 5xx: ours
    (StorageUnavailable("S3 PUT: HTTP 500", status_code=500), GIVE_UP - 1, False),
    (StorageUnavailable("S3 PUT: ConnectError"), GIVE_UP, True),  # the provider has dropped the output by now
    (StorageError("S3 PUT k: HTTP 403 AccessDenied"), 10.0, True),  # credentials / policy: the job's attempts
    (ProviderError(ErrorKind.retryable, "output download: HTTP 502", status_code=502), 10.0, True),  # provider
    (ProviderError(ErrorKind.retryable, "output download: ReadTimeout"), 10.0, True),
    (ValueError("bad base64"), 10.0, True),
])
def test_which_collect_failures_use_up_an_attempt(err: BaseException, age_s: float, counts: bool) -> None:
    assert policy.collect_try_counts(err, output_age_s=age_s, outage_give_up_s=GIVE_UP) is counts


@pytest.mark.parametrize(("tries", "outage", "delay"), [
    (1, False, 2.0), (4, False, 16.0), (8, False, 120.0),  # the collect lease caps it
    (1, True, 2.0), (4, True, 16.0), (5, True, 30.0), (40, True, 30.0),  # our S3 down: every 30 s at most
])
def test_collect_delay(tries: int, outage: bool, delay: float) -> None:
    assert policy.collect_delay(tries, outage=outage, lease_s=120.0, outage_max_s=30.0, rand=fixed) == delay


def test_a_storage_outage_is_a_retryable_provider_error() -> None:
    err = StorageUnavailable("S3 PUT: HTTP 503", status_code=503)
    assert err.kind is ErrorKind.retryable and err.status_code == 503 and isinstance(err, ProviderError)
