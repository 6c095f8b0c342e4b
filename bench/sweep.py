"""Every webhook lost: how soon are Replicate outputs stored after the provider finished?

    python -m editq.bench.sweep --jobs 500 --latency 20 --jitter 10 --concurrency 100 --json
    python -m editq.bench.sweep --jobs 500 --latency 20 --jitter 10 --concurrency 100 --sweep-only --json

Starts the local stack (Redis, S3, the sandbox, the receiver, one worker) with the sandbox dropping every
webhook (`webhook_lost_rate` 1.0), enqueues `--jobs` Replicate jobs and waits for the batch. For each job, the
time from the provider finishing it (the sandbox's `completed_at` for its prediction) to editq having stored
its outputs and manifest (the manifest's `written_at`): p50, p99 and max. Also: which path found each finish
(`editq_provider_finished_total` by `via`: sweep, poll = the safety net, webhook) and what the sweeps cost
(list calls per minute, from the worker's `editq_sweep_list_calls_total`).

Default settings are editq's (`EDITQ_SWEEP_INTERVAL_S` 10, the safety-net poll after max(5 s, 1.5 x the
provider's latency)); `--sweep-only` moves the safety-net poll out of reach (600 s) so every finish is found by
the sweep; `--sweep-interval` overrides the interval. Both clocks are the same machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from editq.bench.harness import job_line, log, machine_state, make_inputs, percentile, sandbox_requests


def _worker_counter(ports: dict[str, int], name: str, provider: str) -> float:
    total = 0.0
    for port in ports.values():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and s.labels.get("provider") == provider:
                    total += s.value
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m editq.bench.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--latency", type=float, default=20.0)
    p.add_argument("--jitter", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=100, help="Replicate cap in editq and in the sandbox.")
    p.add_argument("--sweep-interval", type=float, default=None, help="EDITQ_SWEEP_INTERVAL_S (default: editq's).")
    p.add_argument("--sweep-only", action="store_true", help="The safety-net poll out of reach (600 s).")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from editq.producer.stack import LocalStack

    os.environ["EDITQ_REPLICATE_CONCURRENCY"] = str(a.concurrency)
    os.environ["EDITQ_INTERACTIVE_RESERVE"] = "0"
    if a.sweep_interval is not None:
        os.environ["EDITQ_SWEEP_INTERVAL_S"] = str(a.sweep_interval)
    if a.sweep_only:
        os.environ["EDITQ_POLL_INTERVAL_WEBHOOK_S"] = "600"
        os.environ["EDITQ_POLL_QUIET_MIN_S"] = "600"
    work = Path(tempfile.mkdtemp(prefix="editq-bench-sweep-"))
    machine = machine_state()
    opts = {"latency_s": a.latency, "jitter_s": a.jitter, "concurrency": a.concurrency, "render": "cached",
            "seed": 1, "webhook_lost_rate": 1.0}
    with LocalStack(sandbox_opts=opts, log_dir=work) as stack:
        from editq.producer.api import submit_batch, wait
        from editq.schemas.settings import get_settings
        from editq.worker.keys import keys
        from editq.worker.redis_client import get_redis
        from editq.worker.storage import get_storage

        images = make_inputs(work, 4)
        tag = secrets.token_hex(3)
        lines = [{**job_line(i, images, tag=tag, size="1024x1024", fmt="png"), "provider": "replicate"}
                 for i in range(a.jobs)]
        t0 = time.time()
        report = submit_batch(lines, base_dir=work)
        log(f"sweep: {report.enqueued} Replicate jobs enqueued, every webhook dropped")
        final = wait(report.batch_id, timeout=a.timeout)
        elapsed = time.time() - t0
        sandbox = sandbox_requests(stack.env["EDITQ_SANDBOX_URL"], "replicate")
        storage = get_storage()
        lags: list[float] = []
        for job_id in report.job_ids:
            m = json.loads(storage.get_bytes(storage.manifest_key(report.batch_id, job_id)))
            rid = next((r.get("request_id") for r in reversed(m["provider_requests"]) if r.get("request_id")), None)
            entry = sandbox.get(rid or "")
            if m["state"] == "succeeded" and entry and entry.get("completed_at"):
                lags.append(m["written_at"] - entry["completed_at"])
        found = {k.split("|", 1)[1]: int(v) for k, v in get_redis().hgetall(keys().stats_found).items()
                 if k.startswith("replicate|")}
        calls = _worker_counter(stack.metrics_ports, "editq_sweep_list_calls_total", "replicate")
        sweeps = _worker_counter(stack.metrics_ports, "editq_sweeps_total", "replicate")
        lost = httpx.get(stack.env["EDITQ_SANDBOX_URL"] + "/_sandbox/stats").json()[
            "providers"]["replicate"]["webhooks"]["lost"]
        s = get_settings()
    out: dict[str, Any] = {
        "jobs": a.jobs,
        "counts": final["counts"],
        "webhooks_lost": lost,
        "completion_to_stored_s": {"n": len(lags), "p50": round(percentile(lags, 50), 2),
                                   "p99": round(percentile(lags, 99), 2), "max": round(max(lags), 2)} if lags else None,
        "found_by": found,
        "sweep_list_calls": int(calls),
        "sweeps": int(sweeps),
        "sweep_list_calls_per_min": round(calls / (elapsed / 60), 1),
        "run_s": round(elapsed, 1),
        "sweep_interval_s": s.sweep_interval_s,
        "safety_net": "out of reach (600 s)" if a.sweep_only else
        f"after max({s.poll_quiet_min_s:g} s, 1.5 x latency), up to {s.poll_interval_webhook_s:g} s",
        "latency_s": a.latency,
        "jitter_s": a.jitter,
        "concurrency": a.concurrency,
        "machine": machine,
    }
    print(json.dumps(out) if a.json else json.dumps(out, indent=1))
    return 0 if final["counts"] == {"succeeded": a.jobs} else 1


if __name__ == "__main__":
    sys.exit(main())
