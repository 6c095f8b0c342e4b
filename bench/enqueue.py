"""Enqueue rate and producer memory of `editq submit` on a big JSONL.

    python -m editq.bench.enqueue --lines 100000 --json

Generates the file (a few distinct images, a unique prompt per line), starts Redis and the S3
server as `make demo` does (no workers: nothing is run, the jobs stay queued and are deleted
afterwards), runs the real CLI `editq submit FILE` as a subprocess and samples its RSS every 50 ms.
Rate = lines / wall time of the whole command (process start, imports, input upload, every line
validated and written to Redis, batch closed).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from editq.bench.harness import MB, job_line, log, machine_state, make_inputs, redis_bytes, write_jsonl


def run(lines: int, distinct: int, work: Path) -> dict[str, Any]:
    from editq.producer.stack import LocalStack

    images = make_inputs(work, distinct)
    tag = secrets.token_hex(3)
    path = work / f"batch-{lines}.jsonl"
    write_jsonl(path, (job_line(i, images, tag=tag, size="1024x1024", fmt="png") for i in range(lines)))
    with LocalStack(workers=0, webhooks=False, log_dir=work) as stack:
        from editq.worker.redis_client import get_redis

        env = {**os.environ, **stack.env}
        exe = Path(sys.executable).parent / "editq"
        t0 = time.time()
        proc = subprocess.Popen([str(exe), "submit", str(path)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        ps = psutil.Process(proc.pid)
        samples: list[tuple[float, int]] = []
        while proc.poll() is None:
            try:
                samples.append((time.time() - t0, ps.memory_info().rss))
            except psutil.Error:
                break
            time.sleep(0.05)
        out, err = proc.communicate()
        wall = time.time() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"editq submit failed: {err.decode()[-2000:]}")
        batch_id = out.decode().strip().splitlines()[-1]
        r = get_redis()
        from editq.worker.keys import Keys, namespace_patterns

        prefix = stack.env["EDITQ_KEY_PREFIX"]
        total = int(r.hget(Keys(prefix).batch(batch_id), "total") or 0)
        qbytes, _ = redis_bytes(r, namespace_patterns(prefix, stack.env["EDITQ_QUEUE_PREFIX"]))
    rss = [s[1] for s in samples if s[1] > 0]
    late = [s[1] for s in samples if s[0] > wall / 2 and s[1] > 0] or rss
    return {
        "lines": lines,
        "enqueued": total,
        "wall_s": round(wall, 3),
        "enqueue_jobs_per_s": round(lines / wall, 1),
        "producer_peak_rss_mb": round(max(rss) / MB, 1) if rss else None,
        "producer_rss_mb_second_half_max": round(max(late) / MB, 1) if late else None,
        "producer_rss_mb_at_half_time": round(min(late) / MB, 1) if late else None,
        "redis_bytes_per_queued_job": round(qbytes / max(total, 1)),
        "distinct_images": distinct,
        "file_mb": round(path.stat().st_size / MB, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from editq.producer.stack import scoped_env
    p = argparse.ArgumentParser(prog="python -m editq.bench.enqueue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, nargs="+", default=[100_000],
                   help="One run per value (e.g. 10000 100000 to show the memory is flat).")
    p.add_argument("--distinct-images", type=int, default=4)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    machine = machine_state()
    runs = []
    for n in a.lines:
        work = Path(tempfile.mkdtemp(prefix="editq-bench-enqueue-"))
        log(f"enqueue: editq submit of {n} lines")
        with scoped_env():
            runs.append(run(n, a.distinct_images, work))
        log(f"enqueue: {runs[-1]}")
    out = {**runs[-1], "runs": runs, "machine": machine}
    print(json.dumps(out))
    return 0 if all(r["enqueued"] == r["lines"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
