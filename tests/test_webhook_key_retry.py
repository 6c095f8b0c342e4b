"""A receiver that holds no webhook key retries the fetch within seconds, not a minute.

Seen in the 1,000-job chaos run: the receiver's start-up fetch of fal's JWKS was answered 503 (the sandbox's
poll fault hits every GET on a provider, its key endpoints too, as a real provider's 5xx would), that failed
fetch counted towards the once-a-minute refetch limit, and every fal delivery was refused ("signature does not
match any fal key") for the next minute, after each receiver restart too. Real receiver and sandbox over HTTP:
the key endpoint fails while the receiver starts, then recovers; a valid delivery, retried the way a provider
retries (every half second here), must be accepted long before the minute is out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from editq.producer.stack import LocalStack, scoped_env, wait_until
from editq.worker.state import JobStore, State
from editq.worker.webhook_auth import delivery_url
from tests.conftest import SANDBOX_SEED
from tests.deliveries import FAL, fal_result, submitted_job
from tests.e2e import configure_sandbox

RETRY_EVERY_S = 0.5
GIVE_UP_S = 20.0  # the limit while no key is held is 1 s (then 2, 4, ...); the old rule refused for 60 s


@pytest.fixture
def deaf_start() -> Iterator[LocalStack]:
    """Receiver + sandbox, no worker; every GET on fal's API (its JWKS too) answered 503 while the receiver
    starts."""
    faults = json.dumps({"fal": {"poll_5xx_rate": 1.0}})
    with scoped_env(), LocalStack(workers=0, sandbox_opts={"seed": SANDBOX_SEED, "provider_faults": faults}) as s:
        yield s


def _fal_503s(stack: LocalStack) -> int:
    stats = httpx.get(stack.env["EDITQ_SANDBOX_URL"] + "/_sandbox/stats", timeout=10).json()
    return int(stats["providers"]["fal"]["rejected"].get("poll_5xx", 0))


def test_a_receiver_whose_key_fetch_failed_accepts_deliveries_again_within_seconds(deaf_start: LocalStack) -> None:
    stack = deaf_start
    # the receiver's start-up fetch of the JWKS has been answered 503 (and nothing else asked fal for anything)
    wait_until(lambda: _fal_503s(stack) >= 1, 30, "the receiver's JWKS fetch")
    configure_sandbox(stack, {"provider_faults": {}})  # fal's key endpoint answers again
    job_id, rid = submitted_job("keyretry")
    body = fal_result(rid)
    url = delivery_url(stack.env["EDITQ_WEBHOOK_BASE_URL"], "fal", job_id)

    answers: list[int] = []
    started = time.monotonic()
    while time.monotonic() - started < GIVE_UP_S:  # the provider's retries: each one signed afresh
        headers = {**FAL.sign(body, request_id=rid, timestamp=int(time.time())), "content-type": "application/json"}
        answers.append(httpx.post(url, content=body, headers=headers, timeout=10).status_code)
        if answers[-1] == 200:
            break
        time.sleep(RETRY_EVERY_S)  # the sender's retry delay, not a wait for anything in particular

    assert answers[-1] == 200, f"refused for {GIVE_UP_S:.0f} s: {answers}"
    assert set(answers[:-1]) <= {401}  # only refusals before, while the receiver held no key
    view = JobStore().get(job_id)
    assert view is not None and view.state == State.ready
