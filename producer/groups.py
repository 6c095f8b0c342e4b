"""Per-group counts of a batch (`editq status BATCH`): how many jobs of each A/B group are in each state."""

from __future__ import annotations

import json
from collections.abc import Iterable

from editq.worker.state import JobStore

CHUNK = 1000


def count_groups(rows: Iterable[tuple[str | None, str]]) -> dict[str, dict[str, int]]:
    """(group, state) pairs -> {group: {state: n}}; jobs outside any group are counted under their own id
    by the caller, or under "" here."""
    out: dict[str, dict[str, int]] = {}
    for group, state in rows:
        counts = out.setdefault(group or "", {})
        counts[state] = counts.get(state, 0) + 1
    return out


def _group_of(spec: str | None) -> str | None:
    if not spec:
        return None
    try:
        return json.loads(spec).get("group")
    except (ValueError, AttributeError):
        return None


def batch_group_rows(batch_id: str, store: JobStore) -> Iterable[tuple[str | None, str]]:
    """(group, state) for every job of a batch still in Redis (an expired job counts as state `expired`)."""
    r, k = store.r, store.k
    total = r.llen(k.batch_jobs(batch_id))
    for start in range(0, total, CHUNK):
        ids = r.lrange(k.batch_jobs(batch_id), start, start + CHUNK - 1)
        pipe = r.pipeline(transaction=False)
        for jid in ids:
            pipe.hmget(k.job(jid), "state", "spec", "grp")  # grp: a finished job's compact record
        for state, spec, grp in pipe.execute():
            yield (grp if grp else _group_of(spec)), state or "expired"


def group_counts(batch_id: str, store: JobStore) -> dict[str, dict[str, int]]:
    """{group: {state: n}} for the grouped jobs of a batch (jobs outside any group are left out)."""
    counts = count_groups(batch_group_rows(batch_id, store))
    counts.pop("", None)
    return counts


def format_groups(groups: dict[str, dict[str, int]], limit: int = 30) -> list[str]:
    """Lines for the terminal: one per group, `limit` at most."""
    lines = []
    for name in sorted(groups)[:limit]:
        counts = groups[name]
        detail = ", ".join(f"{state} {n}" for state, n in sorted(counts.items()))
        lines.append(f"  {name}: {sum(counts.values())} variants ({detail})")
    if len(groups) > limit:
        lines.append(f"  … and {len(groups) - limit} more groups (--json shows all)")
    return lines
