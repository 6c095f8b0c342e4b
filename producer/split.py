"""Several producer processes on one JSONL file: each reads a byte range of it (cut at line starts) and writes
its jobs into the same batch, so parsing and validation use every core (one process tops out at one core's
worth of lines per second: docs/benchmarks.md section 11).

`submit_file` asks `split_fill` for a filler; `submit_batch` writes the batch's head, runs it, and closes the
batch (or cleans up after a failure) exactly as it does for one process. The filler counts the lines before
each range (every report names the line's number in the file), starts one process per range, and merges
their reports in file order (invalid lines and duplicates sorted by line). A process that fails fails the
batch, as a failure of the single producer does (the other ranges run to their end first).

What differs from one process: the ranges are enqueued at the same time, so the batch's job list (status,
manifest, `list_jobs`) and its rejected lines hold them interleaved chunk by chunk, not in file order; and
when two lines of different ranges are the same job (same idempotency key) or share a custom_id, the one
written first wins, which may be the later line. Within a range everything is in file order. Each process
holds one line at a time, as the single producer does, so memory stays flat (per process) however long the
file.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editq.schemas.settings import get_settings

if TYPE_CHECKING:
    from editq.producer.api import Enqueuer, Tally

MIN_RANGE_BYTES = 8 * 1024 * 1024  # automatic split: no range smaller (a process costs ~1 s of start-up)
_BLOCK = 1 << 20


def processes_for(path: Path, procs: int | None) -> int:
    """How many processes read `path`: `procs`, else EDITQ_SUBMIT_PROCS; 0 means one per CPU, but no more
    than one per MIN_RANGE_BYTES of the file."""
    n = get_settings().submit_procs if procs is None else procs
    if n > 0:
        return n
    return max(1, min(os.cpu_count() or 1, path.stat().st_size // MIN_RANGE_BYTES))


def line_ranges(path: Path, n: int) -> list[tuple[int, int, int]]:
    """`path` cut into at most `n` byte ranges at line starts: (start, end, number of the first line)."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as fh:
        for i in range(1, n):
            fh.seek(max(size * i // n - 1, 0))
            fh.readline()  # to the start of the next line (at once if the byte before the cut ends a line)
            pos = fh.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
        cuts.append(size)
        firsts, newlines, pos = [1], 0, 0
        fh.seek(0)
        for cut in cuts[1:-1]:
            while pos < cut:
                block = fh.read(min(_BLOCK, cut - pos))
                newlines += block.count(b"\n")
                pos += len(block)
            firsts.append(newlines + 1)
    return [(cuts[i], cuts[i + 1], firsts[i]) for i in range(len(cuts) - 1)]


def range_lines(path: Path, start: int, end: int, first: int) -> Iterator[tuple[int, bytes]]:
    """The numbered lines of one range, blank lines skipped but counted (as `api._numbered` does)."""
    n, pos = first, start
    with path.open("rb") as fh:
        fh.seek(start)
        for line in fh:
            if pos >= end:
                return
            pos += len(line)
            if line.strip():
                yield n, line
            n += 1


@dataclass(frozen=True)
class Range:
    """What one process needs (sent to it pickled)."""

    path: str
    start: int
    end: int
    first_line: int
    batch_id: str
    base_dir: str
    defaults: dict[str, Any] | None
    seeds: int | None
    budgeted: bool
    keep_ids: bool


def enqueue_range(r: Range) -> Tally:
    """In a producer process: enqueue one range into the batch; what it counted."""
    from editq.producer.api import Enqueuer, Tally, enqueue_lines

    enq = Enqueuer(r.batch_id, Path(r.base_dir), budgeted=r.budgeted)
    tally = Tally(batch_id=r.batch_id, keep_ids=r.keep_ids)
    try:
        enqueue_lines(enq, range_lines(Path(r.path), r.start, r.end, r.first_line), tally, defaults=r.defaults,
                      seeds=r.seeds)
    finally:
        enq.abandon()  # (after a failure: the chunk in flight settles before the parent looks at the batch)
    return tally


def split_fill(path: Path, procs: int | None, kwargs: dict[str, Any]
               ) -> Callable[[Enqueuer, Tally], None] | None:
    """A `submit_batch` filler that enqueues `path` from several processes, or None for one (the caller's loop)."""
    n = processes_for(path, procs)
    if n <= 1:
        return None
    ranges = line_ranges(path, n)
    if len(ranges) <= 1:
        return None

    def fill(enq: Enqueuer, report: Tally) -> None:
        parts = [Range(str(path), start, end, first, enq.batch_id, str(kwargs.get("base_dir", path.parent)),
                       kwargs.get("defaults"), kwargs.get("seeds"), enq.budgeted, report.keep_ids)
                 for start, end, first in ranges]
        errors: list[BaseException] = []
        with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(enqueue_range, part) for part in parts]:
                try:
                    got = future.result()
                except Exception as exc:  # every range ends before the batch is closed or cleaned up
                    errors.append(exc)
                    continue
                report.enqueued += got.enqueued
                report.job_ids += got.job_ids
                report.duplicates += got.duplicates
                report.invalid += got.invalid
        report.duplicates.sort(key=lambda d: d[0])
        report.invalid.sort(key=lambda e: e.line)
        if errors:
            raise errors[0]

    return fill
