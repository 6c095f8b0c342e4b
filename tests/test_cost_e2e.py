"""Cost before and after, end to end: `editq estimate` (no Redis, no S3), then a batch with a budget run by the
session stack's worker against the sandbox: a job that does not fit waits visibly, `editq budget` releases it,
and every manifest, the batch's status and its summary agree on what it cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from editq import providers
from editq.producer.api import set_tenant_budget, status, submit_file, tenant_money, wait
from editq.producer.estimate import estimate_file, route_estimates
from editq.producer.stack import LocalStack
from editq.providers.pricing import to_micro
from editq.worker.state import MICRO
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, ROOT, unique, wait_for, write_jsonl

PROMPT = "Place this on an oak table in morning light"  # 43 characters


def _lines(tmp_path: Path) -> Path:
    for name in ("mug.png", "bottle.png"):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    return write_jsonl(tmp_path / "batch.jsonl", [
        {"custom_id": "a", "prompt": PROMPT, "images": ["mug.png"], "quality": "low"},
        {"custom_id": "b", "prompt": PROMPT, "images": ["bottle.png"], "quality": "low"},
        {"custom_id": "c", "prompt": PROMPT, "images": ["mug.png", "bottle.png"], "quality": "low"},
        {"custom_id": "d", "prompt": PROMPT, "images": ["mug.png"], "size": "3840x2160", "quality": "high",
         "provider": "wavespeed", "num_images": 1},
        {"custom_id": "bad", "prompt": PROMPT, "images": ["mug.png"], "size": "1000x1000"},
    ])


def _editq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "editq", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_estimate_validates_like_submit_and_touches_neither_redis_nor_s3(tmp_path: Path) -> None:
    path = _lines(tmp_path)
    # Redis and S3 at addresses where nothing answers: an estimate that touched either would fail
    env = {**os.environ, "EDITQ_REDIS_URL": "redis://127.0.0.1:9/0", "EDITQ_S3_ENDPOINT": "http://127.0.0.1:9",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    res = _editq("estimate", str(path), "--json", env=env)
    assert res.returncode == 2, res.stderr  # one invalid line
    data = json.loads(res.stdout)
    assert [(e["line"], e["custom_id"]) for e in data["invalid"]] == [(5, "bad")]
    assert "multiples of 16" in data["invalid"][0]["error"]
    fal, ws = data["providers"]["fal"], data["providers"]["wavespeed"]
    assert (fal["jobs"], fal["images"], ws["jobs"], ws["images"]) == (3, 3, 1, 1)
    # the figures are the price models' (checked against the published tables in test_pricing.py)
    providers.cache_clear()
    in_process = estimate_file(path).as_json()
    assert in_process["providers"] == data["providers"] and in_process["total"] == data["total"]
    one_input = 0.01 + (4000 * 8 + 11 * 5) / 1e6  # 1024x1024 low expected for size auto, 43 chars = 11 tokens
    two_inputs = 0.01 + (8000 * 8 + 11 * 5) / 1e6
    assert fal["expected_usd"] == round(2 * one_input + two_inputs, 4)
    worst = 3 * 0.02 + (16_000 * 8 + 3 * 43 * 5) / 1e6  # auto at worst 3840x2160; a token per character
    assert fal["worst_usd"] == round(worst, 4)
    assert ws["expected_usd"] == ws["worst_usd"] == 0.41  # 4k high, a flat price per run
    assert data["total"]["jobs"] == 4 and data["total"]["worst_usd"] == round(worst + 0.41, 4)
    # the table, and `submit --dry-run` prints the same without enqueuing anything
    table = _editq("submit", "--dry-run", str(path), env=env)
    assert table.returncode == 0, table.stderr
    assert "line 5 (bad)" in table.stderr
    total_line = next(ln for ln in table.stdout.splitlines() if ln.startswith("total"))
    assert total_line.split()[1:3] == ["4", "4"] and f"${worst + 0.41:,.2f}" in total_line


def test_a_budget_holds_waits_visibly_and_raising_it_finishes_the_batch(live: LocalStack, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [
        {"custom_id": f"j{i}", "prompt": f"{PROMPT} #{i}", "images": [str(EXAMPLES / "mug.png")], "quality": "low"}
        for i in range(3)
    ])
    worst = [route_estimates(j)["fal"].worst for j in _jobs(path)]  # type: ignore[union-attr]
    cap = round(sum(to_micro(w) for w in worst[:2]) / MICRO, 6)  # room for two jobs' worst case
    report = submit_file(path, max_cost=cap)
    assert report.enqueued == 3

    def two_done_one_waiting() -> dict | None:  # type: ignore[type-arg]
        st = status(report.batch_id)
        return st if st["counts"].get("succeeded") == 2 and st["budget_waiting"] == 1 else None

    st = wait_for(two_done_one_waiting, timeout=120, what="two jobs done, one waiting for money")
    assert st["max_cost_usd"] == cap and st["committed_usd"] <= cap
    assert st["budget_reason"].startswith(f"batch budget ${cap:.2f}: ")
    assert "this job needs up to" in st["budget_reason"]
    cli = subprocess.run([sys.executable, "-m", "editq", "status", report.batch_id], cwd=ROOT,
                         env={**os.environ}, capture_output=True, text=True, timeout=60)
    assert "waiting for budget: 1 job(s): batch budget" in cli.stdout, cli.stdout + cli.stderr
    # raising the budget (the command) releases it
    raised = subprocess.run([sys.executable, "-m", "editq", "budget", report.batch_id, "--max-cost", "1"],
                            cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=60)
    assert raised.returncode == 0, raised.stderr
    assert "of $1.00 (--on-budget wait)" in raised.stdout and "released 1 waiting job(s)" in raised.stdout
    final = wait(report.batch_id, timeout=120)
    assert final["counts"] == {"succeeded": 3}
    storage = get_storage()
    lines = [json.loads(x) for x in storage.get_bytes(storage.batch_manifest_key(report.batch_id)).splitlines()]
    model = providers.price_model_of("fal")
    assert model is not None
    total = 0
    for m in lines:
        assert m["cost_source"] == "estimate"  # fal reports no cost
        produced = [(o["width"], o["height"]) for o in m["outputs"]]
        job = next(j for j in _jobs(path) if j.custom_id == m["custom_id"])
        assert m["cost_usd"] == to_micro(model.actual(job, produced)) / MICRO
        total += to_micro(m["cost_usd"])
    assert final["cost_usd"] == final["committed_usd"] == total / MICRO  # nothing in flight, nothing leaked
    summary = json.loads(storage.get_bytes(storage.batch_summary_key(report.batch_id)))
    assert summary["cost_usd"] == total / MICRO and summary["max_cost_usd"] == 1.0
    assert summary["counts"] == {"succeeded": 3}


def _jobs(path: Path) -> list:  # type: ignore[type-arg]
    """The file's jobs as submit prepares them (dry: nothing stored), for their prices."""
    from editq.producer.api import Enqueuer

    enq = Enqueuer(unique("est"), path.parent, dry=True)
    return [j for line in path.read_text().splitlines() if line.strip() for j in enq.prepare_line(line, None)]


@pytest.mark.parametrize("bad", ["-1"])
def test_submit_refuses_a_negative_budget(bad: str, tmp_path: Path) -> None:
    path = _lines(tmp_path)
    res = _editq("submit", "--max-cost", bad, str(path), env={**os.environ})
    assert res.returncode == 2 and "max-cost" in res.stderr


def test_tenant_budgets_are_shown_and_set_by_the_command(live: LocalStack) -> None:
    tenant = unique("t").replace("-", "_")
    res = subprocess.run([sys.executable, "-m", "editq", "budget", "--tenant", tenant, "--max-cost", "12.5"],
                         cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"tenant {tenant} on " in res.stdout and "$0.00 committed of $12.50; 0 job(s) waiting" in res.stdout
    assert tenant_money(tenant)["max_cost_usd"] == 12.5
    assert set_tenant_budget(tenant, None)["max_cost_usd"] is None  # back to the settings (none here)
    bad = subprocess.run([sys.executable, "-m", "editq", "budget"], cwd=ROOT, env={**os.environ},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "name a batch id or --tenant NAME" in bad.stderr
