"""The spine end to end on real parts: Redis, S3 over HTTP (moto server), the sandbox over HTTP,
the webhook receiver and a Celery worker, all as separate processes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image

from editq.producer.api import status, submit, submit_batch, submit_file, wait
from editq.producer.stack import LocalStack
from editq.schemas.variants import parse_line
from editq.worker.storage import get_storage
from tests.conftest import EXAMPLES, sandbox_requests, sha256, unique, write_jsonl


def _manifests(batch_id: str) -> list[dict]:  # type: ignore[type-arg]
    storage = get_storage()
    raw = storage.get_bytes(storage.batch_manifest_key(batch_id)).decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def test_sample_batch_completes_with_verified_outputs(live: LocalStack) -> None:
    report = submit_file(EXAMPLES / "batch.jsonl")
    # the one deliberately invalid line is reported with its number; nothing else is lost
    assert [(e.line, e.custom_id) for e in report.invalid] == [(8, "watch-002")]
    assert "multiples of 16" in report.invalid[0].error and report.invalid[0].error.startswith("variant notebook: ")
    lines = [ln for ln in (EXAMPLES / "batch.jsonl").read_text().splitlines() if ln.strip()]
    expected = sum(len(parse_line(ln)) for ln in lines) - 2  # the invalid line had two variants
    assert report.enqueued == expected >= 24

    final = wait(report.batch_id, timeout=180)
    assert final["counts"] == {"succeeded": report.enqueued}

    manifests = _manifests(report.batch_id)
    assert sorted(m["job_id"] for m in manifests) == sorted(report.job_ids)
    storage = get_storage()
    n_outputs = 0
    for m in manifests:
        assert m["state"] == "succeeded" and m["provider_request_id"]
        assert m["provider"] == ("fal" if m["group"] != "bottle-001" else m["custom_id"].rsplit("-", 1)[1])
        assert [h["state"] for h in m["history"]][-1] == "succeeded"
        assert len(m["outputs"]) == m["job"]["num_images"]
        for out in m["outputs"]:
            body = storage.get_bytes(out["key"])
            assert sha256(body) == out["sha256"] and len(body) == out["bytes"]
            with Image.open(io.BytesIO(body)) as im:
                assert (im.width, im.height) == (out["width"], out["height"])
                assert im.format.lower() == out["content_type"].split("/")[1]
            n_outputs += 1
        # the job's own manifest in S3 matches the batch line
        own = json.loads(storage.get_bytes(storage.manifest_key(m["batch_id"], m["job_id"])))
        assert own["outputs"] == m["outputs"]
    assert n_outputs >= report.enqueued

    by_cid = {m["custom_id"]: m for m in manifests}
    # several reference images are fetched once, hashed and recorded
    multi = [m for m in manifests if len(m["inputs"]) >= 3]
    assert multi and all(i["sha256"] and i["width"] > 0 and i["format"] in ("png", "jpeg", "webp")
                         for i in multi[0]["inputs"])
    # the masked edit changed no pixel outside the mask
    masked = by_cid["mug-label-001-lemon"]
    out = Image.open(io.BytesIO(storage.get_bytes(masked["outputs"][0]["key"]))).convert("RGB")
    # size auto on a 512x512 input: the nearest size GPT Image 2 makes (at least 655,360 pixels), 816x816;
    # the source scaled to it (Lanczos) and the mask by nearest neighbour, as the sandbox's engine does
    assert out.size == (816, 816)
    src = Image.open(EXAMPLES / "mug.png").convert("RGB").resize(out.size, Image.Resampling.LANCZOS)
    mask = Image.open(EXAMPLES / "mask_mug.png").convert("RGBA").resize(out.size, Image.Resampling.NEAREST)
    alpha = mask.getchannel("A").tobytes()
    src_px, out_px = src.tobytes(), out.tobytes()
    kept = edited = changed_inside = 0
    for i, a in enumerate(alpha):
        same = src_px[3 * i : 3 * i + 3] == out_px[3 * i : 3 * i + 3]
        if a != 0:
            kept += 1
            assert same, f"pixel {i} outside the mask changed"
        else:
            edited += 1
            changed_inside += not same
    assert kept and edited and changed_inside > edited // 2, (kept, edited, changed_inside)


def test_same_batch_twice_runs_each_job_once(live: LocalStack, tmp_path: Path) -> None:
    tag = unique("twice")
    rows = [{"custom_id": f"{tag}-{i}", "prompt": f"{tag} studio shot #{i}", "images": ["mug.png"],
             "quality": "low"} for i in range(3)]
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())
    first = submit_file(path)
    second = submit_file(path)
    assert first.enqueued == 3 and not first.duplicates
    assert second.enqueued == 0
    assert sorted(j for _, j in second.duplicates) == sorted(first.job_ids)
    wait(first.batch_id, timeout=120)
    submitted = [r for r in sandbox_requests(live) if tag in json.dumps(r.get("input"))]
    assert len(submitted) == 3
    storage = get_storage()
    for jid in first.job_ids:
        keys = storage.list_keys(f"{storage.settings.s3_prefix}/{first.batch_id}/{jid}/")
        assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["0.png", "manifest.json"]


def test_python_api_single_job_and_status(live: LocalStack) -> None:
    tag = unique("api")
    job_id = submit({"prompt": f'Add the words "{tag}"', "images": [str(EXAMPLES / "bottle.png")],
                     "output_format": "jpeg", "quality": "low", "priority": "interactive"})
    st = wait(job_id, timeout=90)
    assert st["state"] == "succeeded" and st["outputs"][0]["content_type"] == "image/jpeg"
    assert [h["state"] for h in st["history"]] == ["queued", "submitting", "submitted", "ready", "collecting",
                                                  "succeeded"]
    assert status(st["batch_id"])["counts"] == {"succeeded": 1}


def test_bad_lines_reported_by_number_rest_proceeds(live: LocalStack, tmp_path: Path) -> None:
    tag = unique("bad")
    (tmp_path / "mug.png").write_bytes((EXAMPLES / "mug.png").read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    rows: list[dict | str] = [
        {"custom_id": f"{tag}-ok1", "prompt": f"{tag} one", "images": ["mug.png"], "quality": "low"},
        "{not json",
        {"custom_id": f"{tag}-noimg", "prompt": "x", "images": []},
        {"custom_id": f"{tag}-txt", "prompt": "x", "images": ["notes.txt"]},
        {"custom_id": f"{tag}-n5", "prompt": "x", "images": ["mug.png"], "num_images": 5},
        {"custom_id": f"{tag}-ok2", "prompt": f"{tag} two", "images": ["mug.png"], "quality": "low"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    proc = subprocess.run([sys.executable, "-m", "editq", "submit", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # lines were refused (the rest is enqueued)
    err = proc.stderr
    assert "line 2: not valid JSON" in err
    assert f"line 3 ({tag}-noimg): images: List should have at least 1 item" in err
    assert f"line 4 ({tag}-txt): images[0]: notes.txt is not a readable image" in err
    assert f"line 5 ({tag}-n5): fal: num_images=5 is not allowed; allowed values: 1 to 4" in err
    assert "enqueued 2, duplicates 0, invalid 4" in err
    batch_id = proc.stdout.strip().splitlines()[-1]
    final = wait(batch_id, timeout=120)
    assert final["counts"] == {"succeeded": 2} and final["invalid"] == 4
    storage = get_storage()
    rejected = storage.get_bytes(f"{storage.settings.s3_prefix}/{batch_id}/rejected.jsonl").decode()
    assert [json.loads(x)["line"] for x in rejected.splitlines()] == [2, 3, 4, 5]

    strict = subprocess.run([sys.executable, "-m", "editq", "submit", "--strict", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2 and "nothing enqueued" in strict.stderr


def test_strict_api_refuses_whole_batch(live: LocalStack) -> None:
    rows = [{"prompt": "fine", "images": [str(EXAMPLES / "mug.png")]},
            {"prompt": "", "images": [str(EXAMPLES / "mug.png")]}]
    report = submit_batch(lambda: rows, strict=True)
    assert report.refused and report.enqueued == 0
    assert [(e.line, e.error) for e in report.invalid] == [(2, "prompt: String should have at least 1 character")]


def test_first_lines_reach_redis_before_the_rest_is_read(live: LocalStack) -> None:
    """Dispatch can start on a big file while it is still being read: the first FIRST_CHUNK lines are
    written (and the workers woken) before line FIRST_CHUNK + 10 is even produced."""
    from editq.producer.api import CHUNK, FIRST_CHUNK, new_id
    from editq.worker.state import JobStore

    assert FIRST_CHUNK < CHUNK
    store, batch, tag = JobStore(), new_id("batch"), unique("first")
    seen: dict[str, int] = {}

    def lines() -> Iterator[dict[str, object]]:
        for i in range(FIRST_CHUNK + 20):
            if i == FIRST_CHUNK + 10:
                seen["total"] = store.batch_counts(batch).get("total", 0)
            yield {"prompt": f"{tag} {i}", "images": [str(EXAMPLES / "mug.png")], "quality": "low"}

    report = submit_batch(lines(), batch_id=batch)
    assert seen["total"] == FIRST_CHUNK
    assert report.enqueued == FIRST_CHUNK + 20 and store.batch_counts(batch)["total"] == FIRST_CHUNK + 20


def test_embedded_s3_sends_no_cors_headers(live: LocalStack) -> None:
    """producer/s3_local.py runs moto with CORS off (no browser talks to it; a header fewer per request)."""
    resp = httpx.get(live.env["EDITQ_S3_ENDPOINT"] + "/", headers={"Origin": "http://example.invalid"}, timeout=10)
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
