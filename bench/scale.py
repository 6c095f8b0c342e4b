"""Redis memory per queued and per finished job, enqueue rate and producer RSS over a long batch.

    python -m editq.bench.scale --lines 1000000 --finish 20000 --json

Runs against a private `redis-server` (no persistence, its own port), so `used_memory` is editq's alone.

1. Enqueue: generates a JSONL of `--lines` lines (a few distinct images, a unique prompt per line) and runs
   the real `editq submit FILE` as a subprocess (no workers: the jobs stay queued). Every `--interval`
   seconds it samples the producer's RSS and the batch's `total` in Redis: the rate per interval and the
   RSS over time show whether either drifts. Redis bytes per queued job = `used_memory` growth / jobs, and
   the sum of `MEMORY USAGE` over the run's keys / jobs.
2. Finish: Redis is emptied, the whole stack starts (sandbox with latency 0, receiver, `--workers`
   workers), `editq submit` of `--finish` lines, and the batch runs to its batch manifest. Redis bytes
   per finished job = the same two measures after the batch manifest is written, plus a breakdown by key
   kind; the same measured halfway (the batch still running: its finished jobs' manifests are staged).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from editq.bench.harness import MB, job_line, log, machine_state, make_inputs, redis_bytes, write_jsonl
from editq.worker.keys import Keys


class PrivateRedis:
    """A redis-server of our own (the machine's shared one carries other runs' keys)."""

    def __init__(self, folder: Path) -> None:
        from editq.producer.stack import free_port

        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        for _ in range(100):
            try:
                self.r.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def used(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def by_kind(r: Any, prefix: str) -> dict[str, dict[str, int]]:
    """MEMORY USAGE summed per key kind (`job`, `idem`, `req`, `batch`, ...) under `prefix`."""
    out: dict[str, dict[str, int]] = {}
    keys: list[str] = []

    def flush() -> None:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(keys, pipe.execute(), strict=True):
            parts = key[len(prefix) + 1:].split(":")
            kind = parts[0] + (":" + parts[2] if parts[0] == "batch" and len(parts) > 2 else "")
            row = out.setdefault(kind, {"keys": 0, "bytes": 0})
            row["keys"] += 1
            row["bytes"] += int(size or 0)
        keys.clear()

    for key in r.scan_iter(Keys(prefix).all, count=2000):
        keys.append(key)
        if len(keys) >= 2000:
            flush()
    flush()
    return out


def submit(exe: Path, path: Path, batch_id: str, env: dict[str, str], r: Any, prefix: str, interval: float,
           until_done: bool = False, probe: Any = None) -> tuple[float, list[dict[str, Any]], dict[str, Any]]:
    """Run `editq submit`; sample (elapsed, producer RSS, jobs in Redis, jobs finished) every `interval` s; also
    the producer's CPU seconds in all (its own processes included) and the largest peak RSS of any of them.
    RSS and CPU in the samples are the producer's whole process tree (producer/split.py runs several).
    `probe(done)`: called at each sample until it returns something, which the sample keeps."""
    bk = Keys(prefix).batch(batch_id)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = before.ru_utime + before.ru_stime
    t0 = time.time()
    proc = subprocess.Popen([str(exe), "submit", str(path), "--batch-id", batch_id], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    samples: list[dict[str, Any]] = []
    last_t, last_n, cpu = 0.0, 0, 0.0
    while True:
        if proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(interval)  # (returns when the producer exits: the last interval and the wall time are exact)
        else:
            time.sleep(interval)  # (the finish phase waits on for the batch)
        running = proc.poll() is None
        rss, procs = 0, 0
        if running:  # the producer and its own processes (producer/split.py), live ones and ended ones
            try:
                times = ps.cpu_times()
                cpu_now = times.user + times.system + times.children_user + times.children_system
                rss, procs = ps.memory_info().rss, 1
                for child in ps.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        ct = child.cpu_times()
                        cpu_now += ct.user + ct.system
                        rss += child.memory_info().rss
                        procs += 1
                cpu = max(cpu, cpu_now)
            except psutil.Error:
                rss = 0
        total, done, manifest = r.hmget(bk, "total", "done", "manifest_key")
        t, n = time.time() - t0, int(total or 0)
        samples.append({"t_s": round(t, 1), "enqueued": n, "done": int(done or 0), "producer_cpu_s": round(cpu, 1),
                        "rate_jobs_per_s": round((n - last_n) / (t - last_t)) if t > last_t else 0,
                        "producer_rss_mb": round(rss / MB, 1) if rss else None, "producer_processes": procs})
        log(f"scale: {json.dumps(samples[-1])}")  # progress (a run cut short still shows its figures)
        if probe is not None and not any("probe" in x for x in samples[:-1]):
            found = probe(int(done or 0))
            if found:
                samples[-1]["probe"] = found
        last_t, last_n = t, n
        if not running and (not until_done or manifest):
            break
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"editq submit failed: {err.decode()[-2000:]}")
    wall = time.time() - t0
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # the producer and every process it waited for
    final = {"producer_cpu_s": round(used.ru_utime + used.ru_stime - cpu0, 2),
             "largest_producer_process_peak_rss_mb": round(used.ru_maxrss / 1024, 1)}
    return wall, samples, final


def enqueue_phase(a: argparse.Namespace, work: Path, pr: PrivateRedis) -> dict[str, Any]:
    from editq.producer.stack import LocalStack

    images = make_inputs(work, a.distinct_images)
    tag = secrets.token_hex(3)
    path = work / f"batch-{a.lines}.jsonl"
    log(f"scale: writing {a.lines} lines")
    write_jsonl(path, (job_line(i, images, tag=tag, size="1024x1024", fmt="png") for i in range(a.lines)))
    with LocalStack(workers=0, webhooks=False, log_dir=work, redis_url=pr.url) as stack:
        prefix = stack.env["EDITQ_KEY_PREFIX"]
        before = pr.used()
        redis_cpu0 = pr.cpu()
        load0 = os.getloadavg()[0]
        batch_id = f"batch_scale{tag}"
        log(f"scale: editq submit of {a.lines} lines")
        wall, samples, final = submit(Path(sys.executable).parent / "editq", path, batch_id,
                                      {**os.environ, **stack.env}, pr.r, prefix, a.interval)
        total = int(pr.r.hget(Keys(prefix).batch(batch_id), "total") or 0)
        used = pr.used() - before
        redis_cpu = pr.cpu() - redis_cpu0
        log("scale: measuring MEMORY USAGE of every key")
        from editq.worker.keys import namespace_patterns

        mem, nkeys = redis_bytes(pr.r, namespace_patterns(prefix, stack.env["EDITQ_QUEUE_PREFIX"]))
        kinds = by_kind(pr.r, prefix)
        log(f"scale: enqueue memory: used_memory +{used}, MEMORY USAGE {mem} over {nkeys} keys, {json.dumps(kinds)}")
        pr.r.flushall(asynchronous=True)  # (a synchronous FLUSHALL of 2 M keys outlasts the client's timeout)
    rss = [s["producer_rss_mb"] for s in samples if s["producer_rss_mb"]]
    rates = [s["rate_jobs_per_s"] for s in samples if s["enqueued"] < total][1:]  # the first interval has start-up
    return {
        "lines": a.lines, "enqueued": total, "wall_s": round(wall, 1),
        "enqueue_jobs_per_s": round(total / wall), "file_mb": round(path.stat().st_size / MB, 1),
        "rate_min_max_per_interval": [min(rates), max(rates)] if rates else None,
        "producer_cpu_s": final["producer_cpu_s"], "redis_cpu_s": round(redis_cpu, 1),
        "producer_cpu_us_per_line": round(final["producer_cpu_s"] / max(total, 1) * 1e6),
        "producer_processes_max": max((s["producer_processes"] for s in samples), default=0),
        "largest_producer_process_peak_rss_mb": final["largest_producer_process_peak_rss_mb"],
        "redis_cpu_us_per_line": round(redis_cpu / max(total, 1) * 1e6),
        "load_average_at_start": round(load0, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
        "producer_rss_mb_first_last_max": [rss[0], rss[-1], max(rss)] if rss else None,
        "redis_used_memory_per_queued_job": round(used / max(total, 1)),
        "redis_memory_usage_per_queued_job": round(mem / max(total, 1)),
        "redis_keys": nkeys, "by_kind": kinds, "samples": samples,
    }


def finish_phase(a: argparse.Namespace, work: Path, pr: PrivateRedis) -> dict[str, Any]:
    from editq.producer.stack import LocalStack

    images = make_inputs(work, a.distinct_images)
    tag = secrets.token_hex(3)
    path = work / f"finish-{a.finish}.jsonl"
    write_jsonl(path, (job_line(i, images, tag=tag, size="1024x1024", fmt="png") for i in range(a.finish)))
    os.environ["EDITQ_FAL_CONCURRENCY"] = str(a.provider_concurrency)
    with LocalStack(sandbox_opts={"latency_s": 0, "jitter_s": 0, "concurrency": a.provider_concurrency,
                                  "render": "cached", "seed": 1},
                    workers=a.workers, log_dir=work, redis_url=pr.url) as stack:
        prefix = stack.env["EDITQ_KEY_PREFIX"]
        before = pr.used()
        batch_id = f"batch_finish{tag}"
        log(f"scale: {a.finish} jobs through the stack (sandbox latency 0)")
        staged_key = Keys(prefix).batch_manifests(batch_id)

        def probe(done: int) -> dict[str, Any] | None:
            """Halfway: what the finished jobs' staged manifests take while the batch runs."""
            if done < a.finish // 2:
                return None
            n = int(pr.r.hlen(staged_key))
            size = int(pr.r.memory_usage(staged_key, samples=0) or 0)
            return {"staged_manifests": n, "staged_bytes_per_finished_job": round(size / max(n, 1))}

        t0 = time.time()
        _, samples, _ = submit(Path(sys.executable).parent / "editq", path, batch_id, {**os.environ, **stack.env},
                            pr.r, prefix, a.interval, until_done=True, probe=probe)
        mid = next((s["probe"] for s in samples if "probe" in s), None)
        t_end = time.time()
        # settle: webhook dedupe keys (3 h TTL) are transient; the rest is what a finished job keeps
        used = pr.used() - before
        kinds = by_kind(pr.r, prefix)
        done = int(pr.r.hget(Keys(prefix).batch(batch_id), "done") or 0)
    per = {k: round(v["bytes"] / max(done, 1)) for k, v in kinds.items()}
    transient = per.get("whseen", 0)
    return {
        "jobs": a.finish, "finished": done, "wall_s": round(t_end - t0, 1),
        "jobs_per_s_end_to_end": round(done / (t_end - t0), 1),
        "redis_used_memory_per_finished_job": round(used / max(done, 1)),
        "redis_memory_usage_per_finished_job": sum(per.values()),
        "redis_memory_usage_per_finished_job_without_webhook_dedupe": sum(per.values()) - transient,
        "while_running": mid, "per_job_by_kind": per, "by_kind": kinds, "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    from editq.producer.stack import scoped_env

    p = argparse.ArgumentParser(prog="python -m editq.bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=1_000_000, help="Lines enqueued (0: skip the enqueue phase).")
    p.add_argument("--finish", type=int, default=20_000, help="Jobs run to the end (0: skip the finish phase).")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--provider-concurrency", type=int, default=500)
    p.add_argument("--distinct-images", type=int, default=4)
    p.add_argument("--interval", type=float, default=5.0, help="Seconds between samples.")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out: dict[str, Any] = {"machine": machine_state()}
    work = Path(tempfile.mkdtemp(prefix="editq-bench-scale-"))
    pr = PrivateRedis(work)
    try:
        with scoped_env():
            if a.lines:
                out["enqueue"] = enqueue_phase(a, work, pr)
                log(f"scale: enqueue {json.dumps({k: v for k, v in out['enqueue'].items() if k != 'samples'})}")
            if a.finish:
                out["finish"] = finish_phase(a, work, pr)
                log(f"scale: finish {json.dumps({k: v for k, v in out['finish'].items() if k != 'samples'})}")
    finally:
        pr.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
