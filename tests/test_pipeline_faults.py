"""Steps that fail in ways other than a provider error, on real Redis and the real S3 server.

Each test drives a Pipeline on its own key prefix (the session stack's workers never see its jobs),
with the session stack's S3, and asserts on the job's state, its recorded failure and its count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from editq import providers
from editq.producer.stack import LocalStack
from editq.providers.types import Outcome
from editq.schemas.job import EditJob, InputRecord
from editq.schemas.settings import get_settings
from editq.worker import aio
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.keys import Keys
from editq.worker.pipeline import Pipeline
from editq.worker.state import JobStore, State
from editq.worker.storage import get_storage
from editq.worker.triggers import Kicker
from tests.conftest import unique


class _NoKicks(Kicker):
    """Wake-ups are recorded, not sent: the test runs each step itself."""

    def __init__(self) -> None:
        super().__init__()
        self.polls: list[tuple[str, list[str]]] = []
        self.finalizes: list[str] = []

    def dispatch(self, provider: str, synchronous: bool = False) -> None:
        return None

    def collect(self) -> None:
        return None

    def poll(self, provider: str, job_ids: list[str]) -> None:
        self.polls.append((provider, job_ids))

    def finalize(self, batch_id: str) -> None:
        self.finalizes.append(batch_id)


@pytest.fixture
def pipe(live: LocalStack) -> Iterator[Pipeline]:
    import redis

    settings = get_settings()
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    prefix = unique("editq-faults")
    p = Pipeline(store=JobStore(r, Keys(prefix)), storage=get_storage(), settings=settings, kick=_NoKicks())
    yield p
    for key in p.k.scan(r):
        r.delete(key)


def _job(batch: str) -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=unique("job"), batch_id=batch, prompt="p", images=["a.png"], inputs=[rec],
                   idempotency_key=unique("idem"), provider="fal")


def _ready(p: Pipeline, result: dict[str, object]) -> str:
    job = _job(unique("batch"))
    assert p.store.create(job)[0] == 1
    assert p.store.move(job.job_id, [State.queued], State.ready, fields={"result": json.dumps(result)}).ok
    return job.job_id


def _submitted(p: Pipeline) -> str:
    job = _job(unique("batch"))
    assert p.store.create(job)[0] == 1
    p.store.r.hincrby(p.k.job(job.job_id), "attempts", 1)
    assert p.store.move(job.job_id, [State.queued], State.submitting, score=time.time() + 60).ok
    handle = {"status_url": "https://queue.fal.run/x/status", "response_url": "https://queue.fal.run/x",
              "cancel_url": "https://queue.fal.run/x/cancel"}
    assert p.store.move(job.job_id, [State.submitting], State.submitted, score=time.time() - 1,
                        fields={"request_id": "rq-1", "handle": json.dumps(handle), "submitted_at": repr(time.time())}
                        ).ok
    return job.job_id


def test_a_collect_that_raises_anything_is_counted_and_fails_with_its_reason(pipe: Pipeline) -> None:
    """Bad base64 in a provider's answer raises binascii.Error inside storage, not a ProviderError: the
    job must not stay `collecting` forever; each attempt is recorded and counted, then it fails."""
    jid = _ready(pipe, {"outputs": [{"b64": "!!! not base64 !!!"}]})
    limit = pipe.settings.max_attempts + 2
    for attempt in range(1, limit + 1):
        assert aio.run(pipe.collect()) == 1
        view = pipe.store.get(jid)
        assert view is not None
        if attempt < limit:  # (the last one fails the job: its compact record keeps no collect bookkeeping)
            assert view.fields["collect_attempts"] == str(attempt)
            assert view.state is State.collecting
            assert view.fields["collect_failures"] == str(attempt)
            assert "Error" in view.fields["collect_error"]
            # the lease (a back-off now) runs out: the tick hands it back exactly like this
            assert pipe.store.move(jid, [State.collecting], State.ready, note="collect retry").ok
    view = pipe.store.get(jid)
    assert view is not None and view.state is State.failed
    error = json.loads(view.fields["error"])
    assert error["kind"] == "retryable" and "collect" in error["reason"]
    manifest = json.loads(get_storage().get_bytes(get_storage().manifest_key(view.batch_id, jid)))
    assert manifest["state"] == "failed"


def test_a_collect_lost_with_its_worker_is_counted_too(pipe: Pipeline) -> None:
    """Claims that never report (the worker died) still count: after the limit the job fails."""
    jid = _ready(pipe, {"outputs": [{"b64": "aGVsbG8="}]})
    limit = pipe.settings.max_attempts + 2
    for _ in range(limit):
        (claimed,) = aio.run(pipe._claim_ready(1))  # claimed, then the worker dies: no result, no failure written
        assert claimed.job_id == jid
        assert pipe.store.move(jid, [State.collecting], State.ready, note="collect retry").ok
    aio.run(pipe.collect())
    view = pipe.store.get(jid)
    assert view is not None and view.state is State.failed
    assert "not stored after" in json.loads(view.fields["error"])["reason"]


def test_the_collect_lease_is_a_setting(pipe: Pipeline) -> None:
    pipe.settings = pipe.settings.model_copy(update={"collect_lease_s": 7.0})
    jid = _ready(pipe, {"outputs": []})
    before = time.time()
    aio.run(pipe._claim_ready(1))
    score = pipe.store.r.zscore(pipe.k.collecting, jid)
    assert score is not None and before + 7.0 <= score <= time.time() + 7.0


def test_a_poll_answered_with_retry_after_holds_that_providers_polls(pipe: Pipeline) -> None:
    jid = _submitted(pipe)
    view = pipe.store.get(jid)
    assert view is not None
    err = ProviderError(ErrorKind.retryable, "fal status: HTTP 429", status_code=429, retry_after_s=40.0)
    adapter = __import__("providers").protocol_of("fal")
    aio.run(pipe._after_poll(adapter, view, err))
    score = pipe.store.r.zscore(pipe.k.inflight, jid)
    assert score is not None and score >= time.time() + 39  # this job waits at least as long as asked
    held = pipe.store.r.pttl(pipe.k.backoff_poll("fal"))
    assert 39_000 <= held <= 40_000
    # another job of the same provider comes due meanwhile: the tick holds it instead of polling
    other = _submitted(pipe)
    assert isinstance(pipe.kick, _NoKicks)
    pipe.tick()
    assert pipe.kick.polls == []
    other_score = pipe.store.r.zscore(pipe.k.inflight, other)
    assert other_score is not None and other_score >= time.time() + 38


def test_a_poll_the_provider_did_not_answer_is_repeated_within_seconds(pipe: Pipeline) -> None:
    """A safety-net poll (the webhook was lost) answered 503 learned nothing: the job is polled again after a
    short back-off, not 1.5x later along the schedule (in a chaos run that cost the last job 49 s)."""
    jid = _submitted(pipe)
    view = pipe.store.get(jid)
    assert view is not None
    adapter = providers.protocol_of("fal")
    err = ProviderError(ErrorKind.retryable, "fal status: HTTP 503", status_code=503)
    aio.run(pipe._after_poll(adapter, view, err, latency_s=16.0))  # schedule: 24 s, then 36 s
    score = pipe.store.r.zscore(pipe.k.inflight, jid)
    assert score is not None and score <= time.time() + 2 * 1.2  # 2 s (+-20 % jitter)
    after = pipe.store.get(jid)
    assert after is not None and after.state is State.submitted
    assert (after.fields["polls"], after.fields["poll_errors"]) == ("0", "1")  # not a step along the schedule
    aio.run(pipe._after_poll(adapter, after, Outcome.running(), latency_s=16.0))  # then answered: still running
    again = pipe.store.get(jid)
    assert again is not None and (again.fields["polls"], again.fields["poll_errors"]) == ("1", "0")
    score = pipe.store.r.zscore(pipe.k.inflight, jid)
    assert score is not None and score >= time.time() + 35  # the schedule goes on: 1.5 x 24 s


def test_outcome_running_keeps_the_job_submitted(pipe: Pipeline) -> None:
    jid = _submitted(pipe)
    view = pipe.store.get(jid)
    assert view is not None
    aio.run(pipe._after_poll(__import__("providers").protocol_of("fal"), view, Outcome.running()))
    after = pipe.store.get(jid)
    assert after is not None and after.state is State.submitted and after.fields["polls"] == "1"


def test_an_output_url_we_will_not_fetch_fails_the_job_at_once(pipe: Pipeline) -> None:
    jid = _ready(pipe, {"outputs": [{"url": "file:///etc/passwd"}]})
    assert aio.run(pipe.collect()) == 1
    view = pipe.store.get(jid)
    assert view is not None and view.state is State.failed
    error = json.loads(view.fields["error"])
    assert error["kind"] == "terminal" and "output URL refused" in error["reason"] and "file" in error["reason"]


def test_a_batch_manifest_that_fails_to_write_is_written_later(pipe: Pipeline) -> None:
    """Finalize used to pop the batch before it ran: one failed manifest write and the batch never got one."""
    from editq.worker.storage import Storage

    job = _job(unique("batch"))
    bid = job.batch_id
    assert pipe.store.create(job)[0] == 1
    manifest = '{"state": "cancelled"}'
    assert pipe.store.move(job.job_id, [State.queued], State.cancelled, fields={"manifest": manifest}).ok
    assert pipe.store.close_batch(bid)  # all done: indexed for its manifest in the same script
    assert isinstance(pipe.kick, _NoKicks)
    pipe.drain_finalize()
    assert pipe.kick.finalizes == [bid]
    good = pipe.storage
    pipe.storage = Storage(pipe.settings.model_copy(update={"s3_bucket": "editq-no-such-bucket"}))
    with pytest.raises(Exception, match=r"NoSuchBucket|does not exist|404"):
        pipe.finalize(bid)
    batch = pipe.store.r.hgetall(pipe.k.batch(bid))
    assert batch["finalize_failures"] == "1" and batch["finalize_error"]
    assert "manifest_key" not in batch
    score = pipe.store.r.zscore(pipe.k.finalize, bid)
    assert score is not None and score > time.time()  # leased: not claimed again before its lease runs out
    pipe.drain_finalize()
    assert pipe.kick.finalizes == [bid]
    pipe.store.lease_finalizing(bid, time.time() - 1)  # the lease runs out
    pipe.drain_finalize()
    assert pipe.kick.finalizes == [bid, bid]
    pipe.storage = good
    key = pipe.finalize(bid)
    assert pipe.store.r.zscore(pipe.k.finalize, bid) is None
    assert good.get_bytes(key).decode().strip() == '{"state": "cancelled"}'
