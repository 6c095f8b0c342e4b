"""The A/B commands as a user types them: submit --variants, status per group, report, continue --dry-run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from editq.producer.api import wait
from editq.producer.cli import app
from editq.producer.review_log import ReviewLog
from editq.producer.review_state import Decision
from editq.producer.stack import LocalStack
from tests.conftest import unique, write_jsonl
from tests.e2e import copy_examples

runner = CliRunner()


def test_submit_variants_status_report_and_continue_from_the_command_line(live: LocalStack, tmp_path: Path) -> None:
    from editq.worker.storage import get_storage

    tag = unique("cli")
    copy_examples(tmp_path, ("mug.png", "bottle.png"))
    path = write_jsonl(tmp_path / "b.jsonl", [
        {"custom_id": f"{tag}-mug", "prompt": f"{tag} on oak", "images": ["mug.png"], "quality": "low"},
        {"custom_id": f"{tag}-bottle", "prompt": f"{tag} on stones", "images": ["bottle.png"], "quality": "low",
         "variants": [{"label": "x"}, {"label": "y", "quality": "medium"}, {"label": "z"}]},
    ])
    res = runner.invoke(app, ["submit", "--variants", "2", str(path)])
    assert res.exit_code == 0, res.output
    batch = res.stdout.strip().splitlines()[-1]
    assert "enqueued 5," in res.output  # 2 samples of the plain line, the 3 listed variants of the other
    wait(batch, timeout=120, interval=0.2)

    res = runner.invoke(app, ["status", batch])
    assert res.exit_code == 0, res.output
    assert f"  {tag}-mug: 2 variants (succeeded 2)" in res.stdout
    assert f"  {tag}-bottle: 3 variants (succeeded 3)" in res.stdout

    # the report reads each job from Redis while the batch manifest is not there (a batch still running)
    storage = get_storage()
    storage.client.delete_object(Bucket=storage.bucket, Key=storage.batch_manifest_key(batch))
    res = runner.invoke(app, ["report", batch, "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    index = Path(res.stdout.strip().splitlines()[-1])
    assert index == (tmp_path / "rep" / "index.html").resolve() and (tmp_path / "rep" / "contact-sheet.png").exists()
    html = index.read_text()
    assert len(re.findall(r'<figure class="cell state-succeeded', html)) == 5
    assert html.count('<section class="row"') == 2

    jobs = {m["custom_id"]: m for m in _redis_manifests(batch)}
    picked = jobs[f"{tag}-bottle-y"]
    ReviewLog(storage, batch).append([Decision(action="pick", job_id=picked["job_id"], group=picked["group"], at=1.0,
                                               by="cli@test", label="y")])
    res = runner.invoke(app, ["continue", batch, "--picked", "--dry-run", "--set", "quality=high", "size=1024x1536"])
    assert res.exit_code == 0, res.output
    (line,) = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert "follow-up of 1 picked variant(s), estimated:" in res.stderr and "total" in res.stderr
    assert (line["parent_job_id"], line["quality"], line["size"], line["variant"]) == (
        picked["job_id"], "high", "1024x1536", "y")
    res = runner.invoke(app, ["continue", batch, "--approved", "--picked"])
    assert res.exit_code == 2 and "choose one" in res.output
    res = runner.invoke(app, ["continue", batch, "--picked", "--set", "images=x.png"])
    assert res.exit_code == 2 and "cannot change it in a follow-up" in res.output
    for command in (["report", "batch_nope", "--out", str(tmp_path / "x")], ["continue", "batch_nope", "--picked"]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1 and "no batch 'batch_nope'" in res.output, res.output


def _redis_manifests(batch: str) -> list[dict]:  # type: ignore[type-arg]
    from editq.producer.report import load_entries

    entries = load_entries(batch)
    assert entries and all(e["state"] == "succeeded" for e in entries)
    return entries


def test_editq_review_serves_the_grid_and_saves_decisions(live: LocalStack, variant_batch: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import httpx

    from editq.producer.stack import free_port
    from tests.conftest import wait_for

    port = free_port()
    env = {**os.environ, **live.env, "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "editq", "review", variant_batch, "--port", str(port),
                             "--reviewer", "proc@test"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"

        def up() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60, what="editq review")
        page = httpx.get(url, timeout=10).text
        assert page.count("<figure class=\"cell") == 9 and "api/decide" in page
        job = read_job(variant_batch, "sneaker-s1")
        ok = httpx.post(url + "api/decide", json={"action": "approve", "job_id": job}, timeout=10)
        assert ok.status_code == 200 and ok.json()["jobs"][job] == "approved"
        forged = httpx.post(url + "api/decide", json={"action": "reject", "job_id": job}, timeout=10,
                            headers={"origin": "https://evil.example"})
        assert forged.status_code == 403
        last = ReviewLog(_storage(), variant_batch).load()[-1]
        assert (last.action, last.job_id, last.by) == ("approve", job, "proc@test")
        assert list((tmp_path / "editq" / "review" / variant_batch / "thumbs").iterdir())
    finally:
        proc.terminate()
        proc.wait(20)


def read_job(batch: str, custom_id: str) -> str:
    from tests.e2e import manifests_by_cid

    return str(manifests_by_cid(batch)[custom_id]["job_id"])


def _storage():  # type: ignore[no-untyped-def]
    from editq.worker.storage import get_storage

    return get_storage()
