"""What a user sees when something is missing or wrong: one line and a non-zero exit, never a traceback; a
configuration that cannot work is refused at start-up; the receiver's health reflects Redis; processes close
their HTTP client on the way out (no aiohttp "Unclosed client session")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from editq.producer.api import status, submit
from editq.producer.stack import PY, LocalStack, free_port, wait_until
from tests.conftest import EXAMPLES, ROOT, unique, wait_for

UNCLOSED = "Unclosed client session"


def editq(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "editq", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest.fixture(scope="module")
def ops() -> Iterator[LocalStack]:
    with LocalStack(workers=0) as s:
        yield s


@pytest.fixture
def live_ops(ops: LocalStack) -> LocalStack:
    ops.apply_env()
    return ops


# ---- one line, non-zero exit (the messages are producer/preflight.py's and producer/cli.py:main's) ----------------
def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


def test_status_of_an_unknown_id_is_one_line_and_non_zero(live_ops: LocalStack) -> None:
    res = editq("status", "UNKNOWN")
    assert res.returncode == 1
    assert "no batch or job with id 'UNKNOWN'" in _one_line(res)


@pytest.mark.parametrize(("args", "said"), [
    (["status", "[/red]"], "error: no batch or job with id '[/red]'"),
    (["status", "SKU-1", "--batch", "[bold]b"], "error: no batch with id '[bold]b'"),
    (["budget", "[/red]"], "no batch with id '[/red]'"),
    (["report", "[/red]"], "[/red]"),
])
def test_ids_that_look_like_markup_are_printed_as_typed(live_ops: LocalStack, args: list[str], said: str) -> None:
    """What the user typed is quoted literally: rich read `[/red]` as a closing tag and raised a MarkupError
    (a traceback instead of the one line)."""
    res = editq(*args)
    assert res.returncode == 1
    assert said in _one_line(res)


def test_download_of_an_unknown_batch_says_so_and_fails(live_ops: LocalStack, tmp_path: os.PathLike[str]) -> None:
    res = editq("download", "batch_nope", "--out", str(tmp_path))
    assert res.returncode == 1
    assert "nothing stored for batch 'batch_nope'" in _one_line(res)
    assert "files written" not in res.stdout
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("args", [["status", "batch_x"], ["submit", str(EXAMPLES / "batch.jsonl")],
                                  ["cancel", "job_x"]])
def test_redis_down_is_one_clear_line(live_ops: LocalStack, args: list[str]) -> None:
    url = dead_redis()
    res = editq(*args, env={"EDITQ_REDIS_URL": url, "EDITQ_BROKER_URL": url})
    assert res.returncode != 0
    assert f"cannot reach Redis at {url}" in _one_line(res)


# ---- start-up refusals ---------------------------------------------------------------------------------------------
def test_keys_with_control_characters_are_refused_without_printing_them() -> None:
    key = "fal-canary-key-0123456789"
    for extra in ("\n", "\t", "\r\n"):
        res = editq("status", "x", env={"EDITQ_FAL_KEY": key + extra, "EDITQ_REDIS_URL": dead_redis()})
        assert res.returncode == 2
        assert "EDITQ_FAL_KEY contains a control character" in _one_line(res)
        assert key not in res.stdout + res.stderr
        assert "Traceback" not in res.stderr
    res = editq("worker", env={"AWS_SECRET_ACCESS_KEY": "s3-canary-secret\n", "EDITQ_REDIS_URL": dead_redis()})
    assert res.returncode == 2 and "AWS_SECRET_ACCESS_KEY contains a control character" in res.stderr
    assert "s3-canary-secret" not in res.stdout + res.stderr


def test_webhooks_on_without_the_webhook_secret_or_the_fal_user_id_refuse_to_start() -> None:
    base = {"EDITQ_REDIS_URL": dead_redis(), "EDITQ_FAL_KEY": "fal-key-123456", "EDITQ_WEBHOOK_SECRET": "",
            "EDITQ_FAL_USER_ID": "", "EDITQ_WEBHOOK_BASE_URL": "https://hooks.example"}
    worker = editq("worker", env=base)
    assert worker.returncode == 2
    assert "EDITQ_WEBHOOK_SECRET is not set" in worker.stderr and "EDITQ_FAL_USER_ID is not set" in worker.stderr
    receiver = editq("webhooks", "--port", str(free_port()), env={**base, "EDITQ_WEBHOOK_SECRET": "s" * 32})
    assert receiver.returncode == 2
    assert "EDITQ_FAL_USER_ID is not set" in receiver.stderr and "EDITQ_WEBHOOK_SECRET" not in receiver.stderr
    # polling only (no EDITQ_WEBHOOK_BASE_URL): a worker needs neither
    polling = {**base, "EDITQ_WEBHOOK_BASE_URL": "", "EDITQ_WEBHOOK_SECRET": ""}
    assert "refusing" not in editq("worker", "--help", env=polling).stderr
    # fal webhooks off: no fal user id needed
    assert editq("webhooks", "--help", env={**base, "EDITQ_WEBHOOK_SECRET": "s" * 32,
                                            "EDITQ_FAL_WEBHOOKS": "false"}).returncode == 0


# ---- the receiver's health -------------------------------------------------------------------------------------------
def test_receiver_health_reflects_redis(live_ops: LocalStack) -> None:
    port = free_port()
    proc = live_ops.spawn("webhooks-dead-redis", [PY, "-m", "editq", "webhooks", "--port", str(port)],
                          {"EDITQ_REDIS_URL": dead_redis()})
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: httpx.get(url, timeout=10).status_code > 0, 120, "the receiver")
        resp = httpx.get(url, timeout=10)
        assert resp.status_code == 503
        assert resp.json()["status"] == "unavailable"
        assert any("redis" in p.lower() for p in resp.json()["problems"]), resp.json()
    finally:
        live_ops.stop_proc("webhooks-dead-redis")
    assert proc.returncode is not None
    ok = httpx.get(live_ops.env["EDITQ_WEBHOOK_BASE_URL"] + "/healthz", timeout=10)
    assert ok.status_code == 200 and ok.json()["status"] == "ok"


# ---- HTTP clients closed on the way out ------------------------------------------------------------------------
def test_cancel_closes_its_http_client(live_ops: LocalStack) -> None:
    job_id = submit({"prompt": unique("cancel"), "images": [str(EXAMPLES / "mug.png")]})
    res = editq("cancel", job_id)
    assert res.returncode == 0 and res.stdout.strip() == "cancelled", res.stderr[-2000:]
    assert UNCLOSED not in res.stderr


def test_worker_and_receiver_close_their_http_client_at_exit(live_ops: LocalStack) -> None:
    live_ops.start_worker("closing")
    live_ops.wait_workers(1)
    job_id = submit({"prompt": unique("close"), "images": [str(EXAMPLES / "mug.png")], "quality": "low"})
    wait_for(lambda: status(job_id)["finished"], 90, "the job to finish")
    port = free_port()
    live_ops.spawn("webhooks-closing", [PY, "-m", "editq", "webhooks", "--port", str(port)])
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200, 30, "receiver")
    for name in ("closing", "webhooks-closing"):
        proc = live_ops.procs[name]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        live_ops.procs.pop(name)
        log = live_ops.log(name)
        assert UNCLOSED not in log, (name, log[-3000:])
        assert "Traceback" not in log, (name, log[-3000:])


# ---- a key with a control character that got past start-up: the job fails clearly, it is not stuck -------------
def test_a_bad_key_fails_the_job_with_a_reason_instead_of_leaving_it_stuck(live_ops: LocalStack) -> None:
    """A worker started without the CLI's check (plain Celery) with a fal key ending in a newline: the HTTP client
    would refuse the header on every request and the job sat in `submitting` until its lease ran out, then
    again. Now the submit fails terminally, says why, and never shows the key."""
    from editq.worker.triggers import queue_name

    key = "fal-bad-key-0123456789"
    queues = f"{queue_name()},{queue_name('sync')}"
    boot = ("from editq.worker.celery_app import app; app.worker_main(['worker', '--pool=threads', '--concurrency=4', "
            f"'-Q', '{queues}', '-n', 'badkey@%h', '--without-gossip', '--without-mingle'])")
    live_ops.spawn("badkey", [PY, "-c", boot], {"EDITQ_FAL_KEY": key + "\n"})
    try:
        job_id = submit({"prompt": unique("badkey"), "images": [str(EXAMPLES / "mug.png")], "quality": "low"})
        final = wait_for(lambda: (st := status(job_id))["finished"] and st, 60, "the job to fail")
    finally:
        live_ops.stop_proc("badkey")
    assert final["state"] == "failed"
    assert "control character" in final["error"]["reason"] and key not in json.dumps(final)
    assert key not in live_ops.log("badkey")


def test_receiver_and_cli_tracebacks_carry_no_local_variables() -> None:
    """Importing the receiver (as uvicorn does) or running the CLI configures logging: an exception logged with
    its traceback shows the code, not the values of local variables (a rich traceback prints them all)."""
    code = """
import structlog
import {module}
{setup}
def leaky():
    authorization = "Bearer canary-local-0123456789"
    raise RuntimeError("boom")
try:
    leaky()
except RuntimeError:
    structlog.get_logger("t").exception("failed")
"""
    setup_logging = "from editq.worker.logging import configure_logging; configure_logging()"
    for module, setup in [("editq.worker.webhooks", ""), ("editq.producer.cli", setup_logging)]:
        res = subprocess.run([sys.executable, "-c", code.format(module=module, setup=setup)], capture_output=True,
                             text=True, timeout=60, cwd=ROOT)
        assert "RuntimeError: boom" in res.stdout + res.stderr, (module, res.stderr[-2000:])
        assert "canary-local" not in res.stdout + res.stderr, (module, res.stderr[-3000:])
    from editq.producer.cli import app

    assert app.pretty_exceptions_enable is False  # typer's rich tracebacks print every local
