"""A tiny run of the benchmark harness: it starts the stack, runs the jobs and reports every key.

Says nothing about speed (no timing is asserted); docs/benchmarks.md has the real runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

KEYS = {
    "jobs", "succeeded", "failed", "wall_s", "ideal_s", "efficiency", "max_provider_inflight",
    "overhead_ms_p50", "overhead_ms_p99", "enqueue_jobs_per_s", "peak_rss_mb", "redis_bytes_per_job",
    "sandbox_render",
}


def test_throughput_harness_reports_every_key() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "editq.bench.throughput", "--jobs", "20", "--latency", "0.1",
         "--provider-concurrency", "10", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) >= KEYS, KEYS - set(out)
    assert out["jobs"] == out["succeeded"] == 20 and out["failed"] == 0
    assert out["sandbox_render"] == "cached"
    assert 0 < out["max_provider_inflight"] <= 10
    assert out["overhead_samples"] == 20
    assert out["redis_bytes_per_job"] > 0 and out["peak_rss_mb"] > 0


def test_scale_harness_counts_every_queued_and_finished_job() -> None:
    """bench/scale on 300 lines enqueued and 20 jobs finished: every job is counted, the finished ones keep the
    compact record (the bound itself is tests/test_retention.py's)."""
    proc = subprocess.run(
        [sys.executable, "-m", "editq.bench.scale", "--lines", "300", "--finish", "20", "--interval", "0.5",
         "--provider-concurrency", "10", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    enq, fin = out["enqueue"], out["finish"]
    assert enq["enqueued"] == 300 and enq["by_kind"]["job"]["keys"] == 300 and enq["by_kind"]["idem"]["keys"] == 300
    assert enq["redis_memory_usage_per_queued_job"] > 0 and enq["producer_cpu_s"] > 0
    assert fin["finished"] == 20 and fin["by_kind"]["job"]["keys"] == 20
    assert 0 < fin["per_job_by_kind"]["job"] < 1024
