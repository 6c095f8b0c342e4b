"""Hostile and careless input: one bad line costs one line.

`editq submit` (the real CLI, as a process) against the session stack (real Redis, S3 over HTTP, the
sandbox, a worker): every bad line is reported with its number and the field, the good lines before
and after it run, the batch closes with its manifest and its rejected list, and the exit code says
lines were refused.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from PIL import Image

from editq.producer.api import submit_batch, wait
from editq.producer.stack import LocalStack
from editq.schemas.settings import get_settings
from editq.worker.keys import Keys
from editq.worker.state import JobStore
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, unique, wait_for

GOOD = {"prompt": "make it blue", "images": ["mug.png"], "size": "auto", "quality": "low"}


def _png(mode: str, size: tuple[int, int], noise: bool = False) -> bytes:
    im = Image.new(mode, size, (40, 90, 200, 255)[: len(mode)] if mode != "L" else 0)
    if noise:
        rnd = random.Random(7)
        im = Image.frombytes(mode, size, rnd.randbytes(size[0] * size[1] * len(mode)))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def batch_dir(tmp_path: Path) -> Path:
    (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())
    with Image.open(EXAMPLES / "mug.png") as im:
        size = im.size
    (tmp_path / "mask_rgb.png").write_bytes(_png("RGB", size))  # no alpha channel
    data = (EXAMPLES / "mug.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) * 2 // 3])  # a valid header, two thirds of the pixels
    (tmp_path / "bomb.png").write_bytes(_png("L", (7000, 7000)))  # 49 Mpx in ~50 KB
    return tmp_path


def _cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env, "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "editq", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _line(**over: Any) -> bytes:
    return json.dumps({**GOOD, **over}).encode()


# (raw line, what its report must say: the field and the reason)
HOSTILE: list[tuple[bytes, str]] = [
    (b'{"prompt": "caf\xe9", "images": ["mug.png"]}', "not valid UTF-8 (byte 16)"),
    (b"[" * 1000 + b"]" * 1000, "not valid JSON (nested too deep"),
    (b'{"prompt": "p", "images": ["mug.png"], "metadata": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}",
     "metadata: nested deeper than 8 levels"),
    (_line(images=["a" * 5000]), "images[0]: a path or URL must be at most 2,048 characters, got 5,000"),
    (_line(images=["mug.png", "https://exa\u0001mple.com/x.png"]), "images[1]: contains a control character"),
    (_line(images=["https://example.com:99999/x.png"]), "images[0]: not a valid URL: port out of range"),
    (_line(custom_id="[/red]", size="big"), "line {n} ([/red]): size: size must be 'auto'"),
    (_line(custom_id="[bold]x[/bold]", prompt=""), "line {n} ([bold]x[/bold]): prompt:"),
    (_line(images=["cut.png"]), "images[0]: cut.png is truncated or corrupt"),
    (_line(images=["bomb.png"]), "images[0]: bomb.png is 7000x7000 = 49,000,000 pixels; at most 36,000,000"),
    (_line(mask="mask_rgb.png"), "mask: has no alpha channel (mode RGB)"),
]


def test_every_hostile_line_costs_only_itself(live: LocalStack, batch_dir: Path) -> None:
    tag = unique("hostile")
    lines = [_line(custom_id=f"{tag}-first")]
    for raw, _ in HOSTILE:
        lines.append(raw)
        lines.append(_line(custom_id=f"{tag}-after-{len(lines)}"))
    path = batch_dir / "batch.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    proc = _cli(live, "submit", str(path))

    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # lines were refused; the rest is enqueued
    batch_id = proc.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("batch_")
    good = len(HOSTILE) + 1
    assert f"enqueued {good}, duplicates 0, invalid {len(HOSTILE)}" in proc.stderr
    reported = [ln for ln in proc.stderr.splitlines() if ln.startswith("line ")]
    assert len(reported) == len(HOSTILE), reported
    for i, ((_, expected), got) in enumerate(zip(HOSTILE, reported, strict=True)):
        n = 2 + 2 * i  # hostile lines are the even lines
        want = expected.format(n=n) if expected.startswith("line ") else f"line {n}: {expected}"
        assert got.startswith(want), (got, want)

    st = wait(batch_id, timeout=180)  # the batch closes: every good line ran, its manifest is written
    assert st["counts"] == {"succeeded": good} and st["invalid"] == len(HOSTILE)
    storage = get_storage()
    manifest = storage.get_bytes(st["manifest_key"]).decode().splitlines()
    assert sorted(json.loads(m)["job"]["custom_id"] for m in manifest) == sorted(
        [f"{tag}-first"] + [f"{tag}-after-{2 * i + 2}" for i in range(len(HOSTILE))])
    rejected = [json.loads(x) for x in storage.get_bytes(
        f"{get_settings().s3_prefix}/{batch_id}/rejected.jsonl").decode().splitlines()]
    assert [r["line"] for r in rejected] == [2 + 2 * i for i in range(len(HOSTILE))]
    assert [r["custom_id"] for r in rejected if r["custom_id"]] == ["[/red]", "[bold]x[/bold]"]


def test_an_unknown_default_provider_is_said_once(live: LocalStack, batch_dir: Path) -> None:
    path = batch_dir / "batch.jsonl"
    path.write_bytes(b"\n".join(_line(custom_id=unique("p")) for _ in range(5)) + b"\n")

    proc = _cli(live, "submit", "--provider", "nope", str(path))

    assert proc.returncode == 2
    assert proc.stderr.count("unknown provider 'nope'") == 1, proc.stderr
    assert "known providers: " in proc.stderr and "fal" in proc.stderr
    assert "line " not in proc.stderr and proc.stdout == ""


def test_lines_naming_an_unknown_provider_are_said_once(live: LocalStack, batch_dir: Path) -> None:
    path = batch_dir / "batch.jsonl"
    rows = [_line(custom_id=unique("p"), provider="nope") for _ in range(12)]
    path.write_bytes(b"\n".join([*rows, _line(custom_id=unique("ok"))]) + b"\n")

    proc = _cli(live, "submit", str(path))

    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("unknown provider 'nope'") == 1, proc.stderr
    assert "lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more: provider: unknown provider 'nope'" in proc.stderr
    assert "enqueued 1, duplicates 0, invalid 12" in proc.stderr


def test_all_invalid_batch_closes_with_its_manifest_and_rejected_list(live: LocalStack) -> None:
    report = submit_batch(['{"prompt": ""}', "not json", json.dumps({**GOOD, "images": ["missing.png"]})])
    assert report.enqueued == 0 and [e.line for e in report.invalid] == [1, 2, 3]

    st = wait(report.batch_id, timeout=30)  # the empty manifest is written, not stuck on a zero-byte PUT

    storage = get_storage()
    assert storage.get_bytes(st["manifest_key"]) == b""
    rejected = storage.get_bytes(f"{get_settings().s3_prefix}/{report.batch_id}/rejected.jsonl").decode()
    assert [json.loads(x)["line"] for x in rejected.splitlines()] == [1, 2, 3]
    assert json.loads(rejected.splitlines()[2])["error"] == "images[0]: file not found: missing.png"


def test_the_local_s3_server_answers_a_zero_byte_upload(live: LocalStack) -> None:
    """boto3 sends `Expect: 100-continue` with every PutObject; waitress never served one without a body."""
    client = boto3.client("s3", endpoint_url=live.env["EDITQ_S3_ENDPOINT"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, read_timeout=5,
                                        retries={"max_attempts": 1, "mode": "standard"}))
    key = unique("empty")
    client.put_object(Bucket=live.env["EDITQ_S3_BUCKET"], Key=key, Body=b"")
    assert client.get_object(Bucket=live.env["EDITQ_S3_BUCKET"], Key=key)["Body"].read() == b""


@pytest.fixture
def big_data_uri() -> Iterator[str]:
    data = _png("RGB", (600, 600), noise=True)  # ~1 MB of incompressible pixels
    assert len(data) > 1_000_000
    yield "data:image/png;base64," + base64.b64encode(data).decode()


def test_a_data_uri_is_stored_once_and_referenced(live: LocalStack, big_data_uri: str) -> None:
    cid = unique("datauri")
    report = submit_batch([json.dumps({**GOOD, "images": [big_data_uri], "custom_id": cid})])
    (job_id,) = report.job_ids
    store = JobStore()
    r, k = store.r, Keys(get_settings().key_prefix)

    used = int(r.memory_usage(k.job(job_id)) or 0)
    assert used < 20_000, f"the job record takes {used} bytes in Redis for a 1.4 MB data URI"
    view = store.get(job_id)
    assert view is not None
    (rec,) = view.job.inputs
    assert view.job.images == [f"s3://{get_settings().s3_bucket}/{rec.s3_key}"]
    assert get_storage().get_bytes(rec.s3_key) == base64.b64decode(big_data_uri.split(",", 1)[1])

    final = wait_for(lambda: (v := store.get(job_id)) is not None and v.state.value == "succeeded" and v,
                     timeout=120, what="the data-URI job to succeed")
    manifest = get_storage().get_bytes(get_storage().manifest_key(final.batch_id, job_id))
    assert len(manifest) < 20_000 and b"base64," + big_data_uri[22:60].encode() not in manifest
    assert json.loads(manifest)["job"]["images"] == view.job.images


def test_the_producer_holds_one_line_at_a_time(live: LocalStack, big_data_uri: str) -> None:
    """Lines of 1.4 MB each: the producer's Python memory peaks at the same height for 2 lines as for
    20 (one line at a time), not 1.4 MB higher per line (the jobs of a chunk held their data URIs)."""
    tag = unique("mem")

    def peak_for(n: int) -> int:
        def lines() -> Iterator[str]:
            for i in range(n):
                yield json.dumps({**GOOD, "images": [big_data_uri], "custom_id": f"{tag}-{n}-{i}"})

        tracemalloc.start()
        try:
            report = submit_batch(lines(), keep_ids=False)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert report.enqueued == n and not report.invalid
        return peak

    small, large = peak_for(2), peak_for(20)
    assert large - small < 5 * 1024 * 1024, f"peak {small / 1e6:.1f} MB for 2 lines, {large / 1e6:.1f} MB for 20"
