"""Log lines never carry a key: tracebacks without local variables, every string through the redactor."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = r"""
import structlog
from worker import redact
from worker.logging import configure_logging
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
