"""The one policy (worker/policy.py) as tables: status -> kind, error x attempt x route -> decision."""

from __future__ import annotations

import pytest

from worker import policy
from worker.errors import ErrorKind, ProviderError


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


@pytest.mark.parametrize(("polls", "webhooks", "cap", "retry_after", "expected"), [
    (1, False, None, None, 7.5),
    (12, False, None, None, 60.0),  # grows to poll_max_s
    (1, True, None, None, 60.0),  # with webhooks the poll is a safety net
    (1, True, 20.0, None, 20.0),  # outputs that expire: never later than the provider's cap
    (1, False, None, 45.0, 45.0),  # never sooner than the provider's Retry-After
])
def test_poll_delay(polls: int, webhooks: bool, cap: float | None, retry_after: float | None, expected: float) -> None:
    assert policy.poll_delay(polls, base_s=5.0, max_s=60.0, webhooks=webhooks, webhook_s=60.0, cap_s=cap,
                             retry_after_s=retry_after) == expected


def test_backoff_jitters_within_a_fifth_and_caps() -> None:
    assert policy.backoff(1, 2.0, 300.0, rand=lambda lo, hi: lo) == pytest.approx(1.6)
    assert policy.backoff(20, 2.0, 300.0, rand=lambda lo, hi: hi) == pytest.approx(360.0)
