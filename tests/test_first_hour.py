"""The first hour (issue 11): `editq up`/`down` on real processes, one clear line for each thing a user
must fix (and nothing half-made), the watch display, and verified, parallel, resumable downloads."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from editq.producer.api import submit_batch, wait
from editq.producer.download import download_batch
from editq.producer.stack import LocalStack, reset_caches, scoped_env
from editq.producer.up import _alive, read_pids
from editq.producer.watch import Meter, render, workers_alive
from editq.worker.keys import Keys, namespace_patterns, scan_keys
from editq.worker.startup import is_secret_var
from editq.worker.state import JobStore
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, unique, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def editq(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "editq", *args], capture_output=True, text=True, timeout=300,
                          env=env if env is not None else dict(os.environ), cwd=cwd)


def one_line_error(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode != 0, res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def parse_env(lines: list[str]) -> dict[str, str]:
    out = {}
    for ln in lines:
        if ln.startswith("export "):
            name, _, value = ln.removeprefix("export ").partition("=")
            out[name] = shlex.split(value)[0] if value else ""
    return out


def batch_keys(r: redis.Redis, prefix: str) -> list[str]:
    """The batch hashes under `prefix` (not their job lists and indexes)."""
    return [k for k in r.scan_iter(Keys(prefix).match("batch")) if k.count(":") == prefix.count(":") + 2]


# ---------------------------------------------------------------------------------------------- up / down
def test_up_starts_a_detached_stack_that_other_shells_use_and_down_stops_it(tmp_path: Path) -> None:
    tag = unique("up")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDITQ_", "AWS_"))}
    env.update(EDITQ_KEY_PREFIX=tag, EDITQ_QUEUE_PREFIX=tag)
    state = tmp_path / ".editq"
    first = editq("up", "--latency", "0.2", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr + (state / "supervisor.log").read_text(errors="replace")
    shown = parse_env(first.stdout.splitlines())
    written = parse_env((state / "env").read_text().splitlines())
    public = {k: v for k, v in written.items() if not is_secret_var(k)}
    assert {k: v for k, v in shown.items() if not is_secret_var(k)} == public and written["EDITQ_KEY_PREFIX"] == tag
    # secrets (the S3 secret, the webhook secret, keys) are in the env file only, not on the screen
    assert {k for k in written if is_secret_var(k)} >= {"AWS_SECRET_ACCESS_KEY", "EDITQ_WEBHOOK_SECRET"}
    assert all(shown[k] == "***" for k in written if is_secret_var(k))
    for name in ("EDITQ_REDIS_URL", "EDITQ_S3_ENDPOINT", "EDITQ_SANDBOX_URL", "EDITQ_WEBHOOK_BASE_URL",
                 "EDITQ_FAL_BASE_URL", "AWS_ACCESS_KEY_ID"):
        assert written.get(name), name
    pids = read_pids(state)
    assert pids is not None and _alive(pids["supervisor"])
    services = pids["services"]
    assert {"s3", "sandbox", "webhooks", "worker0"} <= set(services) and all(_alive(p) for p in services.values())
    try:
        # the command returned, the stack stays: another "shell" uses it through the env file
        again = editq("up", env=env, cwd=tmp_path)
        assert again.returncode == 0 and "already running" in again.stderr
        assert httpx.get(written["EDITQ_SANDBOX_URL"] + "/_sandbox/health", timeout=5).status_code == 200
        batch = tmp_path / "one.jsonl"
        write_jsonl(batch, [{"custom_id": "up-1", "prompt": "Up and running", "images": [str(EXAMPLES / "mug.png")],
                             "quality": "low"}])
        shell = {**env, **written}
        sub = editq("submit", str(batch), env=shell, cwd=tmp_path)
        assert sub.returncode == 0, sub.stderr
        batch_id = sub.stdout.strip().splitlines()[-1]
        with scoped_env(written):
            reset_caches()  # this process reads the stack's settings (key prefix, Redis) from here on
            st = wait(batch_id, timeout=90, interval=0.2)
        assert st["counts"] == {"succeeded": 1}
    finally:
        down = editq("down", env=env, cwd=tmp_path)
        r = redis.Redis.from_url(written["EDITQ_REDIS_URL"], socket_connect_timeout=1)
        try:
            keys = list(scan_keys(r, namespace_patterns(tag, tag)))
            if keys:
                r.delete(*keys)
        except redis.RedisError:
            pass  # an embedded Redis went with the stack
    assert down.returncode == 0 and down.stdout.strip() == "stopped", down.stderr
    assert not _alive(pids["supervisor"]) and not any(_alive(p) for p in services.values())
    assert not (state / "env").exists() and read_pids(state) is None
    assert editq("down", env=env, cwd=tmp_path).stdout.startswith("nothing running")


def test_down_stops_the_services_when_the_supervisor_was_killed(tmp_path: Path) -> None:
    tag = unique("upkill")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDITQ_", "AWS_"))}
    env.update(EDITQ_KEY_PREFIX=tag, EDITQ_QUEUE_PREFIX=tag)
    res = editq("up", "--latency", "0.2", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    pids = read_pids(tmp_path / ".editq")
    assert pids is not None
    os.kill(pids["supervisor"], 9)
    down = editq("down", env=env, cwd=tmp_path)
    assert down.stdout.strip() == "stopped"
    assert not any(_alive(p) for p in pids["services"].values())


# ---------------------------------------------------------------------------------------------- clear errors
@pytest.fixture
def batch_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "b.jsonl", [{"custom_id": "e-1", "prompt": "Errors first",
                                              "images": [str(EXAMPLES / "mug.png")], "quality": "low"}])


def test_an_unknown_id_is_one_line(live: LocalStack) -> None:
    one_line_error(editq("status", "batch_nope"), "no batch or job with id 'batch_nope'")
    one_line_error(editq("jobs", "batch_nope"), "no batch with id 'batch_nope'")
    one_line_error(editq("rerun", "batch_nope"), "no batch with id 'batch_nope'")
    one_line_error(editq("cancel", "job_nope"), "no batch or job with id 'job_nope'")
    one_line_error(editq("status", "sku-1", "--batch", "batch_nope"), "no batch with id 'batch_nope'")
    bid = submit_batch([{"custom_id": "known", "prompt": "Known", "images": [str(EXAMPLES / "mug.png")]}]).batch_id
    one_line_error(editq("status", "unknown-sku", "--batch", bid),
                   f"no job with custom_id or id 'unknown-sku' in batch {bid}")


def test_redis_unreachable_is_one_line(live: LocalStack, batch_file: Path) -> None:
    env = {**os.environ, "EDITQ_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}
    line = one_line_error(editq("submit", str(batch_file), env=env), "cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "hunter2" not in line
    one_line_error(editq("status", "batch_x", env=env), "cannot reach Redis")


def test_missing_s3_credentials_is_one_line_and_makes_nothing(live: LocalStack, batch_file: Path) -> None:
    prefix = unique("nocreds")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
               EDITQ_KEY_PREFIX=prefix, AWS_EC2_METADATA_DISABLED="true")
    one_line_error(editq("submit", str(batch_file), env=env), "no S3 credentials")
    r = redis.Redis.from_url(live.env["EDITQ_REDIS_URL"], decode_responses=True)
    assert batch_keys(r, prefix) == [] and list(r.scan_iter(Keys(prefix).all)) == []


def test_missing_bucket_is_one_line_and_create_bucket_creates_it(live: LocalStack, batch_file: Path) -> None:
    prefix, bucket = unique("nobucket"), unique("bucket")
    env = {**os.environ, "EDITQ_KEY_PREFIX": prefix, "EDITQ_S3_BUCKET": bucket}
    one_line_error(editq("submit", str(batch_file), env=env), f"bucket '{bucket}' does not exist", "--create-bucket")
    r = redis.Redis.from_url(live.env["EDITQ_REDIS_URL"], decode_responses=True)
    assert list(r.scan_iter(Keys(prefix).all)) == []
    made = editq("submit", "--create-bucket", str(batch_file), env=env)
    assert made.returncode == 0, made.stderr
    assert "enqueued 1" in made.stderr and len(batch_keys(r, prefix)) == 1
    get_storage().client.head_bucket(Bucket=bucket)  # raises if it was not created


def test_a_submit_that_fails_midway_leaves_no_empty_batch(live: LocalStack) -> None:
    store = JobStore()
    bid = unique("batch")
    with scoped_env({"EDITQ_S3_ENDPOINT": "http://127.0.0.1:1"}), pytest.raises(Exception):  # noqa: B017 - any error
        reset_caches()
        submit_batch([{"prompt": "S3 is gone", "images": [str(EXAMPLES / "mug.png")]}], batch_id=bid)
    assert not store.r.exists(store.k.batch(bid)) and not store.r.exists(store.k.batch_errors(bid))


# ---------------------------------------------------------------------------------------------- watch
def _status(**kw: Any) -> dict[str, Any]:
    st = {"batch_id": "b1", "total": 1000, "done": 400, "counts": {"succeeded": 390, "failed": 10, "queued": 600},
          "finished": False, "cost_usd": 12.5, "failures": {"fal: internal error": 7, "openai edit: moderated": 3}}
    return st | kw


def test_watch_render_shows_rate_eta_split_cost_failures() -> None:
    meter = Meter()
    meter.add(0.0, 100)
    meter.add(60.0, 400)  # 5 jobs/s
    lines = render(_status(), rate=meter.rate(), workers=2,
                   split={"fal": {"succeeded": 300, "failed": 7}, "replicate": {"succeeded": 90}})
    assert lines[0] == "batch b1: 400/1000 finished (failed 10, queued 600, succeeded 390)"
    assert lines[1] == "rate: 300.0 jobs/min, ETA 2m00s for 600 left; cost so far: $12.50"
    assert lines[2] == "by provider: fal failed 7 succeeded 300; replicate succeeded 90"
    assert lines[3:] == ["failures:", "  7 x fal: internal error", "  3 x openai edit: moderated"]
    none = render(_status(cost_usd=None, failures={}), rate=None, workers=0, split={})
    assert none[1] == "rate: measuring…; cost so far: not recorded"
    assert none[-1].startswith("WARNING: no worker is alive")
    assert not any("WARNING" in x for x in render(_status(finished=True), rate=0.0, workers=0, split={}))


def test_watch_on_a_live_batch(live: LocalStack) -> None:
    rows = [{"custom_id": "w-ok", "prompt": "Watch me", "images": [str(EXAMPLES / "mug.png")], "quality": "low"},
            {"custom_id": "w-bad", "provider": "openai", "prompt": "sandbox:moderation watch",
             "images": [str(EXAMPLES / "mug.png")], "quality": "low"}]
    bid = submit_batch(rows).batch_id
    st = wait(bid, timeout=90, interval=0.1)
    assert st["providers"] == {"fal": {"succeeded": 1}, "openai": {"failed": 1}}
    (reason, count), = st["failures"].items()
    assert count == 1 and "moderation_blocked" in reason and "req_" not in reason
    store = JobStore()
    assert workers_alive(store) >= 1
    lonely = JobStore(k=Keys(unique("noworkers")))
    assert workers_alive(lonely) == 0
    shown = editq("status", bid, "--watch")
    assert shown.returncode == 0, shown.stderr
    assert "by provider: fal succeeded 1; openai failed 1" in shown.stderr
    assert "1 x openai edit" in shown.stderr and "done; cost so far" in shown.stderr


# ---------------------------------------------------------------------------------------------- downloads
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_parallel_by_custom_id_skips_same_sha_and_verifies(live: LocalStack, tmp_path: Path) -> None:
    rows = [{"custom_id": "mug/1", "prompt": "Two of them", "images": [str(EXAMPLES / "mug.png")], "num_images": 2,
             "quality": "low"},
            {"custom_id": "bottle", "prompt": "One of it", "images": [str(EXAMPLES / "bottle.png")], "quality": "low"}]
    bid = submit_batch(rows).batch_id
    assert wait(bid, timeout=90, interval=0.1)["counts"] == {"succeeded": 2}
    manifests = {m["custom_id"]: m for m in (json.loads(x) for x in
                 get_storage().get_bytes(f"outputs/{bid}/manifest.jsonl").splitlines())}
    folder = tmp_path / bid
    first = download_batch(bid, tmp_path, name="custom_id", workers=4)
    assert first.ok and first.skipped == 0
    outs = {p.name: p for p in folder.iterdir() if p.is_file() and p.suffix == ".png"}
    assert set(outs) == {"mug_1-0.png", "mug_1-1.png", "bottle.png"}
    assert _sha(outs["bottle.png"]) == manifests["bottle"]["outputs"][0]["sha256"]
    assert [_sha(outs[f"mug_1-{i}.png"]) for i in range(2)] == [o["sha256"] for o in manifests["mug/1"]["outputs"]]
    assert json.loads((folder / "manifests" / "bottle.json").read_text())["custom_id"] == "bottle"
    assert (folder / "manifest.jsonl").exists()

    again = download_batch(bid, tmp_path, name="custom_id")
    assert again.ok and again.skipped == 3 and again.written == first.written - 3
    outs["mug_1-0.png"].write_bytes(b"damaged")  # a different file at the target is replaced
    fixed = download_batch(bid, tmp_path, name="custom_id")
    assert fixed.skipped == 2 and _sha(outs["mug_1-0.png"]) == manifests["mug/1"]["outputs"][0]["sha256"]

    storage = get_storage()  # bytes in S3 that are not what the manifest recorded are refused
    storage.put_bytes(manifests["bottle"]["outputs"][0]["key"], b"not the image", "image/png")
    outs["bottle.png"].unlink()
    res = editq("download", bid, "--name", "custom_id", "--out", str(tmp_path))
    assert res.returncode == 1 and "does not match the manifest's" in res.stderr
    assert not outs["bottle.png"].exists() and not list(folder.glob(".part-*"))
    by_job = download_batch(bid, tmp_path / "layout")  # S3's layout by default
    jid = manifests["mug/1"]["job_id"]
    assert (tmp_path / "layout" / bid / jid / "1.png").exists() and (tmp_path / "layout" / bid / jid /
                                                                       "manifest.json").exists()
    assert len(by_job.failed) == 1
