"""Health of a process, in one place: what each probe checks, and the small HTTP server a worker serves
its metrics and probes on (the receiver serves the same probes from its own app).

* `/livez` (liveness): the process can answer, and, for a worker, its tick thread is alive and ticked
  recently. It never checks Redis or the broker: a Redis outage must not make Kubernetes restart every
  pod at once (they would come back to the same outage).
* `/readyz` and `/healthz` (readiness): what the process depends on answers: Redis (the job state) and
  the broker (Celery's transport; the receiver sends wake-ups through it). 503 with the failing check
  named otherwise, so a load balancer stops sending deliveries to a receiver that cannot record them.
* `/metrics` (worker): Prometheus text, with the Redis gauges of worker/metrics.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = structlog.get_logger("editq.health")

CHECK_TIMEOUT_S = 2.0


def check_redis() -> str | None:
    """None when the job-state Redis answers a PING, else why not."""
    try:
        from editq.worker.redis_client import probe_client

        probe_client().ping()
        return None
    except Exception as exc:
        return f"redis: {type(exc).__name__}: {exc}"[:300]


def check_broker() -> str | None:
    """None when Celery's broker accepts a connection, else why not."""
    try:
        from editq.worker.celery_app import app

        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_S)
        return None
    except Exception as exc:
        return f"broker: {type(exc).__name__}: {exc}"[:300]


Check = Callable[[], str | None]


def readiness(checks: tuple[Check, ...] = (check_redis, check_broker)) -> tuple[bool, dict[str, Any]]:
    problems = [p for p in (check() for check in checks) if p]
    return (not problems), {"status": "ok" if not problems else "unavailable", "problems": problems}


class Liveness:
    """A worker's liveness: its tick thread beats here; stale beats mean the process is wedged."""

    def __init__(self, stale_after_s: float = 60.0) -> None:
        self.stale_after_s = stale_after_s
        self.last_beat: float | None = None

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def check(self) -> tuple[bool, dict[str, Any]]:
        if self.last_beat is None:  # still starting: alive, not yet ticking
            return True, {"status": "starting"}
        age = time.monotonic() - self.last_beat
        ok = age <= self.stale_after_s
        return ok, {"status": "ok" if ok else "stale", "last_tick_s_ago": round(age, 3)}


LIVENESS = Liveness()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            return
        if path == "/livez":
            ok, body = LIVENESS.check()
        elif path in ("/readyz", "/healthz"):
            ok, body = readiness()
        else:
            self._send(404, b"not found\n", "text/plain")
            return
        self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
        return


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve /metrics, /livez, /readyz and /healthz on `port` in a daemon thread (0: off). A port already
    taken (two workers on one host with the same setting) is logged and skipped, never fatal."""
    if not port:
        return None
    from editq.worker.metrics import register_redis_collector

    register_redis_collector()
    try:
        server = ThreadingHTTPServer((host, port), _Handler)
    except OSError as exc:
        log.warning("metrics/health port not served", port=port, error=str(exc))
        return None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="editq-health", daemon=True).start()
    log.info("serving metrics and health", port=port)
    return server
