"""`Storage.put_async` on editq's own client: a body of up to one block goes as bytes, a bigger one is streamed
in blocks; both arrive whole, with their Content-Length, at the real S3 server."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator

import pytest

from editq.producer.stack import LocalStack
from editq.worker import aio
from editq.worker.storage import CHUNK, SPOOL_MEMORY, get_storage
from tests.conftest import unique


@pytest.fixture(scope="module")
def bare() -> Iterator[LocalStack]:
    with LocalStack(workers=0, webhooks=False) as s:
        yield s


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, SPOOL_MEMORY + 3 * CHUNK + 5])
def test_a_spooled_body_of_any_size_is_stored_whole(bare: LocalStack, size: int) -> None:
    bare.apply_env()
    storage = get_storage()
    data = os.urandom(size)
    key = f"tests/{unique('put')}.bin"
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
        spool.write(data)
        spool.seek(size // 2)  # wherever the caller left it

        async def put() -> None:
            await storage.put_async(aio.http_client(), key, spool, "application/octet-stream", {"sha256": "x"})

        aio.run(put())
    assert storage.get_bytes(key) == data
    aio.run(storage.put_async(aio.http_client(), key, io.BytesIO(data).getvalue(), "application/octet-stream"))
    assert storage.get_bytes(key) == data
