"""What `editq status --watch` shows: progress, rate, ETA, the per-provider split, cost so far, failures
by reason, and a warning when no worker is alive. `render` is pure (tested on its own); `Meter` keeps
the last minute of progress samples for the rate."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

WORKER_STALE_S = 10.0  # a worker that has not ticked for this long is not counted as alive
WINDOW_S = 60.0


@dataclass
class Meter:
    """Jobs finished per second over the last WINDOW_S seconds of samples."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, at: float, done: int) -> None:
        self.samples.append((at, done))
        while len(self.samples) > 2 and at - self.samples[0][0] > WINDOW_S:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def provider_split(raw: dict[str, str]) -> dict[str, dict[str, int]]:
    """From a batch hash's `p:<provider>:<state>` counters: provider -> {state: count}."""
    out: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        if k.startswith("p:") and k.count(":") == 2:
            _, provider, state = k.split(":")
            if int(v):
                out.setdefault(provider, {})[state] = int(v)
    return out


def render(st: dict[str, Any], *, rate: float | None, workers: int, split: dict[str, dict[str, int]],
           failures_shown: int = 5) -> list[str]:
    """The lines of one refresh for a batch status `st` (producer.api.status)."""
    total, done = st["total"], st["done"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(st["counts"].items())) or "no jobs"
    lines = [f"batch {st['batch_id']}: {done}/{total} finished ({counts})"]
    left = max(0, total - done)
    if st.get("finished"):
        speed = "done"
    elif rate is None:
        speed = "rate: measuring…"
    elif rate <= 0:
        speed = "rate: 0 jobs/s (ETA unknown)"
    else:
        speed = f"rate: {rate * 60:.1f} jobs/min, ETA {_duration(left / rate)} for {left} left"
    cost = st.get("cost_usd")
    lines.append(f"{speed}; cost so far: " + (f"${cost:.2f}" if cost is not None else "not recorded"))
    if split:
        parts = []
        for provider, by_state in sorted(split.items()):
            parts.append(f"{provider} " + " ".join(f"{s} {n}" for s, n in sorted(by_state.items())))
        lines.append("by provider: " + "; ".join(parts))
    failures = sorted(st.get("failures", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    if failures:
        lines.append("failures:")
        lines += [f"  {n} x {reason}" for reason, n in failures[:failures_shown]]
        if len(failures) > failures_shown:
            lines.append(f"  … {len(failures) - failures_shown} more reasons "
                         f"(editq jobs {st['batch_id']} --state failed)")
    if workers == 0 and not st.get("finished"):
        lines.append("WARNING: no worker is alive: nothing will move until one runs (editq worker, or editq up)")
    return lines


def workers_alive(store: Any, now: float | None = None) -> int:
    now = time.time() if now is None else now
    return int(store.r.zcount(store.k.alive, now - WORKER_STALE_S, "+inf"))
