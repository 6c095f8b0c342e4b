"""A/B variants: one request line expands into the jobs of one group (pure; no I/O).

A line may carry

* ``"variants": [{...}, {...}]``: overrides of any job field (``prompt``, ``quality``, ``size``,
  ``provider``, ``metadata``...), each with an optional ``label`` (default ``A``, ``B``, ``C``...);
* ``"variants": N`` (or ``editq submit --variants N`` for lines without ``variants``): N samples of the
  same request, labelled ``s1`` … ``sN``. No provider's gpt-image-2 edit endpoint takes a seed, so
  these are N independent runs of the identical request (each billed; the sandbox, being
  deterministic, answers them with identical bytes);
* ``"compare": ["fal", "replicate", "openai"]``: every variant runs once on each of these providers.

Each expanded job carries ``group`` (the line's ``custom_id``, else a hash of the base request) and
``variant`` (its label); with ``compare`` the jobs of one label differ by ``provider``. A line without
``variants`` or ``compare`` (and no seeds asked for) is returned unchanged: one job, no group.

Submit and the cost estimate both call :func:`expand_line`, so validation, estimates and budgets see
every variant as the ordinary job it becomes.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from typing import Any

MAX_JOBS_PER_LINE = 64
LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
# fields that define the group (its input) or are set by the expansion itself
FIXED_FIELDS = frozenset({"images", "mask", "custom_id", "group", "variant", "variants", "compare",
                          "idempotency_key", "parent_job_id"})


def _letters(n: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA (spreadsheet columns)."""
    out = ""
    n += 1
    while n:
        n, rem = divmod(n - 1, 26)
        out = string.ascii_uppercase[rem] + out
    return out


def group_id(base: dict[str, Any]) -> str:
    """The group of a line: its `group` if given, else its custom_id, else a short hash of the base request."""
    for name in ("group", "custom_id"):
        value = base.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    blob = json.dumps({k: v for k, v in base.items() if k not in ("variants", "compare")}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return "g-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def _overrides(spec: Any, seeds: int | None) -> list[tuple[str, dict[str, Any]]] | None:
    """(label, override) pairs, or None when the line has no variants."""
    if spec is None:
        spec = seeds if seeds and seeds > 1 else None
        if spec is None:
            return None
    if isinstance(spec, bool) or not isinstance(spec, int | list):
        raise ValueError("variants: must be a list of overrides or a number of samples")
    if isinstance(spec, int):
        if not 1 <= spec <= MAX_JOBS_PER_LINE:
            raise ValueError(f"variants: a number of samples must be 1-{MAX_JOBS_PER_LINE}")
        return [(f"s{i}", {}) for i in range(1, spec + 1)]
    if not spec:
        raise ValueError("variants: must not be empty")
    pairs: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(spec):
        if not isinstance(item, dict):
            raise ValueError(f"variants[{i}]: must be an object of field overrides")
        item = dict(item)
        label = str(item.pop("label", _letters(i))).strip()
        if not LABEL_RE.fullmatch(label):
            raise ValueError(f"variants[{i}].label: {label!r} must be 1-40 letters, digits, '.', '_' or '-'")
        fixed = sorted(set(item) & FIXED_FIELDS)
        if fixed:
            raise ValueError(f"variants[{i}]: {', '.join(fixed)} cannot vary within a group (it defines the group)")
        pairs.append((label, item))
    labels = [label for label, _ in pairs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"variants: label {dup[0]!r} is used twice")
    return pairs


def _compare(spec: Any) -> list[str] | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [p for p in spec.split(",")]
    if not isinstance(spec, list) or not spec or not all(isinstance(p, str) and p.strip() for p in spec):
        raise ValueError("compare: must be a non-empty list of provider names")
    names = [p.strip() for p in spec]
    if len(set(names)) != len(names):
        raise ValueError("compare: a provider appears twice")
    return names


def expand(data: dict[str, Any], seeds: int | None = None) -> list[dict[str, Any]]:
    """The job requests of one parsed line (defaults already applied). Raises ValueError naming the field."""
    base = {k: v for k, v in data.items() if k not in ("variants", "compare")}
    pairs = _overrides(data.get("variants"), seeds)
    providers = _compare(data.get("compare"))
    if pairs is None and providers is None:
        return [dict(data)]
    pairs = pairs or [("A", {})]
    if providers and any("provider" in over for _, over in pairs):
        raise ValueError("variants: a variant may not set provider when the line has compare")
    total = len(pairs) * (len(providers) if providers else 1)
    if total > MAX_JOBS_PER_LINE:
        raise ValueError(f"variants: this line expands to {total} jobs; at most {MAX_JOBS_PER_LINE} per line")
    group = group_id(data)
    cid = base.get("custom_id")
    jobs: list[dict[str, Any]] = []
    targets: list[str | None] = list(providers) if providers else [None]
    for label, over in pairs:
        for provider in targets:
            job = {**base, **over, "group": group, "variant": label}
            if isinstance(base.get("metadata"), dict) and isinstance(over.get("metadata"), dict):
                job["metadata"] = {**base["metadata"], **over["metadata"]}
            if provider is not None:
                job["provider"] = provider
            if base.get("idempotency_key"):  # the user's key, made one per job
                job["idempotency_key"] = f"{base['idempotency_key']}:{label}" + (f":{provider}" if provider else "")
            if cid is not None:
                job["custom_id"] = f"{cid}-{label}" + (f"-{provider}" if provider else "")
            jobs.append(job)
    return jobs


def parse_line(raw: str | dict[str, Any], defaults: dict[str, Any] | None = None,
               seeds: int | None = None) -> list[dict[str, Any]]:
    """One JSONL line (text or parsed) -> its job requests, defaults applied under the line's own fields."""
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object")
    if defaults:
        data = {**defaults, **data}
    return expand(data, seeds)


def label_error(job: dict[str, Any], message: str) -> str:
    """An error about one expanded job, naming its variant (and provider under compare)."""
    label = job.get("variant")
    return f"variant {label}: {message}" if label else message
