"""One key layout: the Python layer and the Lua layer name the same keys, and nothing else names any.

The layout is `worker.keys.LAYOUT`. This file is its specification: it is the one place besides
worker/keys.py allowed to spell key names, so the expected names below are written out by hand.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from editq.schemas.job import EditJob, InputRecord
from editq.worker.keys import LAYOUT, Keys, broker_patterns, lua_preamble, namespace_patterns, scan_keys
from editq.worker.state import JobStore, State, lua_script
from tests.conftest import ROOT, unique

# every template's parameters, with a sample value for each (a colon in a value is kept as is)
SAMPLE = {"job_id": "j-1", "batch_id": "b-1", "key": "ab12", "provider": "fal", "request_id": "req:9",
          "lane": "bulk", "host": "h.local", "pid": "4242", "delivery_id": "d-7", "what": "results",
          "batch": "nb-3", "scope": "batch:b-1", "tenant": "acme", "day": "20429"}


@pytest.fixture
def r(stack_redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(stack_redis_url, decode_responses=True)


@pytest.fixture
def k(r: redis.Redis) -> Iterator[Keys]:
    keys = Keys(unique("editq-keys"))
    yield keys
    for key in list(keys.scan(r)):
        r.delete(key)


def _params(template: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", template.replace("{prefix}", ""))


def _python(k: Keys, name: str) -> str:
    attr = getattr(k, name)
    return attr(*(SAMPLE[p] for p in _params(LAYOUT[name]))) if callable(attr) else attr


def test_every_template_has_one_python_accessor_and_nothing_else_does() -> None:
    public = {n for n in dir(Keys) if not n.startswith("_")} - {"prefix", "match", "scan"}
    assert public == set(LAYOUT)
    k = Keys("p")
    for name, template in LAYOUT.items():
        assert _python(k, name) == template.format(prefix="p", **SAMPLE)


def test_the_layout_is_the_one_editq_always_had() -> None:
    """Renaming a key strands the jobs of a running deployment: a change here must be deliberate."""
    k = Keys("p")
    assert [_python(k, n) for n in LAYOUT] == [
        "p:job:j-1", "p:batch:b-1", "p:batch:b-1:jobs", "p:batch:b-1:errors", "p:batch:b-1:cids",
        "p:batch:b-1:reruns", "p:batch:b-1:failures", "p:batch:b-1:manifests", "p:idem:ab12", "p:req:fal:req:9",
        "p:pending:fal:bulk", "p:pending:fal:bulk:t:acme", "p:fair:fal:bulk", "p:providers", "p:inflight", "p:retry",
        "p:ready", "p:collecting", "p:finalize:due",
        "p:slots:fal", "p:rpm:fal", "p:backoff:fal", "p:backoff:fal:poll", "p:interactive:fal", "p:circuit:fal",
        "p:circuit:fal:fails", "p:budgetwait:batch:b-1", "p:budget:waiting", "p:tenant:acme:20429",
        "p:budget:tenants", "p:budget:batches", "p:kick:dispatch:fal", "p:kick:collect", "p:lock:tick",
        "p:sweep:fal:due", "p:lock:sweep:fal", "p:sweep:fal",
        "p:workers:h.local:4242", "p:alive", "p:stats:jobs", "p:stats:latency", "p:latency:median", "p:stats:cost",
        "p:stats:found", "p:repl:mark",
        "p:whseen:fal:d-7", "p:oaib:b-1:meta", "p:oaib:b-1:status", "p:oaib:b-1:results", "p:oaib:b-1:lock",
        "p:oaib:b-1:ingested", "p:oaib:b-1:cancelled", "p:oaib:open", "p:naive:ready", "p:naive:done:nb-3", "p:*",
    ]


def test_lua_preamble_builds_every_key_exactly_as_python_does(r: redis.Redis, k: Keys) -> None:
    names = [n for n in LAYOUT if n != "all"]
    exprs = []
    for name in names:
        params = _params(LAYOUT[name])
        exprs.append(f"K.{name}({', '.join(repr(SAMPLE[p]) for p in params)})" if params else f"K.{name}")
    script = lua_preamble() + "return {" + ", ".join(exprs) + "}"
    assert r.eval(script, 0, k.prefix) == [_python(k, n) for n in names]


def _job(batch: str, lane: str) -> EditJob:
    rec = InputRecord(ref="a.png", sha256="0" * 64, bytes=1, format="png", width=8, height=8, s3_key="inputs/x.png")
    return EditJob(job_id=unique("job"), batch_id=batch, prompt="p", images=["a.png"], inputs=[rec],
                   idempotency_key=unique("idem"), priority=lane)


def test_the_scripts_write_exactly_the_keys_python_names(r: redis.Redis, k: Keys) -> None:
    """A job's whole life through the Lua scripts, then the exact key names in Redis: each is one Python
    names (and reads back), none is missing, none is extra."""
    store = JobStore(r, k)
    store.kick_ms = 5000
    bid = unique("batch")
    bulk, urgent = _job(bid, "bulk"), _job(bid, "interactive")
    assert store.create(bulk)[0] == 1 and store.create(urgent)[0] == 1
    assert store.claim("fal", 1, 4, 1, 60, 30, reserve_hold_s=5.0) == [urgent.job_id]  # rpm window, interactive mark
    assert store.move(urgent.job_id, [State.submitting], State.ready).ok  # frees a slot while bulk waits: both kicks
    assert store.move(urgent.job_id, [State.ready], State.collecting, score=1.0).ok
    assert not store.close_batch(bid)
    assert store.move(urgent.job_id, [State.collecting], State.succeeded).ok
    assert store.move(bulk.job_id, [State.queued], State.cancelled).batch_finished
    assert sorted(k.scan(r)) == sorted([
        k.job(bulk.job_id), k.job(urgent.job_id), k.idem(bulk.idempotency_key), k.idem(urgent.idempotency_key),
        k.batch(bid), k.batch_jobs(bid), k.pending("fal", "bulk"), k.fair("fal", "bulk"), k.providers, k.ready,
        k.finalize, k.rpm("fal"), k.interactive_mark("fal"), k.kick_dispatch("fal"), k.kick_collect, k.stats_jobs,
    ])  # no slots zset: the job that held a slot gave it back, and Redis drops an empty zset
    assert r.lrange(k.batch_jobs(bid), 0, -1) == [bulk.job_id, urgent.job_id]
    assert r.zrange(k.finalize, 0, -1) == [bid] and r.lrange(k.ready, 0, -1) == [urgent.job_id]  # collect pops it
    assert r.lrange(k.pending("fal", "bulk"), 0, -1) == [bulk.job_id]  # a claim drops a cancelled id it pops
    assert r.hget(k.job(urgent.job_id), "state") == "succeeded"
    counts = {f: int(v) for f, v in r.hgetall(k.stats_jobs).items() if int(v)}  # the metrics' job counts
    assert counts == {"succeeded|fal|interactive": 1, "cancelled|fal|bulk": 1}
    # ...and the indexes the life passed through were the ones Python reads
    store.create(job := _job(bid, "bulk"))
    assert r.lrange(k.pending("fal", "bulk"), 0, -1) == [bulk.job_id, job.job_id]
    assert store.claim("fal", 1, 4, 0, 0, 30) == [job.job_id] and r.zscore(k.inflight, job.job_id)
    assert r.zscore(k.slots("fal"), job.job_id) is not None
    assert store.move(job.job_id, [State.submitting], State.retry_wait, score=5.0).ok
    assert r.zscore(k.retry, job.job_id) == 5.0
    r.set(k.backoff("fal"), "1", px=60_000)
    assert store.move(job.job_id, [State.retry_wait], State.queued).ok
    assert store.claim("fal", 1, 4, 0, 0, 30) == []  # the claim script reads Keys.backoff
    r.delete(k.backoff("fal"))
    assert store.claim("fal", 1, 4, 0, 0, 30) == [job.job_id]


def test_namespace_scans_find_a_prefix_and_its_queues_once(r: redis.Redis, k: Keys) -> None:
    queue = k.prefix  # a local stack uses one tag for both prefixes
    mine = [k.job("a"), k.batch("b"), k.kick_collect]
    celery = [queue, f"{queue}.sync", f"_kombu.binding.{queue}"]
    other = Keys(k.prefix + "x").job("a")  # a longer prefix is someone else's for Keys.scan
    for key in [*mine, *celery, other]:
        r.set(key, "1", ex=60)
    try:
        assert sorted(k.scan(r)) == sorted(mine)
        assert set(scan_keys(r, broker_patterns(queue))) >= {*celery, other}  # kombu's patterns are wider
        found = list(scan_keys(r, namespace_patterns(k.prefix, queue)))
        assert len(found) == len(set(found)) and set(found) == {*mine, *celery, other}
        assert sorted(r.scan_iter(k.match("job"))) == [k.job("a")]
        assert Keys("a*b").match("job") == "a\\*b:job:*"
    finally:
        r.delete(*celery, other)


# ---- nothing outside worker/keys.py builds a key string ----------------------------------------------------
SCANNED = ("worker", "producer", "bench", "schemas", "sandbox", "providers", "tests")
EXEMPT = {"worker/keys.py", "tests/test_keys.py"}  # the layout, and its specification (this file)

# Lines allowed to spell a key by hand (none). An entry that no longer matches fails the test.
ALLOWED: dict[tuple[str, str], str] = {}


def _segments() -> list[str]:
    """The literal pieces of the layout's templates (`:job:`, `:jobs`, `:kick:dispatch:`...): a string
    holding one is a key being spelled by hand."""
    out = set()
    for template in LAYOUT.values():
        for piece in re.split(r"\{\w+\}", template.replace("{prefix}", "\0")):
            piece = piece.strip("\0")
            if re.search(r"[a-z]", piece):  # not ":" or ":*" (a URL has those; the rules below catch them)
                out.add(piece)
    return sorted(out, key=len, reverse=True)


_SEGMENT = re.compile("|".join(re.escape(s) + (r"(?![\w-])" if s[-1].isalnum() else "") for s in _segments()))
_PREFIXISH = re.compile(r"prefix", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _mentions_prefix(node: ast.AST) -> bool:
    names = (n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(node)
             if isinstance(n, ast.Name | ast.Attribute))
    return any(_PREFIXISH.search(name) for name in names)


def _text_start(node: ast.AST) -> str | None:
    """The literal start of a string expression (None: not a string, or it starts with a value)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def key_building_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, reason) of every expression in `path` that spells a Redis key by hand."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if m := _SEGMENT.search(node.value):
                yield node.lineno, f"key segment {m.group()!r} in a string"
        elif isinstance(node, ast.JoinedStr):
            values = node.values
            for a, b in itertools.pairwise(values):
                if (isinstance(a, ast.FormattedValue) and _mentions_prefix(a.value) and isinstance(b, ast.Constant)
                        and str(b.value).startswith((":", "*"))):
                    yield node.lineno, "f-string after a prefix"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            text = _text_start(node.right)  # prefix + ":..." (a path prefix + "/v1" is not a key)
            if text is not None and text.startswith((":", "*")) and _mentions_prefix(node.left):
                yield node.lineno, "a prefix concatenated with text"


def _source_files() -> Iterator[Path]:
    for top in SCANNED:
        yield from sorted((ROOT / top).rglob("*.py"))


def test_the_detector_sees_each_way_a_key_gets_built(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f(prefix, k, p, jid):\n"
        "    a = f'{prefix}:job:{jid}'\n"
        "    b = k.prefix + ':*'\n"
        "    c = k.circuit(p) + ':fails'\n"
        "    d = prefix + ':' + jid\n"
        "    e = f'{self.k.prefix}:workers:{p}'\n"
        "    g = f'{prefix}*'\n"
        "    return 'job done: ready' + jid\n"  # prose is not a key
    )
    assert sorted(n for n, _ in key_building_lines(sample)) == [2, 2, 3, 4, 5, 6, 6, 7]


def test_no_key_string_is_built_outside_worker_keys() -> None:
    found: dict[tuple[str, str], list[str]] = {}
    for path in _source_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel in EXEMPT:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for lineno, why in key_building_lines(path):
            found.setdefault((rel, lines[lineno - 1].strip()), []).append(f"{rel}:{lineno}: {why}")
    unexpected = [msg for where, msgs in found.items() if where not in ALLOWED for msg in msgs]
    assert not unexpected, "build these keys with worker/keys.py:\n" + "\n".join(unexpected)
    stale = [f"{f}: {line}" for f, line in ALLOWED if (f, line) not in found]
    assert not stale, "allowed lines that are gone (fixed? delete them from ALLOWED):\n" + "\n".join(stale)


def test_the_lua_scripts_take_every_key_from_the_preamble() -> None:
    lua = sorted((ROOT / "worker" / "lua").glob("*.lua"))
    assert {p.name for p in lua} == {"move.lua", "transition.lua", "claim.lua", "create.lua", "close.lua",
                                     "budget.lua", "release.lua", "claim_ready.lua", "fair.lua"}
    for path in lua:
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())  # comments may name keys
        strings = re.findall(r"'([^']*)'|\"([^\"]*)\"", code)
        spelled = [s for pair in strings for s in pair if s and _SEGMENT.search(s)]
        assert not spelled, f"{path.name} spells keys: {spelled}"
        assert not re.search(r"\bprefix\b|ARGV\[1\]", code), f"{path.name} builds keys from the prefix"
        assert "K." in code or path.name == "move.lua"
    # every script is the preamble, then its file (with move.lua spliced in where it is included)
    for name in ("transition.lua", "claim.lua", "create.lua", "close.lua"):
        script = lua_script(name)
        assert script.startswith(lua_preamble()) and "--@include" not in script
        assert ("local function move(" in script) == (name in ("transition.lua", "claim.lua"))

