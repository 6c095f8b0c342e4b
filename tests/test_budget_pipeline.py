"""No reservation leaks on any path of the pipeline: success (adjusted to the real cost), failures the provider
did not bill (released), attempts that may have been billed (kept), retries, fallbacks, lost workers, cancels
and `--on-budget fail`. Each test drives a Pipeline on its own key prefix with the session stack's S3 and
checks the job, its manifest's `cost_usd` and the batch's money to the micro-dollar."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from editq import providers
from editq.providers.pricing import to_micro
from editq.schemas.job import EditJob, InputRecord
from editq.worker import aio
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.pipeline import Pipeline
from editq.worker.state import MICRO, State
from editq.worker.storage import get_storage
from tests.conftest import unique
from tests.test_pipeline_faults import pipe  # noqa: F401  (the fixture: a Pipeline on its own prefix)

WORST = 410_000  # every test job reserves $0.41 on each provider of its route


def _job(batch: str, route: str = "fal") -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=unique("job"), batch_id=batch, prompt="p" * 40, images=["a.png"], inputs=[rec],
                   idempotency_key=unique("idem"), provider=route)


def _claimed(p: Pipeline, batch: str, route: str = "fal") -> str:
    job = _job(batch, route)
    assert p.store.create(job, worst_case={name: WORST for name in job.route})[0] == 1
    claimed, items, failing = p._claim(providers.protocol_of(job.route[0]), 64)
    assert claimed == 1 and [v.job_id for v, _ in items] == [job.job_id] and failing == []
    return job.job_id


def _money(p: Pipeline, batch: str) -> tuple[int, int]:
    raw = p.store.r.hgetall(p.k.batch(batch))
    return int(raw.get("committed", 0)), int(raw.get("spent", 0))


def _view(p: Pipeline, jid: str):  # type: ignore[no-untyped-def]
    view = p.store.get(jid)
    assert view is not None
    return view


def _manifest(batch: str, jid: str) -> dict:  # type: ignore[type-arg]
    s = get_storage()
    return json.loads(s.get_bytes(s.manifest_key(batch, jid)))  # type: ignore[no-any-return]


def _png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 40, 40)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _to_ready(p: Pipeline, jid: str, result: dict) -> None:  # type: ignore[type-arg]
    assert p.store.move(jid, [State.submitting], State.submitted, score=time.time() + 60,
                        fields={"request_id": "rq", "handle": "{}"}).ok
    assert p.store.move(jid, [State.submitted], State.ready, fields={"result": json.dumps(result)}).ok


def test_success_settles_at_the_cost_of_what_was_produced(pipe: Pipeline) -> None:  # noqa: F811
    b = unique("batch")
    est, rep = _claimed(pipe, b), _claimed(pipe, b)
    assert _money(pipe, b) == (2 * WORST, 0)
    job = _view(pipe, est).job  # (once finished, the job keeps a compact record without its spec)
    _to_ready(pipe, est, {"outputs": [{"b64": _png(64, 64)}]})  # fal reports no cost: estimated from the output
    _to_ready(pipe, rep, {"outputs": [{"b64": _png(64, 64)}], "usage": {"cost_usd": 0.123, "cost_source": "provider"}})
    assert aio.run(pipe.collect()) == 2
    model = providers.price_model_of("fal")
    assert model is not None
    want = to_micro(model.actual(job, [(64, 64)]))
    assert 0 < want < WORST
    m_est, m_rep = _manifest(b, est), _manifest(b, rep)
    assert (m_est["state"], m_est["cost_usd"], m_est["cost_source"]) == ("succeeded", want / MICRO, "estimate")
    assert (m_rep["cost_usd"], m_rep["cost_source"]) == (0.123, "provider")
    assert _money(pipe, b) == (want + 123_000, want + 123_000)
    assert _view(pipe, est).fields.get("resv", "0") == "0"


def test_failures_retries_fallbacks_and_lost_workers_never_leak(pipe: Pipeline) -> None:  # noqa: F811
    b = unique("batch")
    not_billed, uncertain, fallback, terminal, lost, lost_unsent = (_claimed(pipe, b) for _ in range(6))
    routed = _claimed(pipe, b, "fal,replicate")
    assert _money(pipe, b) == (7 * WORST, 0)
    # a retryable failure the provider did not bill: released, waits for its retry
    aio.run(pipe.retry_or_fail(_view(pipe, not_billed), ProviderError(ErrorKind.retryable, "fal submit: HTTP 503"),
                               State.submitting, sent=True))
    # the answer was lost after the request left: it may have been billed, so it stays committed
    aio.run(pipe.retry_or_fail(_view(pipe, uncertain), ProviderError(ErrorKind.retryable, "fal submit: reset",
                                                                     maybe_billed=True), State.submitting, sent=True))
    # attempts used up on a route with a fallback: released, queued on the next provider
    pipe.store.r.hset(pipe.k.job(routed), "attempts", pipe.settings.max_attempts)
    aio.run(pipe.retry_or_fail(_view(pipe, routed), ProviderError(ErrorKind.retryable, "fal: HTTP 500"),
                               State.submitting, sent=True))
    # a terminal refusal: released, failed, its manifest says it cost nothing
    aio.run(pipe.retry_or_fail(_view(pipe, terminal), ProviderError(ErrorKind.terminal, "fal: HTTP 422"),
                               State.submitting, sent=True))
    # a terminal failure that may have been billed (a 502 behind which the model may have run): kept
    pipe.store.r.hset(pipe.k.job(fallback), "attempts", pipe.settings.max_attempts)
    aio.run(pipe.retry_or_fail(_view(pipe, fallback), ProviderError(ErrorKind.terminal, "fal: HTTP 502",
                                                                    maybe_billed=True), State.submitting, sent=True))
    # the submitting worker died after a connection to the provider opened: the tick records the attempt
    # as uncertain and keeps its money; one that died before any connection opened released it
    pipe.r.hset(pipe.k.job(lost), f"req.{_view(pipe, lost).attempts}", json.dumps({"status": "sent"}))
    assert pipe._recover_submitting(_view(pipe, lost)) == 1
    assert pipe._recover_submitting(_view(pipe, lost_unsent)) == 1

    states = {j: _view(pipe, j).state for j in (not_billed, uncertain, routed, terminal, fallback, lost, lost_unsent)}
    assert states == {not_billed: State.retry_wait, uncertain: State.retry_wait, routed: State.queued,
                      terminal: State.failed, fallback: State.failed, lost: State.queued, lost_unsent: State.queued}
    assert _view(pipe, routed).provider == "replicate"
    kept = 3 * WORST  # uncertain, fallback (maybe billed), lost
    assert _money(pipe, b) == (kept, kept)
    assert (_manifest(b, terminal)["cost_usd"], _manifest(b, terminal)["cost_source"]) == (0.0, "estimate")
    assert _manifest(b, fallback)["cost_usd"] == WORST / MICRO
    for jid in states:
        assert _view(pipe, jid).fields.get("resv", "0") == "0"
    # the retried, rerouted and recovered jobs reserve again on their next claim (replicate for the rerouted)
    for jid in (not_billed, uncertain):
        assert pipe.store.move(jid, [State.retry_wait], State.queued).ok
    assert pipe._claim(providers.protocol_of("fal"), 64)[0] == 4
    assert pipe._claim(providers.protocol_of("replicate"), 64)[0] == 1
    assert _money(pipe, b) == (kept + 5 * WORST, kept)
    # ...and a success after an uncertain attempt costs both in its manifest (and in the batch)
    _to_ready(pipe, uncertain, {"outputs": [{"b64": _png(64, 64)}], "usage": {"cost_usd": 0.05}})
    assert aio.run(pipe.collect()) == 1
    m = _manifest(b, uncertain)
    assert (m["cost_usd"], m["cost_source"]) == ((WORST + 50_000) / MICRO, "estimate")
    assert _money(pipe, b) == (kept + 4 * WORST + 50_000, kept + 50_000)


def test_a_cancel_keeps_what_the_provider_may_have_run_and_releases_nothing_else(pipe: Pipeline) -> None:  # noqa: F811
    b = unique("batch")
    in_flight = _claimed(pipe, b)
    queued = _job(b)
    assert pipe.store.create(queued, worst_case={"fal": WORST})[0] == 1
    assert aio.run(pipe.cancel(queued.job_id)) and aio.run(pipe.cancel(in_flight))
    assert _money(pipe, b) == (WORST, WORST)
    assert _manifest(b, in_flight)["cost_usd"] == WORST / MICRO
    assert _manifest(b, queued.job_id)["cost_usd"] == 0.0


@pytest.mark.parametrize("on_budget", ["wait", "fail"])
def test_a_job_over_budget_waits_or_fails_with_budget_exceeded(pipe: Pipeline, on_budget: str) -> None:  # noqa: F811
    b = unique("batch")
    pipe.store.r.hset(pipe.k.batch(b), mapping={"max_cost": WORST, "on_budget": on_budget})
    first = _claimed(pipe, b)
    over = _job(b)
    assert pipe.store.create(over, worst_case={"fal": WORST})[0] == 1
    claimed, items, failing = pipe._claim(providers.protocol_of("fal"), 64)
    assert claimed == 0 and items == []
    if on_budget == "wait":
        assert failing == []
        assert _view(pipe, over.job_id).state is State.budget_wait
        # money frees up (the first job failed unbilled): the tick sends the waiting job back to the queue
        aio.run(pipe.retry_or_fail(_view(pipe, first), ProviderError(ErrorKind.terminal, "fal: HTTP 422"),
                                   State.submitting, sent=True))
        assert pipe.tick()["budget_released"] == 1
        assert _view(pipe, over.job_id).state is State.queued
        assert pipe._claim(providers.protocol_of("fal"), 64)[0] == 1
    else:
        assert len(failing) == 1
        aio.run(failing[0])
        view = _view(pipe, over.job_id)
        assert view.state is State.failed
        m = _manifest(b, over.job_id)
        assert m["error"]["provider_code"] == "budget_exceeded"
        assert m["error"]["reason"].startswith("budget_exceeded: batch budget $0.41: $0.41 committed")
        assert m["cost_usd"] == 0.0
    assert _money(pipe, b)[0] == WORST
