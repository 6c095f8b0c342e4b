"""Is the interactive lane served ahead of bulk? Time to finish one interactive job behind a big bulk batch.

    python -m editq.bench.priority --bulk 10000 --latency 20 --provider-concurrency 500 --json

Starts the stack as bench.throughput does, enqueues `--bulk` bulk jobs, then one `priority:
interactive` job, and waits for that one job (the bulk batch is abandoned afterwards). Reports the
interactive job's time from enqueue to its manifest, how long it waited for a provider slot, and
where the bulk batch stood at that moment; for scale, the bulk batch needs bulk x L / C seconds.

`--reserve-hold inf` holds the interactive reserve at all times (the static reserve);
`--warm` sends one interactive job before the bulk batch, so the lane is in use when bulk arrives.
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

from editq.bench.harness import job_line, log, machine_state, make_inputs, sandbox_requests


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m editq.bench.priority", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bulk", type=int, default=10_000)
    p.add_argument("--latency", type=float, default=20.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--provider-concurrency", type=int, default=500)
    p.add_argument("--reserve-hold", default=None, help="EDITQ_INTERACTIVE_RESERVE_HOLD_S (default: editq's).")
    p.add_argument("--warm", action="store_true", help="One interactive job before the bulk batch.")
    p.add_argument("--after-full", action="store_true",
                   help="Submit the interactive job only once bulk holds every slot (the hardest case).")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    from editq.producer.stack import LocalStack

    os.environ["EDITQ_FAL_CONCURRENCY"] = str(a.provider_concurrency)
    if a.reserve_hold is not None:
        os.environ["EDITQ_INTERACTIVE_RESERVE_HOLD_S"] = a.reserve_hold
    work = Path(tempfile.mkdtemp(prefix="editq-bench-priority-"))
    machine = machine_state()
    opts = {"latency_s": a.latency, "jitter_s": a.jitter, "concurrency": a.provider_concurrency,
            "render": "cached", "seed": 1}
    with LocalStack(sandbox_opts=opts, log_dir=work) as stack:
        from editq.producer.api import status, submit, submit_batch
        from editq.worker.keys import Keys
        from editq.worker.redis_client import get_redis

        r = get_redis()
        prefix = stack.env["EDITQ_KEY_PREFIX"]
        images = make_inputs(work, 4)
        tag = secrets.token_hex(3)
        if a.warm:
            submit(job_line(-1, images, tag=tag, size="512x512", fmt="png", lane="interactive"), base_dir=work)
        t0 = time.time()
        bulk = submit_batch((job_line(i, images, tag=tag, size="512x512", fmt="png") for i in range(a.bulk)),
                            base_dir=work, keep_ids=False)
        t_bulk = time.time()
        if a.after_full:
            from editq.bench.harness import sandbox_get
            from editq.schemas.settings import get_settings

            # bulk takes every slot, or all but the interactive reserve while the lane is in use
            held = a.warm or a.reserve_hold in ("inf", "infinity")
            full = a.provider_concurrency - (int(a.provider_concurrency * get_settings().interactive_reserve)
                                             if held else 0)
            while sandbox_get(stack.env["EDITQ_SANDBOX_URL"], "/_sandbox/stats")["providers"]["fal"][
                    "in_flight"] < full:
                time.sleep(0.05)
        line = job_line(a.bulk, images, tag=tag + "-urgent", size="512x512", fmt="png", lane="interactive")
        t1 = time.time()
        job_id = submit(line, base_dir=work)
        log(f"priority: {bulk.enqueued} bulk enqueued in {t_bulk - t0:.1f}s; interactive {job_id} enqueued")
        deadline = time.monotonic() + a.timeout
        while True:
            st = status(job_id)
            if st["finished"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"interactive job not finished: {st}")
            time.sleep(0.05)
        hist = {h["state"]: h["at"] for h in st["history"]}
        t_done = hist.get(st["state"], time.time())
        b = r.hgetall(Keys(prefix).batch(bulk.batch_id))
        sreq = sandbox_requests(stack.env["EDITQ_SANDBOX_URL"])
        entry = sreq.get(st["request_id"] or "", {})
        bulk_received = sum(1 for e in sreq.values() if tag in json.dumps(e.get("input")) and "urgent" not in
                            json.dumps(e.get("input")))
    out: dict[str, Any] = {
        "bulk_jobs": a.bulk,
        "interactive_state": st["state"],
        "interactive_done_s": round(t_done - t1, 2),
        "interactive_wait_for_slot_s": round(entry["received_at"] - t1, 2) if entry else None,
        "interactive_provider_s": round(entry["completed_at"] - entry["received_at"], 2) if entry else None,
        "bulk_enqueue_s": round(t_bulk - t0, 2),
        "bulk_done_when_interactive_done": int(b.get("done", 0)),
        "bulk_submitted_when_interactive_done": bulk_received,
        "bulk_batch_needs_s": round(a.bulk * a.latency / a.provider_concurrency, 1),
        "latency_s": a.latency,
        "jitter_s": a.jitter,
        "provider_concurrency": a.provider_concurrency,
        "reserve_hold_s": a.reserve_hold or "default (600)",
        "warm": a.warm,
        "after_full": a.after_full,
        "sandbox_render": "cached",
        "machine": machine,
    }
    print(json.dumps(out))
    return 0 if st["state"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
