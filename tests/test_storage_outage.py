"""An outage of our own S3 while a job's output is ready at the provider is our outage, not the job's.

With the production settings (max_attempts 3: five collect attempts) a collect that failed only because S3 did
not answer used to use up an attempt, and the job failed for good after about 30 s of back-off although the
provider had produced (and billed) its image. Now such a failure does not count while the provider keeps the
output (EDITQ_STORAGE_OUTAGE_GIVE_UP_S) and is retried at most EDITQ_STORAGE_RETRY_MAX_S apart; a 403 from S3
(credentials, bucket policy) still fails the job once its attempts are used up.

Each test drives a Pipeline on its own key prefix with real Redis and the session stack's S3 server, reached
either directly, through a closed port (connection refused) or through tests/s3_fault_proxy.py (503 / 403).
The tick's hand-back of a collect whose back-off ran out is done by the test (the same move the tick makes),
so no test waits for a back-off.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from editq.producer.stack import LocalStack
from editq.schemas.job import EditJob, InputRecord
from editq.schemas.settings import get_settings
from editq.worker import aio, storage
from editq.worker.keys import Keys
from editq.worker.pipeline import Pipeline
from editq.worker.state import JobStore, State
from editq.worker.storage import Storage, get_storage
from tests.conftest import sha256, unique
from tests.s3_fault_proxy import S3FaultProxy
from tests.test_pipeline_faults import _NoKicks


@pytest.fixture
def pipe(live: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    import redis

    monkeypatch.setattr(storage, "PUT_ATTEMPTS", 1)  # one PUT per collect: each collect fails at once
    settings = get_settings()
    assert settings.max_attempts == 3  # the production default: five collect attempts
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    p = Pipeline(store=JobStore(r, Keys(unique("editq-s3out"))), storage=get_storage(), settings=settings,
                 kick=_NoKicks())
    yield p
    for key in p.k.scan(r):
        r.delete(key)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (200, 30, 90)).save(buf, "PNG")
    return buf.getvalue()


def _ready(p: Pipeline, png: bytes, *, done_ago_s: float = 1.0) -> str:
    """A fal job whose output the provider has ready (finished `done_ago_s` ago)."""
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    job = EditJob(job_id=unique("job"), batch_id=unique("batch"), prompt="p", images=["a.png"], inputs=[rec],
                  idempotency_key=unique("idem"), provider="fal")
    assert p.store.create(job)[0] == 1
    result = {"outputs": [{"b64": base64.b64encode(png).decode()}], "usage": None, "raw": {}}
    assert p.store.move(job.job_id, [State.queued], State.ready,
                        fields={"result": json.dumps(result), "provider_done_at": repr(time.time() - done_ago_s)}).ok
    return job.job_id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _storage_at(endpoint: str) -> Storage:
    return Storage(get_settings().model_copy(update={"s3_endpoint": endpoint}))


def _collect_failed(p: Pipeline, jid: str) -> float:
    """One collect that fails: returns how long its back-off is; the job is handed back to `ready` as the tick
    does when the back-off runs out."""
    before = time.time()
    assert aio.run(p.collect()) == 1
    view = p.store.get(jid)
    assert view is not None and view.state is State.collecting, view and view.fields.get("error")
    score = p.store.r.zscore(p.k.collecting, jid)
    assert score is not None
    assert p.store.move(jid, [State.collecting], State.ready, note="collect retry").ok
    return score - before


@pytest.mark.parametrize("outage", ["connection refused", "503"])
def test_an_s3_outage_longer_than_the_collect_attempts_does_not_fail_the_job(pipe: Pipeline, outage: str) -> None:
    png = _png()
    jid = _ready(pipe, png)
    limit = pipe.settings.max_attempts + 2
    real = pipe.storage
    with S3FaultProxy(real.settings.s3_endpoint or "") as proxy:
        proxy.mode = "unavailable"
        pipe.storage = _storage_at(proxy.url if outage == "503" else f"http://127.0.0.1:{_closed_port()}")
        waits = [_collect_failed(pipe, jid) for _ in range(3 * limit)]  # three times what used to fail it
        if outage == "503":
            assert proxy.unavailable == 3 * limit
    view = pipe.store.get(jid)
    assert view is not None
    assert view.fields["collect_attempts"] == str(3 * limit)
    assert ("HTTP 503" if outage == "503" else "S3 PUT") in view.fields["collect_error"]

    pipe.storage = real  # S3 is back
    assert aio.run(pipe.collect()) == 1
    view = pipe.store.get(jid)
    assert view is not None and view.state is State.succeeded
    manifest = json.loads(real.get_bytes(real.manifest_key(view.batch_id, jid)))
    assert manifest["state"] == "succeeded"
    (out,) = manifest["outputs"]
    assert real.get_bytes(out["key"]) == png and out["sha256"] == sha256(png)
    assert max(waits) <= pipe.settings.storage_retry_max_s * 1.2 + 1  # capped (+-20 % jitter)


def test_a_403_from_s3_still_fails_the_job_once_its_attempts_are_used_up(pipe: Pipeline) -> None:
    """Credentials or a bucket policy: no waiting makes that work; the job fails with S3's answer."""
    jid = _ready(pipe, _png())
    limit = pipe.settings.max_attempts + 2
    real = pipe.storage
    with S3FaultProxy(real.settings.s3_endpoint or "") as proxy:
        proxy.mode = "deny_always"
        pipe.storage = _storage_at(proxy.url)
        for _ in range(limit - 1):
            _collect_failed(pipe, jid)
        assert aio.run(pipe.collect()) == 1  # (the proxy lets the failed job's manifest through)
    view = pipe.store.get(jid)
    assert view is not None and view.state is State.failed
    assert "HTTP 403" in json.loads(view.fields["error"])["reason"]


def test_an_outage_past_the_providers_retention_counts_again(pipe: Pipeline) -> None:
    """Once the provider has dropped the output (fal and Replicate: about an hour), waiting cannot bring it
    back: the outage's failures count again and the job fails with the reason, instead of retrying forever."""
    jid = _ready(pipe, _png(), done_ago_s=pipe.settings.storage_outage_give_up_s + 1)
    limit = pipe.settings.max_attempts + 2
    with S3FaultProxy(pipe.storage.settings.s3_endpoint or "") as proxy:
        proxy.mode = "outputs_unavailable"  # (the failed job's manifest goes through)
        pipe.storage = _storage_at(proxy.url)
        for _ in range(limit - 1):
            _collect_failed(pipe, jid)
        assert aio.run(pipe.collect()) == 1
    view = pipe.store.get(jid)
    assert view is not None and view.state is State.failed
    assert "S3 PUT: HTTP 503" in json.loads(view.fields["error"])["reason"]


def test_after_an_outage_the_next_failure_backs_off_from_the_start(pipe: Pipeline) -> None:
    """The collect back-off grows with the failures that counted, not with every claim: eight collects lost to
    an outage of our S3 and then one failure of the job's own (a 403) wait ~2 s, not the 120 s cap (a CI chaos run
    had two jobs `collecting` for ~110 s after a 5 s S3 freeze; a back-off grown by the outage's claims is one
    way to get there)."""
    jid = _ready(pipe, _png())
    real = pipe.storage
    with S3FaultProxy(real.settings.s3_endpoint or "") as proxy:
        proxy.mode = "unavailable"
        pipe.storage = _storage_at(proxy.url)
        for _ in range(8):
            _collect_failed(pipe, jid)
        proxy.mode = "deny_always"
        wait = _collect_failed(pipe, jid)
    view = pipe.store.get(jid)
    assert view is not None and view.fields["collect_attempts"] == "9" and view.fields["collect_free"] == "8"
    assert "HTTP 403" in view.fields["collect_error"]
    assert wait <= 2.0 * 1.2 + 1  # the first back-off step (2 s +-20 %), not 2 s x 2^8 capped at the lease
