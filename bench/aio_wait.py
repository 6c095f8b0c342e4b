"""Waiting from asyncio: N concurrent waits for jobs the sandbox holds `--latency` seconds, with `editq.aio.wait`
(polls on the loop, redis.asyncio) and with the sync `editq.wait` run in threads (`asyncio.to_thread`, in an
executor of `--threads` threads: redis-py's pool holds 100 connections per process, so more threads than that
calling the sync API at once fail with MaxConnectionsError; waits beyond the executor's size queue).

Reports, per mode: wall time (bound by the jobs: one worker runs them), the executor threads busy (peak, and
thread-seconds) and the full status reads (the sync `status`: several Redis round trips each).

    .venv/bin/python -m editq.bench.aio_wait --jobs 100 --threads 64 --latency 3 --interval 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import editq
from editq.producer import api
from editq.producer.stack import LocalStack, scoped_env

MUG = Path(__file__).resolve().parent.parent / "examples" / "mug.png"


async def _run(mode: str, job_ids: list[str], interval: float, threads: int) -> dict[str, Any]:
    """`busy`: the executor threads doing work at each moment (aio: the status reads; threads: each whole
    `editq.wait`, which holds its thread between polls), sampled every 10 ms."""
    reads = 0
    busy = 0
    real = api.status

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return real(*args, **kwargs)

    def held(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            nonlocal busy
            busy += 1
            try:
                return fn(*args, **kwargs)
            finally:
                busy -= 1
        return run

    api.status = held(counted) if mode == "aio" else counted
    samples: list[tuple[float, int]] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), busy))
            await asyncio.sleep(0.01)

    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads))
    sampler = asyncio.create_task(sample())
    t0 = time.monotonic()
    try:
        if mode == "aio":
            finals = await asyncio.gather(*(editq.aio.wait(j, timeout=300, interval=interval) for j in job_ids))
        else:
            wait = held(editq.wait)
            finals = await asyncio.gather(*(asyncio.to_thread(wait, j, timeout=300, interval=interval)
                                            for j in job_ids))
    finally:
        api.status = real
        stop.set()
        await sampler
    wall = time.monotonic() - t0
    states = sorted({f.state.value for f in finals if isinstance(f, editq.JobStatus)})
    return {"mode": mode, "waits": len(job_ids), "executor_threads": threads, "wall_s": round(wall, 2),
            "peak_busy_threads": max(n for _, n in samples),
            "busy_thread_s": round(sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(samples)), 1),
            "status_reads": reads, "states": states}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--latency", type=float, default=3.0)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=64, help="The executor's threads (both modes).")
    a = p.parse_args()
    sandbox = {"latency_s": a.latency, "jitter_s": 0.0, "concurrency": a.jobs * 2, "seed": 3}
    results = []
    with LocalStack(sandbox_opts=sandbox, worker_concurrency=16) as stack, scoped_env():
        stack.apply_env()
        for mode in ("aio", "threads"):
            tag = secrets.token_hex(4)
            report = editq.submit_batch([{"prompt": f"On an oak table {tag} {i}", "images": [str(MUG)],
                                          "quality": "low", "provider": "fal"} for i in range(a.jobs)])
            out = asyncio.run(_run(mode, report.job_ids, a.interval, a.threads))
            results.append(out)
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
