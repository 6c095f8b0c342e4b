"""The chaos suite, small: 60 jobs over every queue and sync provider with sandbox faults on, while workers and
the receiver are SIGKILLed, Redis is restarted gracefully and hard, and S3 is frozen (bench/chaos.py; the
1,000-job run is in docs/reliability.md). The schedule follows the number of finished jobs, not the clock;
the figures are measured from outside editq (Redis, S3 objects, the sandbox's request log)."""

from __future__ import annotations

import json
from pathlib import Path

from editq.bench.chaos import parse_args, run_once, schedule, targets_met


def test_sixty_jobs_through_chaos_nothing_lost_nothing_paid_twice_unflagged(tmp_path: Path) -> None:
    a = parse_args(["--jobs", "60", "--freeze-s", "5", "--seed", "7", "--latency", "1", "--jitter", "1",
                    "--no-baseline", "--timeout", "240"])
    out = run_once(a, True, tmp_path)
    missed = [name for name, met in targets_met(out).items() if not met]
    figures = {k: v for k, v in out.items() if k not in ("unplanned_exit_details", "faults", "sandbox")}
    assert missed == [], f"missed {missed}: {json.dumps(figures)}"
    assert out["states"] == {"succeeded": 60}
    assert out["unplanned_exit_details"] == []
    # every fault of the schedule fired, and the sandbox's faults did happen
    assert [(f["action"], f["target"]) for f in out["faults"]] == [(f.action, f.target) for f in schedule()]
    sandbox = out["sandbox"]
    assert sandbox["rejected"].get("submit_reset", 0) + sandbox["rejected"].get("5xx", 0) > 0
    # every job reached the provider; whether a lost answer led to a second accepted request depends on where
    # the faults land (seen: 60 and 62 with the same seed), and any such one is counted and must be flagged
    # (targets_met: double_paid_unflagged == 0)
    assert sandbox["accepted"] >= 60
    assert out["requests_ran"] >= 60 and out["unmatched_requests"] == 0
