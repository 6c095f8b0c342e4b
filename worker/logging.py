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
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from editq.worker.redact import redact

_done = False
NOISY = ("httpx", "httpcore", "botocore", "boto3", "s3transfer", "urllib3")


def redact_event(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Every string value of the event (message, fields, the formatted traceback) redacted."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in event.items()}


class LineWriter:
    """The logger behind editq's own (structlog) events: the line is rendered by structlog's processors and
    written here to the root handler's stream, under that handler's lock, so it interleaves with Celery's
    lines whole. Going through the standard library instead (a LogRecord built twice, the caller's frame
    looked up, a formatter re-running the processors) was most of the ~90 us a lifecycle line cost, and a
    job writes three (docs/benchmarks.md)."""

    def __init__(self, name: str, handler: logging.StreamHandler[TextIO]) -> None:
        self.name = name
        self._handler = handler

    def msg(self, message: str) -> None:
        h = self._handler
        with h.lock or _NO_LOCK:
            try:
                h.stream.write(message + "\n")
                h.stream.flush()
            except (OSError, ValueError):  # a closed or broken stream loses the line, never the step
                pass

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


_NO_LOCK = _NoLock()


def _writer_factory(handler: logging.StreamHandler[TextIO]) -> Any:
    def factory(*args: Any) -> LineWriter:
        return LineWriter(str(args[0]) if args else "", handler)

    return factory


_ABSENT = object()
_QUOTED = frozenset(" \t=\r\n\"'")


class PlainRenderer:
    """structlog's plain `ConsoleRenderer(colors=False)` line, built in one pass for the usual event (a
    timestamp, level, message, logger and fields): the generic renderer formats each column through its own
    formatter objects and StringIO, most of what a lifecycle line cost. Events with a stack, an exception or
    a `logger_name` go to ConsoleRenderer itself; tests/test_logging.py checks both give the same text."""

    def __init__(self) -> None:
        self.full = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        self.level_width = len(max(structlog.dev.ConsoleRenderer.get_default_level_styles(colors=False), key=len))

    @staticmethod
    def _repr(value: Any) -> str:
        if isinstance(value, str) and not _QUOTED.intersection(value):
            return value
        return repr(value)

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> str:
        level = event.get("level", _ABSENT)
        if ("stack" in event or "exception" in event or "exc_info" in event or "logger_name" in event
                or (level is not _ABSENT and not isinstance(level, str))):
            return str(self.full(logger, name, event))
        parts: list[str] = []
        ts = event.pop("timestamp", _ABSENT)
        if ts is not _ABSENT:
            parts.append(str(ts))
        if level is not _ABSENT:
            del event["level"]
            parts.append(f"[{str(level).ljust(self.level_width)}]")
        msg = event.pop("event", _ABSENT)
        if msg is not _ABSENT:
            parts.append(str(msg).ljust(30))
        lg = event.pop("logger", _ABSENT)
        if lg is not _ABSENT:
            parts.append(f"[{lg}]")
        for key in sorted(event):
            parts.append(f"{key}={self._repr(event[key])}")
        return " ".join(p for p in parts if p).rstrip(" ")


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
        else PlainRenderer()
    )
    final: list[Processor] = [
        structlog.processors.format_exc_info,  # plain text, no locals
        redact_event,
        renderer,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
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
    # editq's own events: the same processors and renderer, written straight to the handler's stream
    structlog.configure(
        processors=[*shared, *final],
        logger_factory=_writer_factory(handler),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
