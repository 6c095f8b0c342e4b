"""What a finished job's outcome is, in the words `editq jobs --state` and `editq rerun --only` use.

Pure functions over what Redis (or a job manifest) recorded. A failed job is one of:

* `moderated`: the provider's safety system blocked it (the error carries `moderation_stage`);
* `expired`: the provider never ran it or held it past its deadline (an OpenAI batch that expired, a
  provider that kept a job longer than `EDITQ_PROVIDER_DEADLINE_S`);
* `failed`: anything else.

`missing` (a job that says succeeded but whose output is not in S3) needs S3 and is decided by the caller.
"""

from __future__ import annotations

import re
from typing import Any

OUTCOMES = ("succeeded", "failed", "cancelled", "expired", "moderated", "missing")
RERUNNABLE = frozenset({"failed", "cancelled", "expired", "moderated", "missing"})
EXPIRED_CODES = frozenset({"batch_expired", "request_timeout", "startup_timeout"})
_EXPIRED = re.compile(r"batch \S+ expired|no result within|not run: \S*expired", re.IGNORECASE)
_IDS = re.compile(r"\b[0-9a-f]{8,}(?:-[0-9a-f]{4,})*\b|\b[\w-]*\d[\w-]{10,}\b", re.IGNORECASE)


def outcome(state: str, error: dict[str, Any] | None) -> str:
    """The outcome of a job in `state` with its recorded error (ErrorInfo as a dict), or its state if active."""
    if state != "failed":
        return state
    err = error or {}
    if err.get("moderation_stage"):
        return "moderated"
    if err.get("provider_code") in EXPIRED_CODES or _EXPIRED.search(str(err.get("reason") or "")):
        return "expired"
    return "failed"


def failure_label(reason: str, limit: int = 160) -> str:
    """A failure reason with its request ids, hashes and numbers-with-letters blanked, so that the same
    failure of many jobs is counted once (`editq status --watch` lists them by count)."""
    return _IDS.sub("…", reason.strip().splitlines()[0] if reason.strip() else "unknown")[:limit]
