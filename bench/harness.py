"""Shared pieces of the benchmarks: inputs, job lines, the stack, RSS sampling, sandbox and Redis readouts."""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from PIL import Image

from editq.worker.keys import Keys, scan_keys

MB = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs and job lines
def make_inputs(folder: Path, n: int, size: tuple[int, int] = (512, 512), noise: bool = False) -> list[str]:
    """`n` distinct PNGs (file names relative to `folder`). `noise` makes them incompressible (big files)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        if noise:
            im = Image.effect_noise(size, 40 + i).convert("RGB")
        else:
            rnd = random.Random(i)
            base = Image.linear_gradient("L").resize(size)
            im = Image.merge("RGB", (base, base.rotate(90), Image.new("L", size, rnd.randrange(256))))
        name = f"input-{i}.png"
        im.save(folder / name, "PNG")
        names.append(name)
    return names


def job_line(i: int, images: list[str], *, tag: str, size: str, fmt: str, lane: str = "bulk",
             num_images: int = 1) -> dict[str, Any]:
    """One JSONL line: a few distinct images, a unique prompt per job (so no line is a duplicate)."""
    return {
        "custom_id": f"{tag}-{i}",
        "prompt": f"Product photo #{i} ({tag}): place the object on a clean studio table, soft light.",
        "images": [images[i % len(images)]],
        "size": size,
        "quality": "low",
        "num_images": num_images,
        "output_format": fmt,
        "priority": lane,
        "provider": "fal",
    }


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------- memory
@dataclass
class RssSampler:
    """Samples the RSS of a set of processes every `interval` s on a thread.

    `trees` are counted with all their descendants, `singles` without (the producer is this process,
    whose children are the stack's services, which are not editq's)."""

    trees: Callable[[], list[int]]
    singles: Callable[[], list[int]] = lambda: []
    interval: float = 0.1
    peak_total: int = 0
    baseline: dict[int, int] = field(default_factory=dict)
    peak: dict[int, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cached: list[psutil.Process] | None = None
    _cached_at: float = 0.0
    _first_at: float | None = None

    def _procs(self) -> list[psutil.Process]:
        # Finding descendants scans all of /proc (~8 ms with ~150 processes on the machine); doing it every
        # 100 ms, then every second, cost the benchmark's own process seconds of CPU per run (counted as
        # "producer" in cpu_s_by_process) on the two cores it shares with the system it measures. The
        # process set changes only at start-up: looked up again once a second for the first 5 s of
        # sampling, then every 15 s.
        now = time.monotonic()
        if self._first_at is None:
            self._first_at = now
        every = 1.0 if now - self._first_at < 5.0 else 15.0
        if self._cached is not None and now - self._cached_at < every:
            return self._cached
        out: list[psutil.Process] = []
        for pid in self.trees():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                out += [p, *p.children(recursive=True)]
        for pid in self.singles():
            with contextlib.suppress(psutil.Error):
                out.append(psutil.Process(pid))
        self._cached, self._cached_at = out, now
        return out

    def sample(self) -> int:
        total = 0
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss
                total += rss
                self.baseline.setdefault(p.pid, rss)
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
        self.peak_total = max(self.peak_total, total)
        self.samples += 1
        return total

    def start(self) -> RssSampler:
        self.sample()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.sample()

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.sample()

    def growth_mb(self, pids: Iterable[int]) -> dict[int, float]:
        return {pid: round((self.peak.get(pid, 0) - self.baseline.get(pid, 0)) / MB, 1) for pid in pids}


# ---------------------------------------------------------------- readouts
def sandbox_get(base: str, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{base}{path}", params=params, timeout=120)
    resp.raise_for_status()
    return resp.json()


def sandbox_requests(base: str, provider: str = "fal") -> dict[str, dict[str, Any]]:
    data = sandbox_get(base, "/_sandbox/requests", provider=provider)
    return {e["request_id"]: e for e in data["requests"]}


def max_inflight(base: str, provider: str = "fal") -> dict[str, int]:
    p = sandbox_get(base, "/_sandbox/stats")["providers"][provider]
    return {"max_in_flight": int(p["max_in_flight"]), "max_in_progress": int(p["max_in_progress"])}


def redis_bytes(r: Any, patterns: Iterable[str]) -> tuple[int, int]:
    """(bytes, keys) of every key matching `patterns` (worker/keys.py `namespace_patterns`: our state
    and our Celery queues)."""
    total = nkeys = 0
    batch: list[str] = []

    def flush() -> int:
        pipe = r.pipeline(transaction=False)
        for k in batch:
            pipe.memory_usage(k, samples=0)
        return sum(int(x or 0) for x in pipe.execute())

    for key in scan_keys(r, patterns, count=2000):
        batch.append(key)
        nkeys += 1
        if len(batch) >= 1000:
            total += flush()
            batch = []
    if batch:
        total += flush()
    return total, nkeys


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    idx = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[idx]


TERMINAL = ("succeeded", "failed", "cancelled")


def terminal_time(history: str) -> float | None:
    lines = [ln.split("\t") for ln in history.splitlines() if ln]
    for parts in reversed(lines):
        if parts[0] in ("succeeded", "failed", "cancelled"):
            return float(parts[1])
    return None


def job_rows(r: Any, k: Keys, job_ids: list[str], manifests: dict[str, dict[str, Any]] | None = None
             ) -> list[dict[str, Any]]:
    """Per job: state, enqueue and terminal times, request id, outputs. A finished job's Redis record is compact
    (worker/lua/move.lua: no history, no outputs list), so its terminal time is its last move (`updated_at`)
    and its outputs come from its manifest (`manifests`: the batch manifest's lines by job id, when given)."""
    rows = []
    for start in range(0, len(job_ids), 1000):
        ids = job_ids[start : start + 1000]
        pipe = r.pipeline(transaction=False)
        for jid in ids:
            pipe.hmget(k.job(jid), "state", "created_at", "updated_at", "h", "request_id", "outputs", "lane")
        for jid, (state, created, updated, hist, rid, outputs, lane) in zip(ids, pipe.execute(), strict=True):
            done_at = terminal_time(hist or "")
            if done_at is None and state in TERMINAL and updated:
                done_at = float(updated)
            manifest = (manifests or {}).get(jid) or {}
            rows.append({
                "job_id": jid, "state": state, "created_at": float(created or 0), "lane": lane,
                "done_at": done_at, "request_id": rid or manifest.get("provider_request_id"),
                "outputs": json.loads(outputs) if outputs else list(manifest.get("outputs") or []),
            })
    return rows


def batch_manifests(batch: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The finished batch's manifest.jsonl from S3, by job id (`batch`: the batch hash from `wait_batch`)."""
    from editq.worker.storage import get_storage

    key = batch.get("manifest_key")
    if not key:
        return {}
    lines = get_storage().get_bytes(key).decode("utf-8").splitlines()
    return {m["job_id"]: m for m in (json.loads(line) for line in lines if line.strip())}


def overheads_ms(rows: list[dict[str, Any]], sandbox: dict[str, dict[str, Any]]) -> list[float]:
    """Per job: end to end (enqueue to terminal, manifest written) minus the time the provider held it."""
    out = []
    for row in rows:
        entry = sandbox.get(row["request_id"] or "")
        if entry is None or row["done_at"] is None or entry.get("completed_at") is None:
            continue
        held = entry["completed_at"] - entry["received_at"]
        out.append((row["done_at"] - row["created_at"] - held) * 1000)
    return out


def cpu_seconds(procs: dict[str, int]) -> dict[str, float]:
    """User+system CPU seconds used so far by each named process tree."""
    out = {}
    for name, pid in procs.items():
        total = 0.0
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = q.cpu_times()
                    total += t.user + t.system
        out[name] = round(total, 2)
    return out


def machine_state() -> dict[str, Any]:
    load1, load5, _ = os.getloadavg()
    vm = psutil.virtual_memory()
    return {
        "cpus": os.cpu_count(), "load_1m_at_start": round(load1, 2), "load_5m_at_start": round(load5, 2),
        "mem_total_mb": vm.total // MB, "mem_available_mb": vm.available // MB,
        "python": platform.python_version(),
    }


def wait_batch(r: Any, k: Keys, batch_id: str, timeout: float, progress_every: float = 10.0) -> dict[str, str]:
    """Until the batch manifest is written (the batch's last manifest). Returns the batch hash."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        raw: dict[str, str] = r.hgetall(k.batch(batch_id))
        if raw.get("manifest_key"):
            return raw
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"batch {batch_id} not finished after {timeout:.0f}s: {raw}")
        if now - last_report > progress_every:
            counts = {k[2:]: v for k, v in raw.items() if k.startswith("n_") and v != "0"}
            log(f"batch {batch_id}: done {raw.get('done', 0)}/{raw.get('total', '?')} {counts}")
            last_report = now
        time.sleep(0.05)


def image_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buf, "PNG")
    return buf.getvalue()


def chunks(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
