"""Structured logs (structlog). Secrets never reach a log line: tracebacks are formatted as plain text
without local variables (a rich traceback would print every local, headers and settings included), and
every string of every event goes through the one redactor (worker/redact.py) before it is rendered."""

from __future__ import annotations

import logging
import os

import structlog
from structlog.typing import EventDict, WrappedLogger

from worker.redact import redact

_done = False


def redact_event(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Every string value of the event (message, fields, the formatted traceback) redacted."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


def configure_logging() -> None:
    global _done
    if _done:
        return
    _done = True
    level = getattr(logging, os.environ.get("EDITQ_LOG_LEVEL", "INFO").upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(message)s")
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,  # plain text, no locals
            redact_event,
            structlog.processors.JSONRenderer()
            if os.environ.get("EDITQ_LOG_JSON")
            else structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
