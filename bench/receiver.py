"""The webhook receiver's own CPU per delivery, alone.

    python -m editq.bench.receiver --deliveries 2000 --concurrency 50 --json

Starts Redis, the S3 server, the sandbox (for fal's JWKS) and the receiver as `make demo` does, no worker.
Enqueues N fal jobs, moves each to `submitted` with a request id as a worker's submit leaves it, then
posts each job's signed fal result to its webhook URL (`--concurrency` at a time, keep-alive connections,
as the sandbox delivers) and reads the receiver's CPU seconds (user + system, psutil) before and after.
Every job must end `ready` (or further). Unlike `bench.throughput` at L = 0, nothing else runs while the
deliveries arrive, so the figure moves only with the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from editq.bench.harness import cpu_seconds, job_line, log, machine_state, make_inputs

SEED = 7


def prepare(n: int, work: Path) -> list[tuple[str, str]]:
    """N jobs `submitted` at fal with a recorded request id: (job id, request id)."""
    from editq.producer.api import submit_batch
    from editq.worker.state import JobStore, State

    images = make_inputs(work, 2)
    tag = secrets.token_hex(3)
    report = submit_batch([job_line(i, images, tag=tag, size="1024x1024", fmt="png") for i in range(n)],
                          base_dir=work)
    store = JobStore()
    jobs: list[tuple[str, str]] = []
    while len(jobs) < n:
        claimed = store.claim("fal", 500, 100_000, 0, 0, 600)
        if not claimed:
            break
        pipe = store.r.pipeline(transaction=False)
        for job_id in claimed:
            rid = f"req-{secrets.token_hex(8)}"
            pipe.set(store.k.request("fal", rid), job_id)
            jobs.append((job_id, rid))
        pipe.execute()
        for job_id, rid in jobs[-len(claimed):]:
            assert store.move(job_id, [State.submitting], State.submitted, score=time.time() + 3600,
                              fields={"request_id": rid, "handle": "{}"}).ok
    assert len(jobs) == len(report.job_ids) == n, (len(jobs), n)
    return jobs


async def deliver(base: str, jobs: list[tuple[str, str]], concurrency: int) -> dict[int, int]:
    import aiohttp

    from editq.sandbox.signing import Ed25519KeyRing, FalWebhookSigner
    from editq.worker.webhook_auth import delivery_url

    signer = FalWebhookSigner(Ed25519KeyRing(SEED), "sandbox-user")
    statuses: dict[int, int] = {}
    queue = list(jobs)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one() -> None:
            while queue:
                job_id, rid = queue.pop()
                body = json.dumps({"request_id": rid, "gateway_request_id": rid, "status": "OK", "payload": {
                    "images": [{"url": f"http://127.0.0.1:1/{rid}.png", "content_type": "image/png"}]},
                    "error": None}).encode()
                headers = {**signer.sign(body, request_id=rid, timestamp=int(time.time())),
                           "content-type": "application/json"}
                async with session.post(delivery_url(base, "fal", job_id), data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return statuses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deliveries", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    from editq.producer.stack import LocalStack

    work = Path(tempfile.mkdtemp(prefix="editq-bench-receiver-"))
    with LocalStack(workers=0, sandbox_opts={"seed": SEED}, log_dir=work) as stack:
        stack.apply_env()
        from editq.worker.redis_client import get_redis
        from editq.worker.state import JobStore

        jobs = prepare(a.deliveries, work)
        named = {"webhooks": stack.procs["webhooks"].pid}
        r = get_redis()
        load = machine_state()
        cpu0, redis0, t0 = cpu_seconds(named), r.info("cpu"), time.time()
        statuses = asyncio.run(deliver(stack.env["EDITQ_WEBHOOK_BASE_URL"], jobs, a.concurrency))
        wall = time.time() - t0
        cpu1, redis1 = cpu_seconds(named), r.info("cpu")
        store = JobStore()
        states: dict[str, int] = {}
        for job_id, _ in jobs:
            view = store.get(job_id)
            state = view.state.value if view is not None else "missing"
            states[state] = states.get(state, 0) + 1
        recv = cpu1["webhooks"] - cpu0["webhooks"]
        redis_s = sum(redis1[k] - redis0[k] for k in ("used_cpu_user", "used_cpu_sys"))
        out: dict[str, Any] = {
            "deliveries": a.deliveries, "concurrency": a.concurrency, "wall_s": round(wall, 2),
            "deliveries_per_s": round(a.deliveries / wall, 1), "receiver_cpu_s": round(recv, 2),
            "receiver_cpu_ms_per_delivery": round(1000 * recv / a.deliveries, 3),
            "redis_cpu_ms_per_delivery": round(1000 * redis_s / a.deliveries, 3),
            "http_statuses": statuses, "job_states": states, "machine": load, "log_dir": str(work),
        }
    log(f"receiver: {out['receiver_cpu_ms_per_delivery']} ms CPU per delivery, {out['deliveries_per_s']}/s")
    print(json.dumps(out, indent=None if a.json else 2))
    if states.get("submitted") or set(statuses) != {200}:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
