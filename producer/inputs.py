"""Fetch each input once at enqueue time, check it is an image by its bytes, hash it, and store it
content-addressed in S3 (`inputs/{sha256}.{ext}`), so providers get presigned URLs and the
idempotency key can include the exact input bytes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path

import httpx

from schemas.job import InputRecord
from schemas.settings import Settings, get_settings
from worker.netguard import UnsafeURL, check_url
from worker.storage import Probe, Storage, probe_image

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
CACHE_SIZE = 4096


class InputError(ValueError):
    pass


class InputPreparer:
    def __init__(self, storage: Storage, base_dir: Path, settings: Settings | None = None) -> None:
        self.storage = storage
        self.base_dir = base_dir
        self.settings = settings or get_settings()
        self._cache: OrderedDict[tuple[str, ...], InputRecord] = OrderedDict()
        self._stored: set[str] = set()

    def prepare(self, ref: str, field: str) -> InputRecord:
        cache_key = self._cache_key(ref)
        hit = self._cache.get(cache_key)
        if hit is not None:
            self._cache.move_to_end(cache_key)
            return hit
        data = self._load(ref, field)
        try:
            probe = probe_image(io.BytesIO(data))
        except ValueError as exc:
            raise InputError(f"{field}: {_short(ref)} is {exc}") from None
        if probe.format not in ALLOWED_FORMATS:
            raise InputError(f"{field}: {_short(ref)} is {probe.format}; allowed formats: PNG, JPEG, WebP")
        sha = hashlib.sha256(data).hexdigest()
        key = self.storage.input_key(sha, probe.ext)
        self._store(key, data, probe, sha)
        rec = InputRecord(ref=_short(ref), sha256=sha, bytes=len(data), format=probe.format.lower(),
                          width=probe.width, height=probe.height, s3_key=key)
        self._cache[cache_key] = rec
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return rec

    def _store(self, key: str, data: bytes, probe: Probe, sha: str) -> None:
        if key in self._stored:
            return
        if not self.storage.exists(key):
            self.storage.put_bytes(key, data, probe.content_type, sha)
        self._stored.add(key)

    def _cache_key(self, ref: str) -> tuple[str, ...]:
        if ref.startswith("data:"):
            return ("data", hashlib.sha256(ref.encode()).hexdigest())
        if "://" in ref:
            return ("url", ref)
        path = self._path(ref)
        try:
            st = path.stat()
        except OSError:
            return ("path", str(path))
        return ("path", str(path), str(st.st_mtime_ns), str(st.st_size))

    def _path(self, ref: str) -> Path:
        p = Path(os.path.expanduser(ref))
        return p if p.is_absolute() else self.base_dir / p

    def _load(self, ref: str, field: str) -> bytes:
        limit = self.settings.max_input_bytes
        if ref.startswith("data:"):
            try:
                data = base64.b64decode(ref.split(",", 1)[1], validate=True)
            except (binascii.Error, IndexError):
                raise InputError(f"{field}: the data: URI is not valid base64") from None
        elif ref.startswith("s3://"):
            bucket, _, key = ref[5:].partition("/")
            try:
                obj = self.storage.client.get_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise InputError(f"{field}: cannot read {ref} ({type(exc).__name__})") from None
            if obj["ContentLength"] > limit:
                raise InputError(f"{field}: {ref} is larger than {limit} bytes")
            data = obj["Body"].read()
        elif ref.startswith(("http://", "https://")):
            data = self._download(ref, field, limit)
        else:
            path = self._path(ref)
            if not path.is_file():
                raise InputError(f"{field}: file not found: {ref}")
            if path.stat().st_size > limit:
                raise InputError(f"{field}: {ref} is larger than {limit} bytes")
            data = path.read_bytes()
        if len(data) > limit:
            raise InputError(f"{field}: input is larger than {limit} bytes")
        return data

    def _download(self, url: str, field: str, limit: int) -> bytes:
        for _ in range(4):  # follow at most 3 redirects, checking every hop
            try:
                check_url(url, allow_private=self.settings.allow_private_urls)
            except UnsafeURL as exc:
                raise InputError(f"{field}: {_short(url)} refused: {exc}") from None
            try:
                with httpx.stream("GET", url, timeout=30, follow_redirects=False) as resp:
                    if resp.is_redirect and resp.headers.get("location"):
                        url = str(resp.url.join(resp.headers["location"]))
                        continue
                    if resp.status_code != 200:
                        raise InputError(f"{field}: {_short(url)} answered HTTP {resp.status_code}")
                    buf = bytearray()
                    for chunk in resp.iter_bytes():
                        buf += chunk
                        if len(buf) > limit:
                            raise InputError(f"{field}: {_short(url)} is larger than {limit} bytes")
                    return bytes(buf)
            except httpx.HTTPError as exc:
                raise InputError(f"{field}: cannot fetch {_short(url)} ({type(exc).__name__})") from None
        raise InputError(f"{field}: too many redirects for {_short(url)}")


def _short(ref: str) -> str:
    if ref.startswith("data:"):
        return ref[: ref.find(",") + 1] + "…"
    return ref.split("?", 1)[0] if "://" in ref else ref
