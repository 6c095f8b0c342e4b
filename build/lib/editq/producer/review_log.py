"""`review.jsonl` in S3, beside the batch manifest: read it, append decisions to it.

S3 has no append, so an append rewrites the object; each write is conditional on the version read
(`If-Match` on its ETag, `If-None-Match: *` for the first), and on a conflict (another reviewer wrote
meanwhile) the log is read again and the new lines are added after what is there: no decision is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from botocore.exceptions import ClientError

from editq.producer.review_state import Decision, ReviewState, parse_log, replay
from editq.worker.storage import Storage

CONFLICT_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def review_key(storage: Storage, batch_id: str) -> str:
    return f"{storage.settings.s3_prefix}/{batch_id}/review.jsonl"


class ReviewLog:
    def __init__(self, storage: Storage, batch_id: str) -> None:
        self.storage = storage
        self.key = review_key(storage, batch_id)
        self._lock = threading.Lock()
        self._text = ""
        self._etag: str | None = None
        self.decisions: list[Decision] = []

    def load(self) -> list[Decision]:
        with self._lock:
            self._read()
            return list(self.decisions)

    def _read(self) -> None:
        try:
            obj = self.storage.client.get_object(Bucket=self.storage.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                self._text, self._etag, self.decisions = "", None, []
                return
            raise
        self._text = obj["Body"].read().decode("utf-8", errors="replace")
        self._etag = obj.get("ETag")
        self.decisions = parse_log(self._text)

    def append(self, new: Sequence[Decision], attempts: int = 5) -> None:
        """Add `new` at the end of the log in S3 (and here)."""
        if not new:
            return
        lines = "".join(d.to_json() + "\n" for d in new)
        with self._lock:
            for _ in range(attempts):
                body = (self._text + ("" if not self._text or self._text.endswith("\n") else "\n") + lines)
                client, kw = self.storage.client, {"Bucket": self.storage.bucket, "Key": self.key,
                                                   "Body": body.encode(), "ContentType": "application/x-ndjson"}
                try:
                    if self._etag:
                        res = client.put_object(**kw, IfMatch=self._etag)  # type: ignore[arg-type]
                    else:
                        res = client.put_object(**kw, IfNoneMatch="*")  # type: ignore[arg-type]
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") in CONFLICT_CODES:
                        self._read()  # someone else wrote: add ours after theirs
                        continue
                    raise
                self._text, self._etag = body, res.get("ETag")
                self.decisions = parse_log(body)
                return
            raise RuntimeError(f"review.jsonl kept changing under us ({attempts} attempts); decisions not saved")

    def state(self) -> ReviewState:
        return replay(self.decisions)
