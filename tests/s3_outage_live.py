"""Live check of an S3 outage while fal outputs are ready (docs/reliability.md, "An outage of our own S3").

    python -m tests.s3_outage_live --outage-s 90 --jobs 8            # S3 answers 503 to every output PUT
    python -m tests.s3_outage_live --outage-s 90 --jobs 8 --freeze   # the S3 server is SIGSTOPped

A local stack (own Redis, S3 server, sandbox with 1 s fal latency, webhook receiver) and one worker with the
production retry settings (nothing EDITQ_* about attempts or back-off is set), reaching S3 through
tests/s3_fault_proxy.py. The outage starts before the jobs finish (503) or when the first output is ready at
the provider (freeze) and lasts --outage-s; then it waits until every job is terminal and prints the states.
Not part of the suite (it takes the outage's length); tests/test_storage_outage.py is the test."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from collections import Counter

import redis

from editq.producer.api import submit
from editq.producer.stack import LocalStack, allowed_private_hosts
from editq.worker.keys import Keys
from tests.conftest import EXAMPLES, SANDBOX_SEED
from tests.s3_fault_proxy import S3FaultProxy

TERMINAL = ("succeeded", "failed", "cancelled")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outage-s", type=float, default=90.0)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--freeze", action="store_true", help="SIGSTOP the S3 server instead of 503s")
    args = ap.parse_args()
    opts = {"latency_s": 1.0, "jitter_s": 0.0, "seed": SANDBOX_SEED}
    with LocalStack(workers=0, sandbox_opts=opts) as st, S3FaultProxy(st.env["EDITQ_S3_ENDPOINT"]) as proxy:
        proxy.mode = "pass" if args.freeze else "outputs_unavailable"
        st.start_worker("w0", extra_env={"EDITQ_S3_ENDPOINT": proxy.url, "EDITQ_ALLOWED_PRIVATE_HOSTS":
                                         allowed_private_hosts(st.env["EDITQ_ALLOWED_PRIVATE_HOSTS"], proxy.url)})
        st.wait_workers(1)
        ids = [submit({"prompt": f"outage {i}", "images": [str(EXAMPLES / "mug.png")], "provider": "fal"})
               for i in range(args.jobs)]
        r = redis.Redis.from_url(st.env["EDITQ_REDIS_URL"], decode_responses=True)
        k = Keys(st.env["EDITQ_KEY_PREFIX"])
        if args.freeze:  # once the first output is ready at the provider
            while not any(r.hget(k.job(j), "provider_done_at") for j in ids):
                time.sleep(0.05)
            os.kill(st.procs["s3"].pid, signal.SIGSTOP)
        t0, back = time.time(), False
        states: Counter[str] = Counter()
        while time.time() - t0 < args.outage_s + 900:
            if not back and time.time() - t0 > args.outage_s:
                back = True
                proxy.mode = "pass"
                if args.freeze:
                    os.kill(st.procs["s3"].pid, signal.SIGCONT)
                print(f"S3 back after {time.time() - t0:.0f} s ({proxy.unavailable} PUTs answered 503)", flush=True)
            states = Counter(str(r.hget(k.job(j), "state")) for j in ids)
            if back and all(s in TERMINAL for s in states):
                break
            time.sleep(1)
        print(f"after {time.time() - t0:.0f} s: {dict(states)}")
        reasons = Counter(json.loads(r.hget(k.job(j), "error") or "{}").get("reason", "")[:160] for j in ids
                          if r.hget(k.job(j), "state") == "failed")
        print("failure reasons:", dict(reasons))


if __name__ == "__main__":
    main()
