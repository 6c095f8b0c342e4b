"""Generated outputs on disk, served at ``/files/{id}.{ext}`` (a stand-in for a provider CDN).

Writes happen on render worker threads. A file up to ``SMALL_FILE`` bytes is read and answered in
one piece on the event loop (from the page cache: microseconds, where handing the read to a thread
cost more than the read); bigger ones are streamed with Starlette's ``FileResponse``.

Inputs can be hosted on the sandbox too: ``POST /files/upload`` (raw bytes) answers
``{"access_url": ...}`` (shape of fal's CDN v3 upload), and ``PUT /files/{id}.{ext}`` fills an
``upload_url`` handed out by a provider's storage emulation.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from editq.sandbox.engine import sniff_image_type

MEDIA_TYPES: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "avif": "image/avif",
    "bin": "application/octet-stream",
}
SMALL_FILE = 1 << 20
_NAME = re.compile(r"^([0-9a-f]{32})\.([a-z]{3,4})$")


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    ext: str
    size: int

    @property
    def name(self) -> str:
        return f"{self.file_id}.{self.ext}"

    @property
    def content_type(self) -> str:
        return MEDIA_TYPES.get(self.ext, "application/octet-stream")

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/files/{self.name}"


class FileStore:
    """Thread-safe store of output files in one directory (a temp dir unless given)."""

    def __init__(self, directory: str | None = None) -> None:
        self._owned = directory is None
        self.root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="editq-sandbox-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._cache_dir = self.root / "_cache"
        self._cache_dir.mkdir(exist_ok=True)
        self._cache_lock = threading.Lock()

    def put(self, data: bytes, ext: str) -> StoredFile:
        return self.put_named(uuid.uuid4().hex, ext, data)

    def put_named(self, file_id: str, ext: str, data: bytes) -> StoredFile:
        """Store under a pre-announced id (see :meth:`reserve`)."""
        stored = StoredFile(file_id, ext, len(data))
        tmp = self.root / f".{stored.name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.root / stored.name)
        return stored

    @staticmethod
    def reserve(ext: str) -> StoredFile:
        """A fresh file id for an upload that will arrive later by PUT."""
        return StoredFile(uuid.uuid4().hex, ext, 0)

    def put_cached(self, key: str, ext: str, produce: Callable[[], bytes]) -> StoredFile:
        """A new file with the bytes cached under ``key`` (produced once; hard-linked when possible)."""
        cached = self._cache_dir / f"{key}.{ext}"
        with self._cache_lock:
            if not cached.exists():
                tmp = self._cache_dir / f".{key}.{ext}.tmp"
                tmp.write_bytes(produce())
                os.replace(tmp, cached)
        stored = StoredFile(uuid.uuid4().hex, ext, cached.stat().st_size)
        target = self.root / stored.name
        try:
            os.link(cached, target)
        except OSError:
            shutil.copyfile(cached, target)
        return stored

    def path_for(self, name: str) -> Path | None:
        if not _NAME.match(name):
            return None
        path = self.root / name
        return path if path.is_file() else None

    @staticmethod
    def read_small(path: Path) -> bytes | None:
        """The file's bytes if it holds at most SMALL_FILE, else None (stream it instead)."""
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size > SMALL_FILE:
                return None
            return fh.read()

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


def files_router(
    store: FileStore, base_url: Callable[[Request], str], max_upload_bytes: Callable[[], int]
) -> APIRouter:
    router = APIRouter(tags=["files"])

    @router.api_route("/files/{name}", methods=["GET", "HEAD"], response_model=None)
    async def get_file(name: str) -> Response:
        path = store.path_for(name)
        if path is None:
            raise HTTPException(status_code=404, detail="File not found")
        media = MEDIA_TYPES.get(name.rsplit(".", 1)[1], "application/octet-stream")
        headers = {"Cache-Control": "public, max-age=3600"}
        small = store.read_small(path)
        if small is not None:
            return Response(small, media_type=media, headers=headers)
        return FileResponse(path, media_type=media, headers=headers)

    @router.put("/files/{name}", response_model=None)
    async def put_file(name: str, request: Request) -> JSONResponse:
        """Target of an ``upload_url`` handed out by a storage emulation (signed-URL style PUT)."""
        match = _NAME.match(name)
        if match is None:
            raise HTTPException(status_code=404, detail="Not found")
        data = await request.body()
        if len(data) > max_upload_bytes():
            raise HTTPException(status_code=413, detail="File too large")
        stored = await anyio.to_thread.run_sync(store.put_named, match.group(1), match.group(2), data)
        return JSONResponse({"url": stored.url(base_url(request)), "file_size": stored.size})

    @router.post("/files/upload")
    async def upload(request: Request) -> JSONResponse:
        data = await request.body()
        if len(data) > max_upload_bytes():
            raise HTTPException(status_code=413, detail="File too large")
        ext = sniff_image_type(data) or "bin"
        stored = await anyio.to_thread.run_sync(store.put, data, ext)
        return JSONResponse({"access_url": stored.url(base_url(request)), "content_type": stored.content_type,
                             "file_size": stored.size})

    return router
