"""The engine side of OpenAI Batch: what every worker shares about a provider batch, on Redis, and the
staging of decoded output images, on S3. Implements `providers.openai_batch.protocol.BatchStore`.

Keys (all `worker.keys.Keys` methods, kept `results_ttl_s`): `oaib_meta` (line count), `oaib_status`
(the shared `GET /batches/{id}` answer, `status_ttl_s`), `oaib_results` (custom_id -> record),
`oaib_lock` (the ingest lock, a token with a lease), `oaib_ingested` (set once both files were read
whole), `oaib_cancelled` (custom_ids cancelled by editq).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

from editq.worker.keys import Keys


class RedisBatchStore:
    def __init__(self, *, results_ttl_s: int, redis: Any = None, storage: Any = None, keys: Keys | None = None
                 ) -> None:
        self.ttl_s = results_ttl_s
        self._redis = redis
        self._storage = storage
        self._keys = keys

    # ---- collaborators (lazy: the protocol is loaded by processes that never poll) ----------------------
    @property
    def redis(self) -> Any:
        if self._redis is None:
            from editq.worker.redis_client import get_redis

            self._redis = get_redis()
        return self._redis

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from editq.worker.storage import get_storage

            self._storage = get_storage()
        return self._storage

    @property
    def k(self) -> Keys:
        if self._keys is None:
            from editq.worker.keys import keys

            self._keys = keys()
        return self._keys

    # ---- BatchStore -------------------------------------------------------------------------------------
    def remember(self, batch_id: str, lines: int) -> None:
        key = self.k.oaib_meta(batch_id)
        now = time.time()
        self.redis.hset(key, mapping={"lines": lines, "created_at": repr(now)})
        self.redis.expire(key, self.ttl_s)
        self.redis.zadd(self.k.oaib_open, {batch_id: now})

    def open_batches(self, horizon_s: float) -> int:
        """Provider batches created in the last `horizon_s` whose files were not read back yet (older entries,
        e.g. of a batch whose every job was cancelled and never polled again, are dropped)."""
        self.redis.zremrangebyscore(self.k.oaib_open, "-inf", time.time() - horizon_s)
        return int(self.redis.zcard(self.k.oaib_open))

    def records(self, batch_id: str, custom_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        raw = self.redis.hmget(self.k.oaib_results(batch_id), list(custom_ids)) if custom_ids else []
        return [json.loads(r) if r else None for r in raw]

    def recorded(self, batch_id: str) -> set[str]:
        return {k.decode() if isinstance(k, bytes) else str(k) for k in self.redis.hkeys(self.k.oaib_results(batch_id))}

    def record(self, batch_id: str, custom_id: str, rec: dict[str, Any]) -> None:
        key = self.k.oaib_results(batch_id)
        self.redis.hset(key, custom_id, json.dumps(rec))
        self.redis.expire(key, self.ttl_s)

    def cached_status(self, batch_id: str) -> dict[str, Any] | None:
        cached = self.redis.get(self.k.oaib_status(batch_id))
        if not cached:
            return None
        data = json.loads(cached)
        return data if isinstance(data, dict) else None

    def cache_status(self, batch_id: str, batch: dict[str, Any], ttl_s: float) -> None:
        self.redis.set(self.k.oaib_status(batch_id), json.dumps(batch), px=max(1, int(ttl_s * 1000)))

    def ingested(self, batch_id: str) -> str | None:
        value = self.redis.get(self.k.oaib_ingested(batch_id))
        return None if value is None else (value.decode() if isinstance(value, bytes) else str(value))

    def mark_ingested(self, batch_id: str, status: str) -> None:
        self.redis.set(self.k.oaib_ingested(batch_id), status, ex=self.ttl_s)
        self.redis.zrem(self.k.oaib_open, batch_id)

    def lock(self, batch_id: str, lease_s: float) -> str | None:
        token = secrets.token_hex(8)
        if not self.redis.set(self.k.oaib_lock(batch_id), token, nx=True, px=int(lease_s * 1000)):
            return None
        return token

    def keep_lock(self, batch_id: str, token: str, lease_s: float) -> bool:
        key = self.k.oaib_lock(batch_id)
        if self._text(self.redis.get(key)) != token:
            return False
        self.redis.pexpire(key, int(lease_s * 1000))
        return True

    def unlock(self, batch_id: str, token: str) -> None:
        key = self.k.oaib_lock(batch_id)
        if self._text(self.redis.get(key)) == token:
            self.redis.delete(key)

    def cancel_line(self, batch_id: str, custom_id: str) -> bool:
        key = self.k.oaib_cancelled(batch_id)
        self.redis.sadd(key, custom_id)
        self.redis.expire(key, self.ttl_s)
        lines = int(self.redis.hget(self.k.oaib_meta(batch_id), "lines") or 0)
        return bool(lines) and self.redis.scard(key) >= lines

    async def stage(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self.storage.put_bytes, key, data, content_type)

    def output_url(self, key: str) -> str:
        """A GET URL on the storage endpoint the workers use (not the providers' public one)."""
        s = self.storage
        url: str = s.client.generate_presigned_url(
            "get_object", Params={"Bucket": s.bucket, "Key": key}, ExpiresIn=s.settings.presign_ttl_s
        )
        return url

    def input_url(self, key: str, ttl_s: int) -> str:
        """Storage.presign (signed for the host providers reach S3 by), with the batch's lifetime."""
        url: str = self.storage.presign(key, ttl_s=ttl_s)
        return url

    @staticmethod
    def _text(value: Any) -> str | None:
        return value.decode() if isinstance(value, bytes) else value
