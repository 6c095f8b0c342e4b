"""Review decisions (pure): the records of `review.jsonl` and the state they add up to.

Each line of `review.jsonl` is one decision: who, when, what (``approve``, ``reject``, ``pick``, ``clear``)
and on which job (with its group and label, so the file reads on its own). The state is the replay of
the file in order: a job is approved or rejected by its last approve/reject/clear; a group's pick is its
last pick (a pick also approves that job; ``clear`` on the picked job removes the pick too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["approve", "reject", "pick", "clear"]
ACTIONS: tuple[str, ...] = ("approve", "reject", "pick", "clear")


@dataclass(frozen=True)
class Decision:
    action: str
    job_id: str
    group: str
    at: float
    by: str
    label: str | None = None
    provider: str | None = None
    bulk: str | None = None  # the bulk action this decision was part of, e.g. "approve label A"

    def to_json(self) -> str:
        data = {k: v for k, v in self.__dict__.items() if v is not None}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        action = str(data.get("action", ""))
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
        return cls(action=action, job_id=str(data["job_id"]), group=str(data["group"]), at=float(data["at"]),
                   by=str(data.get("by") or "unknown"), label=data.get("label"), provider=data.get("provider"),
                   bulk=data.get("bulk"))


@dataclass
class ReviewState:
    status: dict[str, str] = field(default_factory=dict)  # job_id -> "approved" | "rejected"
    picked: dict[str, str] = field(default_factory=dict)  # group -> job_id
    last: dict[str, Decision] = field(default_factory=dict)  # job_id -> its last decision (who/when)
    count: int = 0

    def apply(self, d: Decision) -> None:
        self.count += 1
        self.last[d.job_id] = d
        if d.action == "approve":
            self.status[d.job_id] = "approved"
        elif d.action == "reject":
            self.status[d.job_id] = "rejected"
            if self.picked.get(d.group) == d.job_id:
                del self.picked[d.group]
        elif d.action == "pick":
            self.status[d.job_id] = "approved"
            self.picked[d.group] = d.job_id
        elif d.action == "clear":
            self.status.pop(d.job_id, None)
            if self.picked.get(d.group) == d.job_id:
                del self.picked[d.group]

    def of(self, job_id: str) -> str | None:
        return self.status.get(job_id)

    def summary(self) -> dict[str, int]:
        values = list(self.status.values())
        return {"approved": values.count("approved"), "rejected": values.count("rejected"),
                "picked": len(self.picked), "decisions": self.count}


def replay(decisions: Iterable[Decision]) -> ReviewState:
    state = ReviewState()
    for d in decisions:
        state.apply(d)
    return state


def parse_log(text: str) -> list[Decision]:
    """The decisions of a `review.jsonl` body; a line that does not parse is skipped (the rest still counts)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(Decision.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return out
