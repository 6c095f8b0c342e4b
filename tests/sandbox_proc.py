"""The sandbox as a child process for tests that talk HTTP to it, and the bounded wait they poll it with."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.02) -> T:
    """Poll `check` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@contextmanager
def sandbox_process(*args: str, keep_sandbox_env: bool = False, what: str = "sandbox") -> Iterator[str]:
    """`python -m editq.sandbox` on a free loopback port with `args` (e.g. "--seed", "3"); yields its base URL once
    /_sandbox/health answers 200. The child sees this environment minus EDITQ_SANDBOX_* (unless
    `keep_sandbox_env`), so nothing inherited reconfigures it. Stopped (killed if need be) on exit."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not keep_sandbox_env:
        env = {k: v for k, v in env.items() if not k.startswith("EDITQ_SANDBOX_")}
    # output to a file, not a pipe: nobody reads it while the tests run, and a full pipe blocks the sandbox
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "editq.sandbox", "--host", "127.0.0.1", "--port", str(port), "--latency", "0.05",
             "--jitter", "0", *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"sandbox exited early ({proc.returncode}): {log.read().decode(errors='replace')}")
            try:
                return httpx.get(url + "/_sandbox/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, timeout=30, what=what, interval=0.02)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
