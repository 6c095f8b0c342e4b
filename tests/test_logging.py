"""Log lines never carry a key: tracebacks without local variables, every string through the redactor."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import structlog
from editq.worker import redact
from editq.worker.logging import configure_logging
configure_logging()
redact.register("r8_logcanary_0123456789")
log = structlog.get_logger("t")
def boom(headers):
    raise RuntimeError("S3 said no")
try:
    boom({"Authorization": "Bearer r8_logcanary_0123456789"})
except RuntimeError:
    log.exception("collect failed", note="key r8_logcanary_0123456789 in a field")
"""


def _run(json_logs: bool) -> str:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if json_logs:
        env["EDITQ_LOG_JSON"] = "1"
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_a_traceback_prints_no_locals_and_no_key() -> None:
    for json_logs in (False, True):
        text = _run(json_logs)
        assert "collect failed" in text and "RuntimeError: S3 said no" in text and "boom" in text
        assert "r8_logcanary_0123456789" not in text
        assert "Authorization" not in text  # the local `headers` is not printed at all
        assert "key *** in a field" in text


def _run_batch(json_logs: bool) -> tuple[str, str, str]:
    """Two jobs through a real worker and receiver; their logs, and the batch id."""
    from editq.producer.api import submit_batch, wait
    from tests import e2e
    from tests.conftest import EXAMPLES

    extra = {"EDITQ_LOG_JSON": "1" if json_logs else "", **e2e.WEBHOOKS_ONLY}
    for stack in e2e.start(True, extra, workers=1):
        with e2e.using(stack):
            lines = [{"custom_id": f"log-{i}", "prompt": "p", "images": ["mug.png"]} for i in range(2)]
            report = submit_batch(lines, base_dir=EXAMPLES)
            assert wait(report.batch_id, timeout=90)["counts"] == {"succeeded": 2}
            # the finalize task's own Celery line comes right after the batch finished
            e2e.wait_for(lambda s=stack: "editq.finalize" in s.log("worker0") and "succeeded in" in s.log("worker0"),
                         30, "the worker's last line")
        return stack.log("worker0"), stack.log("webhooks"), report.batch_id
    raise AssertionError("no stack")


def test_one_switch_makes_every_line_json_with_the_ids_on_every_lifecycle_event() -> None:
    import json

    worker, receiver, batch_id = _run_batch(json_logs=True)
    events = []
    for text in (worker, receiver):
        for line in text.splitlines():
            if line.strip():
                events.append(json.loads(line))  # every line, Celery's and ours: no banner, no plain text
    loggers = {e["logger"] for e in events}
    assert {"celery.apps.worker", "celery.worker.strategy", "celery.app.trace", "editq.jobs"} <= loggers
    life = [e for e in events if e["logger"] == "editq.jobs"]
    # each job: submitted (worker), finished by webhook (receiver), succeeded (worker)
    assert sorted(e["event"] for e in life) == sorted(["job submitted", "provider finished", "job succeeded"] * 2)
    for e in life:
        assert e["batch_id"] == batch_id and e["job_id"].startswith("job_") and e["custom_id"].startswith("log-")
        assert e["provider"] == "fal" and e["request_id"] and e["level"] == "info" and e["timestamp"]
    assert len({e["job_id"] for e in life}) == 2


def test_plain_readable_lines_by_default() -> None:
    import json

    worker, _, batch_id = _run_batch(json_logs=False)
    submitted = [ln for ln in worker.splitlines() if "job submitted" in ln]
    assert len(submitted) == 2
    for line in submitted:
        assert f"batch_id={batch_id}" in line and "job_id=job_" in line and "provider=fal" in line
        try:
            json.loads(line)
        except ValueError:
            continue
        raise AssertionError(f"a JSON line by default: {line}")
    assert any("Task editq.dispatch" in ln and "received" in ln for ln in worker.splitlines())


def test_the_plain_renderer_writes_what_structlogs_console_renderer_writes() -> None:
    """worker/logging.py PlainRenderer builds the usual line itself (speed); every line must be ConsoleRenderer's."""
    import structlog

    from editq.worker.logging import PlainRenderer

    events: list[dict[str, object]] = [
        {"timestamp": "2026-12-07T12:00:00Z", "level": "info", "event": "job submitted", "logger": "editq.jobs",
         "job_id": "j1", "batch_id": "b1", "custom_id": None, "attempt": 1, "ok": True, "x": 1.5},
        {"level": "warning", "event": "webhook refused", "reason": "bad sig", "q": 'a"b', "eq": "a=b", "t": "a\tb"},
        {"timestamp": "t", "level": "exception", "event": "x" * 40, "logger": "l", "nested": {"a": [1, "b c"]}},
        {"event": "", "level": "info"},
        {"event": "only"},
        {"level": "debug", "event": "trailing", "z": "", "a": "é ☕"},
        {"timestamp": "", "level": "info", "event": "m", "logger": ""},
        {"level": "info", "event": "with a logger name", "logger_name": "other"},
        {"level": "error", "event": "failed", "exception": "Traceback (most recent call last):\n  boom"},
        {"level": "info", "event": "stack", "stack": "Stack (most recent call last):\n  here"},
    ]
    ours, theirs = PlainRenderer(), structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback)
    for event in events:
        assert ours(None, "info", dict(event)) == theirs(None, "info", dict(event)), event
