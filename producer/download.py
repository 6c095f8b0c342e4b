"""Copy a batch's outputs and manifests from S3 to a local folder: in parallel, verified, resumable.

* Every output a job manifest lists is streamed to a temporary file next to its target while its sha256
  is computed, compared with the manifest's, and only then renamed into place; a mismatch is reported
  and nothing is left at the target.
* A target that already holds a file with the manifest's sha256 is skipped (a second run after an
  interruption fetches only what is missing or different).
* `name="job"` keeps S3's layout (`{batch}/{job_id}/{n}.{ext}`, `{job_id}/manifest.json`);
  `name="custom_id"` writes `{batch}/{custom_id}.{ext}` (`{custom_id}-{n}.{ext}` for a job with several
  images) and `{batch}/manifests/{custom_id}.json`; a job without custom_id, or whose custom_id another
  job of the batch already took, is named by its job id.
* Batch-level files (`manifest.jsonl`, `rejected.jsonl`, `reruns.json`) are copied as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from editq.worker.storage import Storage, get_storage

Naming = Literal["job", "custom_id"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class DownloadReport:
    written: int = 0  # files written (each output verified against its manifest's sha256)
    skipped: int = 0  # already present with the same sha256
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, why)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class _Item:
    key: str
    target: Path
    sha256: str | None  # None: a manifest or batch file, copied as is


def safe_name(text: str) -> str:
    name = _UNSAFE.sub("_", text).strip("._") or "_"
    return name[:200]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plan(batch_id: str, manifests: list[dict[str, Any]], others: list[str], folder: Path, prefix: str,
          name: Naming) -> list[_Item]:
    items: list[_Item] = []
    taken: set[str] = set()
    for m in manifests:
        jid = m["job_id"]
        cid = m.get("custom_id")
        base = safe_name(cid) if name == "custom_id" and cid else None
        if base is None or base in taken:
            base = jid if name == "custom_id" else None
        if base is not None:
            taken.add(base)
        outputs = m.get("outputs") or []
        for out in outputs:
            ext = out["key"].rsplit(".", 1)[-1]
            if base is None:
                target = folder / out["key"][len(prefix):]
            else:
                target = folder / (f"{base}.{ext}" if len(outputs) == 1 else f"{base}-{out['index']}.{ext}")
            items.append(_Item(out["key"], target, out["sha256"]))
        mkey = f"{prefix}{jid}/manifest.json"
        items.append(_Item(mkey, folder / "manifests" / f"{base}.json" if base else folder / mkey[len(prefix):], None))
    items += [_Item(k, folder / k[len(prefix):], None) for k in others]
    return items


def _fetch(storage: Storage, item: _Item) -> tuple[str, str | None]:
    """Download one item; returns ("written" | "skipped" | "failed", why)."""
    if item.sha256 and item.target.exists() and file_sha256(item.target) == item.sha256:
        return "skipped", None
    item.target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=item.target.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as fh:
            body = storage.client.get_object(Bucket=storage.bucket, Key=item.key)["Body"]
            for chunk in body.iter_chunks(1 << 20):
                h.update(chunk)
                fh.write(chunk)
        if item.sha256 and h.hexdigest() != item.sha256:
            return "failed", f"sha256 {h.hexdigest()} does not match the manifest's {item.sha256}"
        os.replace(tmp, item.target)
        tmp = ""
        return "written", None
    except Exception as exc:  # one file's failure is reported; the others go on
        return "failed", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def download_batch(batch_id: str, dest: Path, *, name: Naming = "job", workers: int = 8,
                   storage: Storage | None = None) -> DownloadReport:
    """Download a batch's outputs (verified) and manifests to `dest/batch_id/`."""
    storage = storage or get_storage()
    prefix = f"{storage.settings.s3_prefix}/{batch_id}/"
    keys = storage.list_keys(prefix)
    manifest_keys = [k for k in keys if k.endswith("/manifest.json") and k.count("/") == prefix.count("/") + 1]
    others = [k for k in keys if k.count("/") == prefix.count("/")]  # batch-level files
    folder = dest / batch_id
    written = skipped = 0
    failed: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        manifests = []
        for key, raw in zip(manifest_keys, pool.map(storage.get_bytes, manifest_keys), strict=True):
            try:
                manifests.append(json.loads(raw))
            except ValueError:
                failed.append((key, "not valid JSON"))
        items = _plan(batch_id, manifests, others, folder, prefix, name)
        for item, (result, why) in zip(items, pool.map(lambda it: _fetch(storage, it), items), strict=True):
            if result == "written":
                written += 1
            elif result == "skipped":
                skipped += 1
            else:
                failed.append((item.key, why or "failed"))
    return DownloadReport(written=written, skipped=skipped, failed=failed)
