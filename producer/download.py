"""Copy a batch's outputs and manifests from S3 to a local folder."""

from __future__ import annotations

from pathlib import Path

from worker.storage import get_storage


def download_batch(batch_id: str, dest: Path) -> int:
    storage = get_storage()
    prefix = f"{storage.settings.s3_prefix}/{batch_id}/"
    n = 0
    for key in storage.list_keys(prefix):
        target = dest / batch_id / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        storage.client.download_file(storage.bucket, key, str(target))
        n += 1
    return n
