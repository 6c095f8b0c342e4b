"""Run a sandbox inside the current process (uvicorn on a background thread) for tests/benchmarks.

    with running_sandbox(SandboxConfig(latency_s=0.05, jitter_s=0)) as base_url:
        httpx.get(base_url + "/_sandbox/health")

Port 0 (the default) binds a free port; the yielded URL has the real one.  The server speaks real
HTTP, so clients exercise the same code paths as against ``python -m editq.sandbox``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from editq.sandbox.config import SandboxConfig
from editq.sandbox.server import create_app


@contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 20.0
) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = int(sock.getsockname()[1])
    config = (config or SandboxConfig()).updated({"host": host, "port": bound_port}, runtime=False)
    server = uvicorn.Server(
        uvicorn.Config(create_app(config), log_level=config.log_level, access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="sandbox")
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("sandbox did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
