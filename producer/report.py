"""`editq report BATCH --out report/`: a static, self-contained report of a batch's A/B groups.

Reads the batch manifest (or, before the batch is finalized, each job from Redis), the review log, and
every output once to make a thumbnail; writes `index.html` (thumbnails only, lazily loaded; opens from
disk), `thumbs/`, and the PNG contact sheet(s). Making thumbnails is idempotent: a file already there
is not fetched again, so re-running the report after a review costs only the page.
"""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from PIL import Image

from editq.producer.report_model import Report, Thumb, build
from editq.producer.report_render import contact_sheets, render_html
from editq.producer.review_log import ReviewLog
from editq.worker.manifest import job_manifests
from editq.worker.state import JobStore
from editq.worker.storage import Storage, get_storage

THUMB_MAX = 384
MASK_TINT = (230, 0, 160)
THUMB_WORKERS = 8


@dataclass(frozen=True)
class ReportFiles:
    index: Path
    sheets: list[Path]
    thumbs: int
    missing: list[str] = field(default_factory=list)
    report: Report | None = None


def load_entries(batch_id: str, storage: Storage | None = None, store: JobStore | None = None) -> list[dict[str, Any]]:
    """The batch's job manifests, in enqueue order: the batch manifest when written, else each job from
    Redis (a job still running has only its request and state)."""
    storage = storage or get_storage()
    try:
        raw = storage.get_bytes(storage.batch_manifest_key(batch_id)).decode()
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound"):
            raise
    store = store or JobStore()
    r, k = store.r, store.k
    if not r.exists(k.batch(batch_id)):
        raise KeyError(f"no batch {batch_id!r} (no manifest in S3, nothing in Redis)")
    out: list[dict[str, Any]] = []
    total = r.llen(k.batch_jobs(batch_id))
    for start in range(0, total, 1000):
        ids = r.lrange(k.batch_jobs(batch_id), start, start + 999)
        views = [v for v in store.get_many(ids) if v is not None]
        finished = [v for v in views if v.compact or v.fields.get("manifest")]
        manifests = dict(zip((v.job_id for v in finished), job_manifests(store, storage, finished), strict=True))
        for view in views:
            if manifests.get(view.job_id):
                out.append(manifests[view.job_id])  # type: ignore[arg-type]
                continue
            if view.compact:  # finished, its manifest not found: what the compact record says
                out.append({"job_id": view.job_id, "batch_id": batch_id, "custom_id": view.custom_id,
                            "group": view.group, "variant": view.variant, "state": view.state.value,
                            "provider": view.provider, "job": {}, "inputs": [], "mask": None, "history": [],
                            "outputs": view.outputs()})
                continue
            job = view.job
            out.append({"job_id": job.job_id, "batch_id": batch_id, "custom_id": job.custom_id, "group": job.group,
                        "variant": job.variant, "state": view.state.value, "provider": view.provider,
                        "job": job.model_dump(mode="json", exclude={"inputs", "mask_input"}, exclude_none=True),
                        "inputs": [i.model_dump() for i in job.inputs],
                        "mask": job.mask_input.model_dump() if job.mask_input else None,
                        "history": [h.model_dump() for h in view.history], "outputs": []})
    return out


def _open(storage: Storage, key: str) -> Image.Image:
    im = Image.open(io.BytesIO(storage.get_bytes(key)))
    im.load()
    return im


def draw_mask(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with the mask's edit area (alpha 0) tinted magenta and outlined."""
    base = image.convert("RGB")
    alpha = mask.convert("RGBA").getchannel("A").resize(base.size, Image.Resampling.NEAREST)
    edit = alpha.point(lambda v: 140 if v == 0 else 0)
    tint = Image.new("RGB", base.size, MASK_TINT)
    return Image.composite(tint, base, edit)


def make_thumb(storage: Storage, thumb: Thumb, folder: Path) -> bool:
    """Write one thumbnail (JPEG, at most THUMB_MAX a side) unless it is there. False when the source is gone."""
    path = folder / thumb.path
    if path.exists():
        return True
    try:
        im = _open(storage, thumb.key)
        if thumb.mask_key:
            im = draw_mask(im, _open(storage, thumb.mask_key))
    except (ClientError, OSError, ValueError):
        return False
    im = im.convert("RGB")
    im.thumbnail((THUMB_MAX, THUMB_MAX))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    im.save(tmp, "JPEG", quality=82)
    os.replace(tmp, path)
    return True


def make_thumbs(report: Report, folder: Path, storage: Storage | None = None) -> tuple[int, list[str]]:
    storage = storage or get_storage()
    thumbs = report.thumbs()
    (folder / "thumbs").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(THUMB_WORKERS) as pool:
        done = list(pool.map(lambda t: make_thumb(storage, t, folder), thumbs))
    return sum(done), [t.key for t, ok in zip(thumbs, done, strict=True) if not ok]


def load_report(batch_id: str, storage: Storage | None = None) -> Report:
    storage = storage or get_storage()
    entries = load_entries(batch_id, storage)
    log = ReviewLog(storage, batch_id)
    log.load()
    return build(batch_id, entries, log.state())


def write_report(batch_id: str, out: Path, storage: Storage | None = None) -> ReportFiles:
    storage = storage or get_storage()
    report = load_report(batch_id, storage)
    out.mkdir(parents=True, exist_ok=True)
    made, missing = make_thumbs(report, out, storage)
    index = out / "index.html"
    index.write_text(render_html(report), encoding="utf-8")
    sheets = contact_sheets(report, out)
    return ReportFiles(index=index, sheets=sheets, thumbs=made, missing=missing, report=report)
