"""Logs: one handler on the root logger renders every line, editq's own (structlog) and everyone else's
(Celery, kombu, uvicorn: the standard library's logging) alike.

* Plain readable lines by default (`2026-12-07T12:00:00Z [info] job submitted  batch_id=... job_id=...`).
* `EDITQ_LOG_JSON=1`: one JSON object per line for every line, with `timestamp`, `level`, `logger`, `event`
  and the event's fields (a lifecycle event carries batch_id, job_id, custom_id, provider, request_id:
  worker/events.py).

Secrets never reach a log line: tracebacks are formatted as plain text without local variables (a rich
traceback would print every local, headers and settings included), and every string of every event, the
formatted traceback included, goes through the one redactor (worker/redact.py) before it is rendered.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from editq.worker.redact import redact

_done = False
NOISY = ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3")


def redact_event(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Every string value of the event (message, fields, the formatted traceback) redacted."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


def json_enabled() -> bool:
    return os.environ.get("EDITQ_LOG_JSON", "").strip().lower() in ("1", "true", "yes", "on")


def configure_logging(force: bool = False) -> None:
    """Idempotent; `force` re-reads EDITQ_LOG_JSON / EDITQ_LOG_LEVEL (a CLI that sets them late)."""
    global _done
    if _done and not force:
        return
    _done = True
    level = getattr(logging, os.environ.get("EDITQ_LOG_LEVEL", "INFO").upper(), logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_enabled()
        else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # plain text, no locals
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings (Celery's "running as root") become log lines in the same format
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("celery", "kombu", "uvicorn", "uvicorn.error", "uvicorn.access", "py.warnings"):
        lg = logging.getLogger(name)  # their own handlers (if any were set up) would print a second, other line
        lg.handlers = []
        lg.propagate = True
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
