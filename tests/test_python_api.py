"""`import editq`, the Python API (issue 11): typed results, sync and async, on real Redis, S3 over HTTP and the
sandbox over HTTP (the session stack). The README's "Python API" snippets run too."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

import editq
from editq.producer import client
from editq.producer.stack import LocalStack
from editq.worker.state import JobStore
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, ROOT, unique, wait_for, write_jsonl
from tests.e2e import configure_sandbox

MUG = str(EXAMPLES / "mug.png")
SESSION_SANDBOX = {"latency_s": 0.2, "jitter_s": 0.1}  # tests/conftest.py's stack


def line(cid: str, provider: str = "fal", prompt: str = "On an oak table", **kw: object) -> dict[str, object]:
    return {"custom_id": cid, "provider": provider, "prompt": f"{prompt} {cid}", "images": [MUG], "quality": "low",
            **kw}


@pytest.fixture
def slow_sandbox(live: LocalStack) -> Iterator[LocalStack]:
    """Jobs stay at the provider for a minute (to be cancelled there); the session's latency after."""
    configure_sandbox(live, {"latency_s": 60.0, "jitter_s": 0.0})
    try:
        yield live
    finally:
        configure_sandbox(live, SESSION_SANDBOX)


def held_by_provider(job_ids: list[str]) -> None:
    store = JobStore()
    wait_for(lambda: all(v is not None and v.request_id for v in store.get_many(job_ids)), 30,
             "every job held by the provider")


def test_submit_wait_status_jobs_rerun_with_typed_results(live: LocalStack, tmp_path: Path) -> None:
    tag = unique("api")
    path = write_jsonl(tmp_path / "batch.jsonl", [
        line(f"{tag}-ok-1"), line(f"{tag}-ok-2"),
        line(f"{tag}-blocked", "openai", prompt="A label sandbox:moderation"),  # the provider refuses it: failed
    ])
    est = editq.estimate_file(path)
    assert isinstance(est, editq.Estimate) and isinstance(est.total, editq.CostLine)
    assert (est.total.jobs, est.total.images, sorted(est.providers)) == (3, 3, ["fal", "openai"])
    assert est.providers["fal"].jobs == 2 and 0 < est.total.expected_usd <= est.total.worst_usd

    report = editq.submit_file(path, max_cost=5.0)
    assert isinstance(report, editq.BatchReport) and (report.enqueued, report.invalid) == (3, [])
    final = editq.wait_batch(report.batch_id, timeout=90, interval=0.1)
    assert isinstance(final, editq.BatchStatus)
    assert (final.kind, final.total, final.done, final.counts) == ("batch", 3, 3, {"failed": 1, "succeeded": 2})
    assert final.finished and final.manifest_key == f"outputs/{report.batch_id}/manifest.jsonl"
    assert final.max_cost_usd == 5.0 and final.on_budget == "wait" and 0 < final.cost_usd <= 5.0
    assert final.providers == {"fal": {"succeeded": 2}, "openai": {"failed": 1}}

    rows = list(editq.list_jobs(report.batch_id))
    assert all(isinstance(r, editq.JobRow) for r in rows)
    assert [(r.custom_id, r.provider, r.state) for r in rows] == [
        (f"{tag}-ok-1", "fal", "succeeded"), (f"{tag}-ok-2", "fal", "succeeded"),
        (f"{tag}-blocked", "openai", "moderated")]
    assert rows[2].moderation_stage == "input" and rows[2].error
    assert [r.job_id for r in editq.list_jobs(report.batch_id, ["moderated"])] == [rows[2].job_id]

    job = editq.job_status(f"{tag}-ok-1", batch_id=report.batch_id)  # by custom_id within the batch
    assert isinstance(job, editq.JobStatus) and job == editq.status(rows[0].job_id)
    assert job.state is editq.State.succeeded and job.provider == "fal" and job.error is None
    assert [h.state for h in job.history][-1] == "succeeded" and all(isinstance(h, editq.StateChange)
                                                                      for h in job.history)
    (out,) = job.outputs
    assert isinstance(out, editq.OutputRecord)
    assert hashlib.sha256(get_storage().get_bytes(out.key)).hexdigest() == out.sha256
    blocked = editq.wait_job(rows[2].job_id, timeout=5)
    assert isinstance(blocked.error, editq.ErrorInfo) and blocked.error.moderation_stage == "input"
    assert blocked.state is editq.State.failed and blocked.outputs == []

    again = editq.rerun(report.batch_id, ["moderated"], {"provider": "fal"})
    assert isinstance(again, editq.RerunReport) and again.enqueued == 1 and again.batch_id
    redo = editq.wait_batch(again.batch_id, timeout=90, interval=0.1)
    assert redo.counts == {"succeeded": 1} and redo.rerun_of == report.batch_id
    orig = editq.batch_status(report.batch_id)
    assert orig.reruns == [again.batch_id] and orig.latest == {"succeeded": 3}
    (redone,) = editq.list_jobs(again.batch_id)
    assert redone.rerun_of == rows[2].job_id and redone.custom_id == f"{tag}-blocked"

    money = editq.set_batch_budget(report.batch_id, 7.5)
    assert isinstance(money, editq.BatchBudget) and money.max_cost_usd == 7.5 and money.batch_id == report.batch_id
    assert editq.batch_budget(report.batch_id) == money.model_copy(update={"released": 0})
    tenant = editq.tenant_budget(tag)
    assert isinstance(tenant, editq.TenantBudget) and (tenant.cost_usd, tenant.waiting) == (0.0, 0)

    with pytest.raises(editq.UnknownId):
        editq.status(f"{tag}-nothing")
    with pytest.raises(editq.UnknownId):
        editq.job_status(report.batch_id)  # a batch id is not a job
    with pytest.raises(editq.UnknownId):
        editq.batch_status(rows[0].job_id)  # nor a job id a batch


def _result_classes(hint: object) -> set[type]:
    """The classes a return annotation names (through unions, Iterator[...]), builtins left out."""
    if isinstance(hint, type):
        return set() if hint.__module__ == "builtins" else {hint}
    return {c for arg in typing.get_args(hint) for c in _result_classes(arg)}


def test_every_result_the_api_returns_is_frozen() -> None:
    """Each function of `import editq` returns a frozen dataclass or a frozen pydantic model (or a builtin)."""
    classes = set().union(*(_result_classes(typing.get_type_hints(getattr(client, name))["return"])
                            for name in client.__all__))
    assert {editq.BatchReport, editq.RerunReport, editq.CancelReport, editq.DownloadReport, editq.Continued,
            editq.ReportFiles, editq.BatchStatus, editq.Estimate} <= classes
    for cls in classes:
        if issubclass(cls, BaseModel):
            assert cls.model_config.get("frozen"), cls
        else:
            assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
    assert editq.LineError.__dataclass_params__.frozen  # type: ignore[attr-defined]  # in BatchReport.invalid


def test_a_frozen_report_refuses_a_change_and_progress_reports_do_not_move(live: LocalStack) -> None:
    """`on_progress` gets a report as of each chunk sent (the first after 50 lines; what Redis has answered
    by then): a later chunk does not change one already handed out; the last is the report returned."""
    tag = unique("frozen")
    seen: list[editq.BatchReport] = []
    report = editq.submit_batch([line(f"{tag}-{i}") for i in range(60)], on_progress=seen.append)
    assert len(seen) == 2 and seen[-1] == report and (report.enqueued, len(report.job_ids)) == (60, 60)
    first = seen[0]
    assert first.enqueued < 60 and first.job_ids == report.job_ids[:first.enqueued]  # as it was then
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.enqueued = 0  # type: ignore[misc]
    final = editq.wait_batch(report.batch_id, timeout=90, interval=0.1)
    with pytest.raises(ValidationError):
        final.total = 0  # type: ignore[misc]
    assert final.counts == {"succeeded": 60}


def test_invalid_lines_and_estimates_are_typed(live: LocalStack) -> None:
    est = editq.estimate_batch([line("fine"), {"prompt": "no image"}, "not json"], base_dir=EXAMPLES)
    assert est.total.jobs == 1
    assert [(e.line, e.custom_id) for e in est.invalid] == [(2, None), (3, None)]
    assert all(isinstance(e, editq.InvalidLine) for e in est.invalid) and "images" in est.invalid[0].error
    with pytest.raises(ValueError, match="size"):
        editq.submit({**line("bad"), "size": "13x13"})


def test_cancel_one_job_and_a_batch(slow_sandbox: LocalStack) -> None:
    tag = unique("cancel")
    job_id = editq.submit(line(f"{tag}-one"))
    batch = editq.submit_batch([line(f"{tag}-a"), line(f"{tag}-b")])
    held_by_provider([job_id, *batch.job_ids])
    assert editq.job_status(job_id).state is editq.State.submitted
    assert editq.cancel(job_id) is True
    assert editq.wait_job(job_id, timeout=30, interval=0.1).state is editq.State.cancelled
    assert editq.cancel(job_id) is False  # finished: nothing to cancel
    rep = editq.cancel_batch(batch.batch_id)
    assert isinstance(rep, editq.CancelReport) and (rep.cancelled, rep.at_provider, rep.finished) == (2, 2, 0)
    assert editq.wait_batch(batch.batch_id, timeout=30, interval=0.1).counts == {"cancelled": 2}


def test_the_async_api(slow_sandbox: LocalStack) -> None:
    tag = unique("aio")

    async def run() -> None:
        aio = editq.aio
        configure_sandbox(slow_sandbox, SESSION_SANDBOX)
        a, b = await asyncio.gather(aio.submit_batch([line(f"{tag}-a1"), line(f"{tag}-a2")]),
                                    aio.submit_batch([line(f"{tag}-b1", "openai", prompt="sandbox:moderation")]))
        assert isinstance(a, editq.BatchReport) and (a.enqueued, b.enqueued) == (2, 1)
        done_a, done_b = await asyncio.gather(aio.wait_batch(a.batch_id, timeout=90, interval=0.1),
                                              aio.wait(b.batch_id, timeout=90, interval=0.1))
        assert isinstance(done_a, editq.BatchStatus) and isinstance(done_b, editq.BatchStatus)
        assert (done_a.counts, done_b.counts) == ({"succeeded": 2}, {"failed": 1})
        rows = [row async for row in aio.list_jobs(a.batch_id)]
        assert [(type(r), r.custom_id, r.state) for r in rows] == [
            (editq.JobRow, f"{tag}-a1", "succeeded"), (editq.JobRow, f"{tag}-a2", "succeeded")]
        assert [r.state async for r in aio.list_jobs(b.batch_id, ["moderated"])] == ["moderated"]
        job = await aio.job_status(f"{tag}-a2", batch_id=a.batch_id)
        assert isinstance(job, editq.JobStatus) and job.job_id == rows[1].job_id and len(job.outputs) == 1
        assert await aio.status(rows[0].job_id) == editq.status(rows[0].job_id)

        again = await aio.rerun(b.batch_id, overrides={"provider": "fal"})
        assert again.enqueued == 1 and again.batch_id
        redo = await aio.wait_batch(again.batch_id, timeout=90, interval=0.1)
        assert redo.counts == {"succeeded": 1} and (await aio.batch_status(b.batch_id)).latest == {"succeeded": 1}

        configure_sandbox(slow_sandbox, {"latency_s": 60.0, "jitter_s": 0.0})
        one = await aio.submit(line(f"{tag}-slow"))
        batch = await aio.submit_batch([line(f"{tag}-s1"), line(f"{tag}-s2")])
        await asyncio.to_thread(held_by_provider, [one, *batch.job_ids])
        assert await aio.cancel(f"{tag}-slow", batch_id=editq.job_status(one).batch_id) is True
        rep = await aio.cancel_batch(batch.batch_id)
        assert rep.cancelled == 2
        cancelled = await aio.wait_job(one, timeout=30, interval=0.1)
        assert cancelled.state is editq.State.cancelled
        late = await aio.submit(line(f"{tag}-late"))
        with pytest.raises(TimeoutError):
            await aio.wait(late, timeout=0.3, interval=0.1)
        assert await aio.cancel(late) is True
        with pytest.raises(editq.UnknownId):
            await aio.status(f"{tag}-nothing")

    asyncio.run(run())


def _readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_python_api_snippets_run(live: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippets = _readme_snippets()
    assert len(snippets) == 2  # sync, async
    for name in ("mug.png", "bottle.png"):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    tag = unique("readme")
    write_jsonl(tmp_path / "batch.jsonl", [
        {"custom_id": f"{tag}-MUG", "prompt": f"On an oak table {tag}", "images": ["mug.png"], "quality": "low"},
        {"custom_id": f"{tag}-BOTTLE", "prompt": f"On an oak table {tag}", "images": ["bottle.png"],
         "quality": "low"}])
    monkeypatch.chdir(tmp_path)
    for code in snippets:
        scope: dict[str, object] = {"__name__": "readme"}
        exec(compile(code, "README.md", "exec"), scope)  # our own README
    outputs = sorted(p.name for p in (tmp_path / "out").rglob("*.png"))
    assert len(outputs) >= 2, outputs
    assert json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())["state"] == "succeeded"


def test_async_wait_polls_on_the_loop_not_in_threads(live: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """`editq.aio.wait` reads the full status in a thread twice (which id it is; the final status): every poll
    between is one redis.asyncio command on the loop, and many waits run at once."""
    from editq.producer import api

    reads: list[dict[str, object]] = []
    real = api.status

    def counted(*args: object, **kwargs: object) -> dict[str, object]:
        st = real(*args, **kwargs)  # type: ignore[arg-type]
        reads.append(st)
        return st

    tag = unique("poll")
    job_ids = [editq.submit(line(f"{tag}-{i}")) for i in range(6)]
    monkeypatch.setattr(api, "status", counted)

    async def run() -> list[editq.Status]:
        return list(await asyncio.gather(*(editq.aio.wait(j, timeout=60, interval=0.05) for j in job_ids)))

    finals = asyncio.run(run())
    assert [(type(f), f.state) for f in finals] == [(editq.JobStatus, editq.State.succeeded)] * 6  # type: ignore[union-attr]
    assert len(reads) <= 2 * len(job_ids)  # one thread read to start, one for the result; none per poll
    assert any(not st["finished"] for st in reads)  # some had to be polled
