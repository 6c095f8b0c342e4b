"""Structured logs (structlog). Secrets never reach a log line: adapters log ids, not headers."""

from __future__ import annotations

import logging
import os

import structlog

_done = False


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
            structlog.processors.JSONRenderer()
            if os.environ.get("EDITQ_LOG_JSON")
            else structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
