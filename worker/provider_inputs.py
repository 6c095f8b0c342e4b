"""The engine's input reader for protocols that send input bytes (OpenAI's multipart edits): our own S3,
read by key (not through presigned URLs, which may name a host only providers can reach), each blob
checked against the sha256 recorded at enqueue before anything is sent. Implements
`providers.openai.protocol.InputReader`; and the store of Oxen's converted masks (`StorageMasks`)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from editq.schemas.job import InputRecord
from editq.worker.errors import ErrorKind, ProviderError


class StorageInputs:
    def __init__(self, provider: str, storage: Any = None) -> None:
        self.provider = provider
        self._storage = storage

    @property
    def storage(self) -> Any:
        if self._storage is None:
            from editq.worker.storage import get_storage

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


class StorageMasks:
    """Oxen's converted mask (white = edit), stored content-addressed next to the inputs. Implements
    `providers.oxen.protocol.MaskStore`."""

    async def read(self, rec: InputRecord) -> bytes:
        from editq.worker.storage import get_storage

        try:
            return await asyncio.to_thread(get_storage().get_bytes, rec.s3_key)
        except Exception as exc:  # boto raises several types
            raise ProviderError(ErrorKind.retryable, f"oxen: could not read the mask from storage "
                                f"({type(exc).__name__})") from None

    async def put_png(self, data: bytes, sha256: str) -> str:
        from editq.worker.storage import get_storage

        storage = get_storage()
        key = storage.input_key(sha256, "png")
        try:
            if not await asyncio.to_thread(storage.exists, key):
                await asyncio.to_thread(storage.put_bytes, key, data, "image/png", sha256)
        except Exception as exc:
            raise ProviderError(ErrorKind.retryable, f"oxen: could not store the converted mask "
                                f"({type(exc).__name__})") from None
        return storage.presign(key)
