"""The engine's input reader for protocols that send input bytes (OpenAI's multipart edits): our own S3,
read by key (not through presigned URLs, which may name a host only providers can reach), each blob
checked against the sha256 recorded at enqueue before anything is sent. Implements
`providers.openai.protocol.InputReader`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from schemas.job import InputRecord
from worker.errors import ErrorKind, ProviderError


class StorageInputs:
    def __init__(self, provider: str, storage: Any = None) -> None:
        self.provider = provider
        self._storage = storage

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from worker.storage import get_storage

            self._storage = get_storage()
        return self._storage

    async def read(self, records: Sequence[InputRecord]) -> list[bytes]:
        storage = self.storage

        async def one(rec: InputRecord) -> bytes:
            try:
                blob: bytes = await asyncio.to_thread(storage.get_bytes, rec.s3_key)
            except Exception as exc:  # boto raises several types
                raise ProviderError(
                    ErrorKind.retryable, f"{self.provider}: could not read input {rec.s3_key} from storage "
                    f"({type(exc).__name__})"
                ) from None
            if hashlib.sha256(blob).hexdigest() != rec.sha256:
                raise ProviderError(ErrorKind.terminal,
                                    f"{self.provider}: input {rec.s3_key} does not match its sha256")
            return blob

        return list(await asyncio.gather(*(one(r) for r in records)))
