"""Where Oxen's converted mask is kept: editq's S3, content-addressed next to the inputs.

The protocol (providers/oxen/protocol.py) converts the canonical mask (alpha 0 = edit) to Oxen's
(white = edit) and needs the result at a URL Oxen can fetch. The client is the boundary for provider
requests; this is editq's own storage, so it lives here, behind `MaskStore`, and the protocol module
never imports storage.
"""

from __future__ import annotations

import asyncio

from schemas.job import InputRecord
from worker.errors import ErrorKind, ProviderError


class S3MaskStore:
    async def read(self, rec: InputRecord) -> bytes:
        from worker.storage import get_storage

        try:
            return await asyncio.to_thread(get_storage().get_bytes, rec.s3_key)
        except Exception as exc:  # boto raises several types
            raise ProviderError(ErrorKind.retryable, f"oxen: could not read the mask from storage "
                                f"({type(exc).__name__})") from None

    async def put_png(self, data: bytes, sha256: str) -> str:
        from worker.storage import get_storage

        storage = get_storage()
        key = storage.input_key(sha256, "png")
        try:
            if not await asyncio.to_thread(storage.exists, key):
                await asyncio.to_thread(storage.put_bytes, key, data, "image/png", sha256)
        except Exception as exc:
            raise ProviderError(ErrorKind.retryable, f"oxen: could not store the converted mask "
                                f"({type(exc).__name__})") from None
        return storage.presign(key)
