"""Fair sharing on real processes: workers, the sandbox and Redis. Tenant A has 160 jobs queued over two
batches on a provider capped at 4; tenant B's one job is submitted mid-way and comes back while most of A's
backlog is still queued, claimed by the first dispatch round after it was queued."""

from __future__ import annotations

from typing import Any

from editq.producer.api import status, submit_batch, wait
from tests import e2e
from tests.conftest import EXAMPLES, wait_for

CAP = 4


def _claimed_at(manifest: dict[str, Any]) -> float:
    return float(next(h["at"] for h in manifest["history"] if h["state"] == "submitting"))


def test_a_second_tenants_job_does_not_wait_for_the_first_tenants_backlog() -> None:
    extra = {"EDITQ_FAL_CONCURRENCY": str(CAP), "EDITQ_INTERACTIVE_RESERVE": "0"}
    for stack in e2e.start(True, extra, sandbox_opts={"latency_s": 0.3, "jitter_s": 0.0, "concurrency": 8, "seed": 4},
                           workers=1, keep_env=True):
        with e2e.using(stack):
            a = [submit_batch([{"custom_id": f"a{b}-{i}", "prompt": f"fair a{b} {i}", "images": ["mug.png"],
                                "tenant": "acme"} for i in range(80)], base_dir=EXAMPLES) for b in range(2)]
            wait_for(lambda bid=a[0].batch_id: status(bid)["counts"].get("succeeded", 0) >= 8, 60, "acme under way")
            b = submit_batch([{"custom_id": "b", "prompt": "fair b", "images": ["mug.png"], "tenant": "globex"}],
                             base_dir=EXAMPLES)
            assert wait(b.batch_id, timeout=60)["counts"] == {"succeeded": 1}
            a_done = sum(status(r.batch_id)["counts"].get("succeeded", 0) for r in a)
            assert a_done <= 80, f"globex's job finished after {a_done} of acme's 160"  # (a FIFO queue: all 160)
            for r in a:
                assert wait(r.batch_id, timeout=120)["counts"] == {"succeeded": 80}
            # the histories, from the manifests (Redis keeps only a compact record of a finished job)
            (b_entry,) = e2e.read_manifests(b.batch_id)
            queued_at, b_claimed = b_entry["history"][0]["at"], _claimed_at(b_entry)
            a_claimed = [_claimed_at(m) for r in a for m in e2e.read_manifests(r.batch_id)]
            assert len(a_claimed) == 160
            # acme's jobs claimed after globex's was queued and before it: at most one round's worth (a round
            # claims at most the free slots; the first round after its submit takes it first)
            between = [t for t in a_claimed if queued_at < t < b_claimed]
            assert len(between) <= CAP, (len(between), b_claimed - queued_at)
