"""End-to-end throughput of editq at the provider's limit, and of the design a user writes first.

    python -m editq.bench.throughput --jobs 2000 --latency 20 --provider-concurrency 500 --json
    python -m editq.bench.throughput --jobs 2000 --latency 20 --provider-concurrency 500 --compare --json
    python -m editq.bench.throughput --jobs 2000 --latency 0 --provider-concurrency 500 --rate 20 --json

Starts the whole system as `make demo` does (Redis, moto's S3 server over HTTP, the sandbox with
latency L, no jitter and concurrency cap C, the webhook receiver, worker processes with their
default settings), runs N fal jobs and prints one JSON object as its last line. editq's own cap for
fal (`EDITQ_FAL_CONCURRENCY`) is set to the provider's cap C, as a user would configure it.

`--naive` runs the same jobs through one Celery task per job that submits and then polls with
sleep inside the task (bench/naive.py); `--compare` runs editq, then the naive design, and prints
both with the ratio. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from editq.bench.harness import (
    MB,
    RssSampler,
    batch_manifests,
    cpu_seconds,
    job_line,
    job_rows,
    log,
    machine_state,
    make_inputs,
    max_inflight,
    overheads_ms,
    percentile,
    redis_bytes,
    sandbox_requests,
    wait_batch,
)

DEFAULT_WORKER_CONCURRENCY = 16  # `editq worker --concurrency` default (producer/cli.py)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m editq.bench.throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--latency", type=float, default=2.0, help="Sandbox time in progress per job (s).")
    p.add_argument("--jitter", type=float, default=0.0, help="Sandbox extra uniform latency (s); default 0.")
    p.add_argument("--provider-concurrency", type=int, default=50, help="Sandbox cap C on jobs in progress.")
    p.add_argument("--editq-cap", type=int, default=None, help="EDITQ_FAL_CONCURRENCY (default: C).")
    p.add_argument("--size", default="512x512", help="Output size WxH (or auto).")
    p.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--inputs", type=int, default=4, help="Distinct input images.")
    p.add_argument("--input-size", default="512x512")
    p.add_argument("--noise-inputs", action="store_true", help="Incompressible inputs (real-size files).")
    p.add_argument("--render", default="cached", choices=["cached", "real"],
                   help="Sandbox rendering: cached = pre-rendered bytes per (size, format); real = Pillow edit.")
    p.add_argument("--webhooks", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=int, default=1, help="Worker processes.")
    p.add_argument("--worker-concurrency", type=int, default=DEFAULT_WORKER_CONCURRENCY,
                   help="Threads per worker process (editq's default: 16).")
    p.add_argument("--rate", type=float, default=0.0,
                   help="Offered load in jobs/s (0: enqueue the whole batch at once).")
    p.add_argument("--verify-bytes", action="store_true",
                   help="Compare sha256 of every output in S3 with the sandbox's file on disk.")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--dump", type=Path, default=None, help="Write per-job timings (JSONL) here.")
    p.add_argument("--py-spy", type=float, default=0.0, metavar="SECONDS",
                   help="Profile workers, receiver, sandbox and S3 server with py-spy for this long (raw "
                        "flamegraph files in the run's log folder).")
    p.add_argument("--json", action="store_true", help="Print only the JSON result on stdout.")
    g = p.add_argument_group("naive design")
    g.add_argument("--naive", action="store_true", help="Run only the naive design.")
    g.add_argument("--compare", action="store_true", help="Run editq, then the naive design; print both.")
    g.add_argument("--naive-pool", default="threads", choices=["threads", "prefork"])
    g.add_argument("--naive-slots", type=int, default=None,
                   help="Total task slots of the naive workers (default: editq's, workers x worker-concurrency).")
    g.add_argument("--naive-window", type=float, default=120.0,
                   help="Measure the naive design over this many seconds after the first enqueue.")
    g.add_argument("--naive-poll", type=float, default=1.0, help="Sleep between the naive task's status polls.")
    return p.parse_args(argv)


def sandbox_opts(a: argparse.Namespace, files_dir: Path | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {"latency_s": a.latency, "jitter_s": a.jitter, "concurrency": a.provider_concurrency,
                            "render": a.render, "seed": 1}
    if files_dir is not None:
        opts["files_dir"] = str(files_dir)
    return opts


def _input_size(a: argparse.Namespace) -> tuple[int, int]:
    w, h = a.input_size.split("x")
    return int(w), int(h)


# ====================================================================== editq
def run_editq(a: argparse.Namespace) -> dict[str, Any]:
    from editq.producer.stack import LocalStack

    cap = a.editq_cap or a.provider_concurrency
    os.environ["EDITQ_FAL_CONCURRENCY"] = str(cap)
    work = Path(tempfile.mkdtemp(prefix="editq-bench-"))
    files_dir = work / "sandbox-files" if a.verify_bytes else None
    machine = machine_state()
    log(f"editq: starting the stack ({a.workers} worker(s) x {a.worker_concurrency} threads, cap {cap})")
    with LocalStack(sandbox_opts=sandbox_opts(a, files_dir), workers=a.workers,
                    worker_concurrency=a.worker_concurrency, webhooks=a.webhooks, log_dir=work) as stack:
        from editq.producer.api import Enqueuer, Tally, new_id, submit_batch
        from editq.worker.keys import Keys, namespace_patterns
        from editq.worker.redis_client import get_redis

        r = get_redis()
        k = Keys(stack.env["EDITQ_KEY_PREFIX"])
        namespace = namespace_patterns(k.prefix, stack.env["EDITQ_QUEUE_PREFIX"])
        sandbox = stack.env["EDITQ_SANDBOX_URL"]
        tag = secrets.token_hex(3)
        images = make_inputs(work, a.inputs, _input_size(a), noise=a.noise_inputs)
        lines = [job_line(i, images, tag=tag, size=a.size, fmt=a.format, num_images=a.num_images)
                 for i in range(a.jobs)]
        worker_pids = [p.pid for n, p in stack.procs.items() if n.startswith("worker")]
        receiver_pids = [stack.procs["webhooks"].pid] if "webhooks" in stack.procs else []
        sampler = RssSampler(trees=lambda: worker_pids + receiver_pids, singles=lambda: [os.getpid()]).start()
        # warm the producer's imports and S3 connection on one input so the timed part is the batch
        Enqueuer(new_id("batch"), work).inputs.prepare(images[0], "images[0]")

        log(f"editq: enqueueing {a.jobs} jobs" + (f" at {a.rate}/s" if a.rate else " at once"))
        named = {n: p.pid for n, p in stack.procs.items()}
        cpu0 = cpu_seconds(named)
        me0, redis0 = psutil.Process().cpu_times(), r.info("cpu")
        spies = start_py_spy(named, a.py_spy, work) if a.py_spy else []
        t0 = time.time()
        if a.rate > 0:
            batch_id = new_id("batch")
            enq = Enqueuer(batch_id, work)
            tally = Tally(batch_id=batch_id)
            r.hset(enq.store.k.batch(batch_id), mapping={"created_at": repr(t0), "source": "bench"})
            for i, line in enumerate(lines):
                delay = t0 + i / a.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                enq.write([(i + 1, enq.prepare(line, None))], tally)
            enq.flush(tally)  # the last job's reply, read
            enq.close()
            report = tally.report()
        else:
            report = submit_batch(lines, base_dir=work)
            batch_id = report.batch_id
        t_enq = time.time()
        me_enq = psutil.Process().cpu_times()
        queued_bytes, _ = redis_bytes(r, namespace)
        assert report.enqueued == a.jobs, f"enqueued {report.enqueued} of {a.jobs}: {report.invalid[:3]}"
        log(f"editq: enqueued in {t_enq - t0:.2f}s; waiting for the batch manifest")
        batch = wait_batch(r, k, batch_id, a.timeout)
        t_end = float(batch["finalized"])
        sampler.stop()
        for spy in spies:
            spy.wait()
        cpu1 = cpu_seconds(named)
        me1, redis1 = psutil.Process().cpu_times(), r.info("cpu")
        cpu = {n: round(cpu1[n] - cpu0[n], 1) for n in named}
        cpu["producer"] = round(me1.user + me1.system - me0.user - me0.system, 1)  # enqueue + this harness
        cpu_enqueue = round(me_enq.user + me_enq.system - me0.user - me0.system, 2)
        cpu["redis_server (shared)"] = round(sum(float(redis1[k]) - float(redis0[k])
                                                 for k in ("used_cpu_sys", "used_cpu_user")), 1)

        rows = job_rows(r, k, report.job_ids, batch_manifests(batch))
        sreq = sandbox_requests(sandbox)
        over = overheads_ms(rows, sreq)
        infl = max_inflight(sandbox)
        end_bytes, _ = redis_bytes(r, namespace)
        deliveries: dict[str, float] = {}
        if "EDITQ_WEBHOOK_BASE_URL" in stack.env:
            import httpx

            text = httpx.get(stack.env["EDITQ_WEBHOOK_BASE_URL"] + "/metrics", timeout=10).text
            for m in re.finditer(r'editq_webhook_deliveries_total\{outcome="([^"]+)",provider="fal"\} (\S+)', text):
                deliveries[m.group(1)] = float(m.group(2))
        succeeded = sum(1 for x in rows if x["state"] == "succeeded")
        failed = sum(1 for x in rows if x["state"] == "failed")
        wall = t_end - t0
        ideal = a.jobs * a.latency / a.provider_concurrency
        last_job = max((x["done_at"] or 0) for x in rows)
        growth = sampler.growth_mb(worker_pids)
        result: dict[str, Any] = {
            "design": "editq",
            "jobs": a.jobs,
            "succeeded": succeeded,
            "failed": failed,
            "wall_s": round(wall, 3),
            "ideal_s": round(ideal, 3),
            "efficiency": round(ideal / wall, 4) if ideal else None,
            "jobs_per_s": round(succeeded / wall, 2),
            "last_job_done_s": round(last_job - t0, 3),
            "max_provider_inflight": infl["max_in_flight"],
            "max_provider_in_progress": infl["max_in_progress"],
            "overhead_ms_p50": round(percentile(over, 50), 1),
            "overhead_ms_p90": round(percentile(over, 90), 1),
            "overhead_ms_p99": round(percentile(over, 99), 1),
            "overhead_ms_max": round(max(over), 1) if over else None,
            "overhead_samples": len(over),
            "enqueue_s": round(t_enq - t0, 3),
            "enqueue_jobs_per_s": round(a.jobs / max(t_enq - t0, 1e-9), 1),
            "offered_load_jobs_per_s": a.rate or None,
            "peak_rss_mb": round(sampler.peak_total / MB, 1),
            "peak_rss_mb_by_process": {
                **{f"worker{i}": round(sampler.peak.get(pid, 0) / MB, 1) for i, pid in enumerate(worker_pids)},
                **({"receiver": round(sampler.peak.get(receiver_pids[0], 0) / MB, 1)} if receiver_pids else {}),
                "producer": round(sampler.peak.get(os.getpid(), 0) / MB, 1),
            },
            "worker_rss_growth_mb_max": max(growth.values()) if growth else None,
            "cpu_s_by_process": cpu,
            "cpu_s_producer_enqueue": cpu_enqueue,
            # editq's own processes: workers, receiver, producer (docs/benchmarks.md, section 3)
            "editq_cpu_ms_per_job": round(1000 * sum(v for n, v in cpu.items()
                                                     if n.startswith(("worker", "webhooks", "producer"))) / a.jobs, 2),
            "webhook_deliveries": deliveries,
            "redis_bytes_per_job": round(end_bytes / a.jobs),
            "redis_bytes_per_job_queued": round(queued_bytes / a.jobs),
            "latency_s": a.latency,
            "jitter_s": a.jitter,
            "provider_concurrency": a.provider_concurrency,
            "editq_cap": cap,
            "workers": a.workers,
            "worker_concurrency": a.worker_concurrency,
            "webhooks": a.webhooks,
            "output_size": a.size,
            "output_format": a.format,
            "sandbox_render": a.render,
            "machine": machine,
            "log_dir": str(work),
        }
        if a.dump:
            with a.dump.open("w") as fh:
                for row in rows:
                    e = sreq.get(row["request_id"] or "", {})
                    fh.write(json.dumps({"job_id": row["job_id"], "created": row["created_at"] - t0,
                                         "received": (e.get("received_at") or t0) - t0,
                                         "completed": (e.get("completed_at") or t0) - t0,
                                         "done": (row["done_at"] or t0) - t0, "webhook": e.get("webhook"),
                                         "history": r.hget(k.job(row["job_id"]), "h")}) + "\n")
        if a.verify_bytes:
            assert files_dir is not None
            result.update(verify_bytes(rows, files_dir))
        log(f"editq: logs in {work}")
    return result


def start_py_spy(named: dict[str, int], seconds: float, folder: Path) -> list[subprocess.Popen[bytes]]:
    exe = Path(sys.executable).parent / "py-spy"
    procs = []
    for name, pid in named.items():
        out = folder / f"py-spy-{name}.raw"
        procs.append(subprocess.Popen([str(exe), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100",
                                       "-f", "raw", "-o", str(out), "--subprocesses", "--nonblocking", "--gil"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def verify_bytes(rows: list[dict[str, Any]], files_dir: Path) -> dict[str, Any]:
    """sha256 of each output as the sandbox served it (its file on disk) vs the object in S3."""
    from editq.worker.storage import get_storage

    storage = get_storage()
    checked = mismatched = 0
    total_bytes = 0
    for row in rows:
        for out in row["outputs"]:
            name = (out.get("source_url") or "").rsplit("/", 1)[-1]
            src = hashlib.sha256((files_dir / name).read_bytes()).hexdigest()
            s3 = hashlib.sha256(storage.get_bytes(out["key"])).hexdigest()
            checked += 1
            total_bytes += out["bytes"]
            if not (src == s3 == out["sha256"]):
                mismatched += 1
    return {"sha256_checked": checked, "sha256_mismatched": mismatched,
            "output_mb_avg": round(total_bytes / max(checked, 1) / MB, 2)}


# ====================================================================== naive
def run_naive(a: argparse.Namespace, slots: int) -> dict[str, Any]:
    import redis as redis_lib

    from editq.producer.stack import PY, LocalStack, wait_until

    work = Path(tempfile.mkdtemp(prefix="editq-bench-naive-"))
    machine = machine_state()
    log(f"naive: starting the stack ({a.workers} worker process(es), {a.naive_pool} pool, {slots} slots in all)")
    with LocalStack(sandbox_opts=sandbox_opts(a), workers=0, webhooks=False, log_dir=work) as stack:
        from editq.worker.keys import Keys
        from editq.worker.storage import get_storage

        prefix = stack.env["EDITQ_KEY_PREFIX"]
        naive_keys = Keys(prefix)
        r = redis_lib.Redis.from_url(stack.env["EDITQ_REDIS_URL"], decode_responses=True)
        env = {"NAIVE_QUEUE": f"{prefix}.naive", "NAIVE_PREFIX": prefix, "NAIVE_POLL_S": str(a.naive_poll)}
        per_worker = max(1, slots // a.workers)
        names = []
        for i in range(a.workers):
            name = f"naive{i}"
            stack.spawn(name, [PY, "-m", "celery", "-A", "editq.bench.naive", "worker", f"--pool={a.naive_pool}",
                               f"--concurrency={per_worker}", "-Q", env["NAIVE_QUEUE"], "--loglevel=WARNING",
                               "-n", f"{name}@%h", "--without-gossip", "--without-mingle"], env)
            names.append(name)
        wait_until(lambda: int(r.get(naive_keys.naive_ready) or 0) >= a.workers, 60, "naive workers")
        os.environ.update(env)
        from editq.bench import naive

        storage = get_storage()
        tag = secrets.token_hex(3)
        images = make_inputs(work, a.inputs, _input_size(a), noise=a.noise_inputs)
        urls = {}
        for name in images:  # a user uploads each input once and hands the provider a presigned URL
            data = (work / name).read_bytes()
            key = f"naive-inputs/{hashlib.sha256(data).hexdigest()}.png"
            storage.put_bytes(key, data, "image/png")
            urls[name] = storage.presign(key)
        pids = [stack.procs[n].pid for n in names]
        sampler = RssSampler(trees=lambda: pids, singles=lambda: [os.getpid()]).start()
        batch = f"naive-{tag}"
        t0 = time.time()
        for i in range(a.jobs):
            line = job_line(i, images, tag=tag, size=a.size, fmt=a.format, num_images=a.num_images)
            line["image_url"] = urls[line["images"][0]]
            line["job_id"] = f"{batch}-{i}"
            line["batch"] = batch
            line["created_at"] = time.time()
            naive.edit.apply_async(args=[line], queue=env["NAIVE_QUEUE"])
            if a.rate > 0:
                delay = t0 + (i + 1) / a.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
        t_enq = time.time()
        done_key = naive_keys.naive_done(batch)
        deadline = t0 + a.naive_window
        while time.time() < deadline and r.llen(done_key) < a.jobs:
            time.sleep(0.2)
        sampler.stop()
        done = [json.loads(x) for x in r.lrange(done_key, 0, -1)]
        ok = [d for d in done if d["ok"]]
        t_last = max((d["t"] for d in ok), default=t0)
        measured = t_last - t0
        sreq = sandbox_requests(stack.env["EDITQ_SANDBOX_URL"])
        over = []
        for d in ok:
            e = sreq.get(d["request_id"])
            if e and e.get("completed_at"):
                over.append((d["t"] - d["created_at"] - (e["completed_at"] - e["received_at"])) * 1000)
        infl = max_inflight(stack.env["EDITQ_SANDBOX_URL"])
        for n in names:
            stack.stop_proc(n)
        r.delete(env["NAIVE_QUEUE"])
    return {
        "design": "naive",
        "pool": a.naive_pool,
        "slots": slots,
        "worker_processes": a.workers,
        "poll_sleep_s": a.naive_poll,
        "jobs_offered": a.jobs,
        "window_s": a.naive_window,
        "completed_in_window": len(done),
        "succeeded_in_window": len(ok),
        "measured_s": round(measured, 3),
        "jobs_per_s": round(len(ok) / measured, 3) if measured > 0 else 0.0,
        "enqueue_jobs_per_s": round(a.jobs / max(t_enq - t0, 1e-9), 1),
        "max_provider_inflight": infl["max_in_flight"],
        "max_provider_in_progress": infl["max_in_progress"],
        "overhead_ms_p50": round(percentile(over, 50), 1) if over else None,
        "overhead_ms_p99": round(percentile(over, 99), 1) if over else None,
        "peak_rss_mb": round(sampler.peak_total / MB, 1),
        "sandbox_render": a.render,
        "machine": machine,
    }


def main(argv: list[str] | None = None) -> int:
    from editq.producer.stack import scoped_env  # each run gets its own stack; what one exported must not leak

    a = parse_args(argv)
    slots = a.naive_slots or a.workers * a.worker_concurrency
    out: dict[str, Any]
    if a.naive:
        with scoped_env():
            out = run_naive(a, slots)
    else:
        with scoped_env():
            out = run_editq(a)
        if a.compare:
            with scoped_env():
                naive = run_naive(a, slots)
            out["naive"] = naive
            out["speedup_vs_naive"] = round(out["jobs_per_s"] / naive["jobs_per_s"], 1) if naive["jobs_per_s"] else None
    if not a.json:
        for k, v in out.items():
            print(f"{k:28} {v}", file=sys.stderr)
    print(json.dumps(out))
    ok = out.get("succeeded", out.get("succeeded_in_window")) == out.get("jobs", out.get("completed_in_window"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
