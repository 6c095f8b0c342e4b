"""Where a throughput run's time above ideal goes, wave by wave (docs/benchmarks.md, section 12).

    python -m editq.bench.throughput --jobs 10000 --latency 30 --provider-concurrency 1000 --json --dump RUN.jsonl
    python -m editq.bench.waves RUN.jsonl LOG_DIR --concurrency 1000 --latency 30

RUN.jsonl is the run's `--dump` (per job: the sandbox's received/completed times, the job's stored time, relative
to the first enqueue); LOG_DIR is the run's `log_dir` (its JSON result names it), whose lifecycle lines give each
job's `job submitted` (worker), `provider finished` (receiver: the job is `ready`, its slot free) and `job
succeeded` times. The log times are absolute; they are aligned to the dump by the earliest submit.

With the provider's cap C reached, request k + C can start only when the k-th request completes, so the slot
seconds left idle up to the last completion, divided by C, are the whole loss up to it:
(C * last completion - N * L) / C = first fill + refill lags + idle after each chain's last completion.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

_LINE = re.compile(r"^(\S+?)Z? \[\w+\s*\] (job submitted|provider finished|job succeeded)\s.*?job_id=(\S+)")


def lifecycle_times(log_dir: Path) -> dict[str, dict[str, float]]:
    """job id -> {event: unix time} from every *.log of the run (plain log lines)."""
    out: dict[str, dict[str, float]] = {}
    for path in sorted(log_dir.glob("*.log")):
        with path.open(errors="replace") as fh:
            for line in fh:
                m = _LINE.match(line)
                if m:
                    out.setdefault(m.group(3), {})[m.group(2)] = datetime.fromisoformat(m.group(1)).timestamp()
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * (len(s) - 1) + 0.5))] if s else float("nan")


def spread(values: list[float]) -> str:
    return f"median {pct(values, 50):.2f} p90 {pct(values, 90):.2f} max {max(values, default=float('nan')):.2f}"


def analyse(rows: list[dict[str, Any]], events: dict[str, dict[str, float]], c: int, latency: float
            ) -> dict[str, Any]:
    n = len(rows)
    subs = [events[r["job_id"]]["job submitted"] - r["received"] for r in rows
            if "job submitted" in events.get(r["job_id"], {})]
    t0 = min(subs) if subs else 0.0
    for r in rows:
        ev = events.get(r["job_id"], {})
        r["ready"] = ev["provider finished"] - t0 if "provider finished" in ev else None
        r["stored"] = ev["job succeeded"] - t0 if "job succeeded" in ev else None
    rec = sorted(r["received"] for r in rows)
    by_completion = sorted(rows, key=lambda r: r["completed"])
    comp = [r["completed"] for r in by_completion]
    last = comp[-1]
    refill = [rec[k + c] - comp[k] for k in range(n - c)]
    webhook = [by_completion[k]["ready"] - comp[k] for k in range(n - c) if by_completion[k]["ready"] is not None]
    claim = [rec[k + c] - by_completion[k]["ready"] for k in range(n - c) if by_completion[k]["ready"] is not None]
    by_received = sorted(rows, key=lambda r: r["received"])
    waves = []
    for w in range(n // c):
        wave = by_received[w * c:(w + 1) * c]
        got = [r["received"] for r in wave]
        done = [r["completed"] for r in wave]
        ready = [r["ready"] - r["completed"] for r in wave if r["ready"] is not None]
        stored = [r["stored"] - r["ready"] for r in wave if r["ready"] is not None and r["stored"] is not None]
        waves.append({"wave": w, "received_first": round(min(got), 2), "received_last": round(max(got), 2),
                      "spread_s": round(max(got) - min(got), 2), "completed_last": round(max(done), 2),
                      "webhook_leg": spread(ready), "ready_to_stored": spread(stored)})
    return {
        "jobs": n, "ideal_s": n * latency / c, "last_completion_s": round(last, 2),
        "last_stored_s": round(max((r["done"] for r in rows), default=0.0), 2),
        "lost_s (C*last completion - N*L)/C": round((c * last - n * latency) / c, 2),
        "first_fill_s (sum of the first C requests' start)/C": round(sum(rec[:c]) / c, 2),
        "refill_lag_s (completion k -> request k+C)/C": round(sum(refill) / c, 2),
        "idle_after_last_completions_s": round(sum(last - x for x in comp[-c:]) / c, 2),
        "refill_lag": spread(refill),
        "completion_to_ready (webhook leg)": spread(webhook),
        "ready_to_next_request (kick, claim, submit)": spread(claim),
        "waves": waves,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m editq.bench.waves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dump", type=Path)
    p.add_argument("log_dir", type=Path)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--latency", type=float, default=30.0)
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in a.dump.read_text().splitlines() if line.strip()]
    out = analyse(rows, lifecycle_times(a.log_dir), a.concurrency, a.latency)
    for key, value in out.items():
        if key != "waves":
            print(f"{key:55} {value}")
    for wave in out["waves"]:
        print(json.dumps(wave))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
