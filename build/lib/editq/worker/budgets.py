"""The budgets editq enforces, read for the metrics (`editq_budget_cap_usd`, `editq_budget_remaining_usd`):
every batch with a cap until its manifest is written, and every tenant with a daily cap (settings or
`editq budget --tenant`) for today (UTC). Registered with worker/metrics.py on import."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from editq.worker import metrics
from editq.worker.keys import Keys
from editq.worker.state import MICRO, batch_scope, tenant_caps, tenant_scope


def readings(r: Any, k: Keys, now: float | None = None) -> Iterator[tuple[str, float, float]]:
    """(scope, cap USD, remaining USD) of each budget in force."""
    batches = sorted(r.smembers(k.budget_batches))
    caps_json, _default = tenant_caps()
    tenants = dict(json.loads(caps_json)) if caps_json else {}
    tenants.update({t: int(v) for t, v in r.hgetall(k.tenant_budgets).items()})
    day = int((now if now is not None else time.time()) // 86400)
    pipe = r.pipeline(transaction=False)
    for bid in batches:
        pipe.hmget(k.batch(bid), "max_cost", "committed")
    for tenant in sorted(tenants):
        pipe.hget(k.tenant_day(tenant, day), "committed")
    res = pipe.execute()
    for bid, (cap, committed) in zip(batches, res[: len(batches)], strict=True):
        if cap is not None:
            yield batch_scope(bid), int(cap) / MICRO, (int(cap) - int(committed or 0)) / MICRO
    for tenant, committed in zip(sorted(tenants), res[len(batches):], strict=True):
        cap = int(tenants[tenant])
        yield tenant_scope(tenant), cap / MICRO, (cap - int(committed or 0)) / MICRO


metrics.BUDGET_READERS.append(readings)
