"""No secret anywhere it could leak: every provider key, every provider webhook secret, the S3 secret and the
webhook secret are set to distinct canaries; a batch runs over every provider with sandbox faults on (5xx and
429 on submit, failed jobs, lost and badly signed webhooks, and webhook secrets that do not match, so
deliveries are refused and jobs are polled); then the logs of every process, everything in Redis (every key,
every value, Celery's messages included), every S3 object and the CLI's output are searched for each canary,
and for each job's webhook URL token."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from editq import providers
from editq.producer.api import status
from editq.producer.stack import LocalStack, scoped_env
from editq.worker.storage import get_storage
from editq.worker.webhook_auth import job_token
from tests.conftest import EXAMPLES, ROOT, wait_for, write_jsonl

FAULTS = {"latency_s": 0.2, "jitter_s": 0.1, "concurrency": 8, "seed": 11, "submit_5xx_rate": 0.2,
          "submit_429_rate": 0.15, "retry_after_s": 1, "job_failure_rate": 0.2, "webhook_lost_rate": 0.2,
          "webhook_bad_signature_rate": 0.3}
PROVIDERS = ["fal", "replicate", "wavespeed", "modelrunner", "openai", "oxen"]


def _canary(what: str) -> str:
    return f"canary-{what}-{secrets.token_hex(8)}"


def canaries() -> dict[str, str]:
    """variable -> a value no code would ever write by accident."""
    env: dict[str, str] = {}
    for spec in providers.specs():
        env[spec.key_env] = _canary(spec.name + "-key")
        ps = spec.settings_cls
        if "webhook_secret" in ps.model_fields:  # valid whsec_ form, but not the sandbox's secret: refused
            raw = _canary(spec.name + "-whsec").encode()
            env[f"{spec.env_prefix()}WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(raw).decode()
    env["AWS_SECRET_ACCESS_KEY"] = _canary("s3-secret")
    env["EDITQ_WEBHOOK_SECRET"] = _canary("webhook-secret")
    return env


def needles(env: dict[str, str]) -> dict[str, bytes]:
    """What must not appear: each value, and for whsec_ values the part after the prefix and its decoding."""
    out = {var: value.encode() for var, value in env.items()}
    for var, value in env.items():
        if value.startswith("whsec_"):
            out[var + " (base64)"] = value.removeprefix("whsec_").encode()
            out[var + " (decoded)"] = base64.b64decode(value.removeprefix("whsec_"))
    return out


def redis_dump(r: Any) -> Iterator[tuple[str, bytes]]:
    """(key, every byte of its name and value) for every key in the database."""
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"string":
            parts = [r.get(key) or b""]
        elif kind == b"hash":
            parts = [b for kv in r.hgetall(key).items() for b in kv]
        elif kind == b"list":
            parts = r.lrange(key, 0, -1)
        elif kind == b"set":
            parts = list(r.smembers(key))
        elif kind == b"zset":
            parts = [m for m, _ in r.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            parts = [b for _, fields in r.xrange(key) for kv in fields.items() for b in kv]
        else:
            parts = []
        yield key.decode("utf-8", "replace"), key + b"\n" + b"\n".join(parts)


def editq(*args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "editq", *args], capture_output=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ))
    return res.stdout.decode("utf-8", "replace") + res.stderr.decode("utf-8", "replace")


@dataclass
class CanaryStack(LocalStack):
    """A local stack whose processes get the canaries instead of the sandbox's placeholder keys (the sandbox
    accepts any key)."""

    canary: dict[str, str] = field(default_factory=dict)

    def start_sandbox(self) -> None:
        super().start_sandbox()
        self.env.update(self.canary)


@pytest.fixture(scope="module")
def canary_stack() -> Iterator[tuple[LocalStack, dict[str, str]]]:
    env = canaries()
    with scoped_env(env), CanaryStack(sandbox_opts=FAULTS, worker_concurrency=8, workers=2, canary=env) as stack:
        stack.apply_env()
        yield stack, env


def test_no_secret_in_logs_redis_s3_or_cli_output(canary_stack: tuple[LocalStack, dict[str, str]],
                                                  tmp_path: Path) -> None:
    stack, env = canary_stack
    rows: list[dict[str, Any] | str] = []
    for p in PROVIDERS:
        for i in range(2):
            rows.append({"custom_id": f"{p}-{i}", "prompt": f"Studio shot {p} {i} {secrets.token_hex(3)}",
                         "images": ["mug.png"], "provider": p, "quality": "low"})
    rows.append({"custom_id": "bad", "prompt": "x", "images": ["missing.png"]})  # refused at enqueue
    batch = write_jsonl(tmp_path / "batch.jsonl", rows)
    (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())

    cli = editq("submit", str(batch))
    batch_id = next(w for w in cli.split() if w.startswith("batch_"))
    final = wait_for(lambda: (st := status(batch_id))["finished"] and st.get("manifest_key") and st, 240,
                     "the batch to finish")
    assert final["total"] == len(PROVIDERS) * 2
    storage = get_storage()
    lines = [json.loads(x) for x in storage.get_bytes(storage.batch_manifest_key(batch_id)).splitlines() if x]
    job_ids = [m["job_id"] for m in lines]
    cli += editq("status", batch_id) + editq("status", "--json", batch_id)
    for jid in job_ids:
        cli += editq("status", jid)
    cli += editq("download", batch_id, "--out", str(tmp_path / "out"))
    # the faults happened (so error paths ran), and some jobs got through despite them
    states = final["counts"]
    assert states.get("succeeded", 0) >= 1, states
    sandbox_log = stack.log("sandbox")

    what = needles(env)
    tokens = {f"webhook token of {jid}": job_token(jid).encode() for jid in job_ids}
    found: list[str] = []

    def search(where: str, blob: bytes) -> None:
        for name, needle in {**what, **tokens}.items():
            if needle in blob:
                found.append(f"{name} in {where}")

    assert stack.log_dir is not None
    for log in sorted(Path(stack.log_dir).glob("*.log")):
        if log.name == "sandbox.log":
            continue  # the provider's side (it is given our keys and webhook URLs by design)
        search(f"log {log.name}", log.read_bytes())
    r = redis.Redis.from_url(stack.env["EDITQ_REDIS_URL"])
    n_keys = 0
    for key, blob in redis_dump(r):
        n_keys += 1
        search(f"redis {key}", blob)
    n_objects = 0
    for key in storage.list_keys(""):
        n_objects += 1
        search(f"s3 {key}", storage.get_bytes(key))
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            search(f"download {path.name}", path.read_bytes())
    search("cli output", cli.encode())
    assert not found, found
    assert n_keys > 10 and n_objects >= len(job_ids), (n_keys, n_objects)
    assert sandbox_log is not None
