"""Draining a worker mid-batch (what Kubernetes' preStop runs before SIGTERM): it takes no task after the
drain, exits 0 on SIGTERM, and the batch finishes on the other worker with every job submitted once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter

from editq.producer.api import status, submit_batch, wait
from tests import e2e
from tests.conftest import EXAMPLES, ROOT, wait_for

N = 40


def test_a_drained_worker_takes_nothing_more_and_the_batch_loses_nothing() -> None:
    extra = {"EDITQ_FAL_CONCURRENCY": "4", "EDITQ_INTERACTIVE_RESERVE": "0"}
    for stack in e2e.start(True, extra, sandbox_opts={"latency_s": 0.3, "jitter_s": 0.0, "concurrency": 8, "seed": 4},
                           workers=2, keep_env=True):
        with e2e.using(stack):
            lines = [{"custom_id": f"d{i}", "prompt": f"drain {i}", "images": ["mug.png"]} for i in range(N)]
            report = submit_batch(lines, base_dir=EXAMPLES)
            bid = report.batch_id
            wait_for(lambda b=bid: status(b)["counts"].get("succeeded", 0) >= 4, 60, "a few jobs done")
            # From here a job takes 20 s at the provider, so the 36 or fewer left need at least 9 rounds of 4:
            # the batch is still running when the drain returns however slowly this machine runs the drain.
            e2e.configure_sandbox(stack, {"latency_s": 20.0})
            node = f"worker0@{socket.gethostname()}"
            env = {**os.environ, **stack.env}
            out = subprocess.run([sys.executable, "-m", "editq", "drain", "--node", node, "--timeout", "30"],
                                 env=env, cwd=ROOT, capture_output=True, text=True, timeout=90)
            assert out.returncode == 0, out.stderr
            assert f"{node}: drained" in out.stderr
            mark = len(stack.log("worker0"))
            assert status(report.batch_id)["counts"].get("succeeded", 0) < N  # drained mid-batch
            e2e.configure_sandbox(stack, {"latency_s": 0.3})
            assert wait(report.batch_id, timeout=120)["counts"] == {"succeeded": N}
            after = stack.log("worker0")[mark:]
            assert "received" not in after  # no task taken after the drain: worker1 did the rest
            proc = stack.procs["worker0"]
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
            # the sandbox saw exactly one request per job: nothing was submitted twice across the drain
            prompts = Counter(str(e["input"].get("prompt")) for e in e2e.sandbox_log(stack, "fal")
                              if str(e["input"].get("prompt", "")).startswith("drain "))
            assert prompts == Counter({f"drain {i}": 1 for i in range(N)})
            done = e2e.verify_batch(report.batch_id, report.job_ids, "fal")
            assert len(done) == N
            ids = [m["provider_request_id"] for m in done.values()]
            assert len(set(ids)) == N and all(len(m["provider_requests"]) == 1 for m in done.values())
