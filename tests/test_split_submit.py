"""`submit_file` from several producer processes (producer/split.py): the file is cut at line starts, every
line is read exactly once with its number in the file, and the batch holds what one process would have
written (same jobs, same refused lines with the same numbers and messages, duplicates found), then closes."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from editq.producer.api import _numbered, submit_file, wait
from editq.producer.split import line_ranges, processes_for, range_lines
from editq.producer.stack import LocalStack
from editq.schemas.settings import get_settings
from editq.worker.state import JobStore
from tests.conftest import EXAMPLES, unique


def _lines_file(path: Path, body: bytes) -> Path:
    path.write_bytes(body)
    return path


BODIES = [
    b"",
    b"one",
    b"one\ntwo\n",
    b"a\n\n\nb\r\n  \nc" + b"x" * 5000 + b"\nd\n",  # blank lines, CRLF, a long line, in the middle of a cut
    b"".join(b'{"n": %d}\n' % i + (b"\n" if i % 7 == 0 else b"") for i in range(500)),
    b"\n" * 50,
    b"last line without newline\nz",
]


@pytest.mark.parametrize("body", BODIES)
def test_the_ranges_read_every_line_once_with_its_number(tmp_path: Path, body: bytes) -> None:
    path = _lines_file(tmp_path / "f.jsonl", body)
    with path.open("rb") as fh:
        expected = list(_numbered(fh))
    for n in range(1, 9):
        ranges = line_ranges(path, n)
        assert len(ranges) <= max(n, 1)
        got = [pair for start, end, first in ranges for pair in range_lines(path, start, end, first)]
        assert got == expected, n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous
        assert all(start == 0 or body[start - 1:start] == b"\n" for start, _, _ in ranges)  # at line starts


def test_automatic_split_is_one_process_for_a_small_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDITQ_SUBMIT_PROCS", raising=False)
    get_settings.cache_clear()
    try:
        path = _lines_file(tmp_path / "small.jsonl", b"{}\n" * 1000)
        assert processes_for(path, None) == 1
        assert processes_for(path, 3) == 3
    finally:
        get_settings.cache_clear()


def test_a_file_split_across_processes_keeps_line_numbers(live: LocalStack, tmp_path: Path) -> None:
    (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())
    tag = unique("split")
    good = {"prompt": "make it blue", "images": ["mug.png"], "size": "auto", "quality": "low"}
    rows: list[bytes] = []
    bad: dict[int, str] = {}
    for i in range(1, 181):
        if i % 37 == 0:
            rows.append(json.dumps({**good, "size": "big", "custom_id": f"{tag}-bad-{i}"}).encode())
            bad[i] = "size: size must be 'auto'"
        elif i % 45 == 0:
            rows.append(b'{"prompt": "caf\xe9", "images": ["mug.png"]}')
            bad[i] = "not valid UTF-8 (byte 16)"
        elif i == 170:  # the same job as line 3 (its custom_id and everything): a duplicate
            rows.append(json.dumps({**good, "prompt": f"{tag} 3", "custom_id": f"{tag}-3"}).encode())
        else:
            rows.append(json.dumps({**good, "prompt": f"{tag} {i}", "custom_id": f"{tag}-{i}"}).encode())
    path = _lines_file(tmp_path / "batch.jsonl", b"\n".join(rows) + b"\n")

    report = submit_file(path, procs=3, keep_ids=True)

    assert [e.line for e in report.invalid] == sorted(bad)
    assert all(e.error.startswith(bad[e.line]) for e in report.invalid), report.invalid
    assert [e.custom_id for e in report.invalid if e.custom_id] == [f"{tag}-bad-{n}" for n in sorted(bad)
                                                                    if n % 37 == 0]
    assert len(report.duplicates) == 1 and report.duplicates[0][0] in (3, 170)
    assert report.enqueued == 180 - len(bad) - 1 == len(report.job_ids) == len(set(report.job_ids))
    store = JobStore()
    stored = [json.loads(x) for x in store.r.lrange(store.k.batch_errors(report.batch_id), 0, -1)]
    assert sorted(e["line"] for e in stored) == sorted(bad)
    assert sorted(store.r.lrange(store.k.batch_jobs(report.batch_id), 0, -1)) == sorted(report.job_ids)
    st = wait(report.batch_id, timeout=240)  # closed once every range was written, and it runs to its manifest
    assert st["total"] == report.enqueued and st["counts"] == {"succeeded": report.enqueued}
    assert st["invalid"] == len(bad)
