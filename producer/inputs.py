"""Fetch each input once at enqueue time, decode it in full (producer/images.py), hash it, and store it
content-addressed in S3 (`inputs/{sha256}.{ext}`), so providers get presigned URLs and the
idempotency key can include the exact input bytes.

URLs go through the SSRF guard (worker/netguard.py): resolved once, checked, and fetched from the
checked address only (with the URL's own Host and TLS name), every redirect hop checked again."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
from collections import OrderedDict
from pathlib import Path

import httpx

from editq.producer.images import Decoded, ImageProblem, decode
from editq.schemas.job import InputRecord
from editq.schemas.settings import Settings, get_settings
from editq.worker.netguard import UnsafeURL, check_url
from editq.worker.storage import Probe, Storage

CACHE_SIZE = 4096
MAX_REDIRECTS = 3


class InputError(ValueError):
    pass


class InputPreparer:
    def __init__(self, storage: Storage, base_dir: Path, settings: Settings | None = None,
                 tls: ssl.SSLContext | None = None, *, store: bool = True) -> None:
        """`store=False` (estimates, dry runs): inputs are read and checked exactly the same, nothing is written."""
        self.storage = storage
        self.store = store
        self.base_dir = base_dir
        self.settings = settings or get_settings()
        self.tls = tls  # the trust store for https inputs; None: httpx's default (certifi)
        self._cache: OrderedDict[tuple[str, ...], tuple[InputRecord, str | None]] = OrderedDict()
        self._stored: set[str] = set()
        self._paths: dict[str, str] = {}  # ref -> its path (the hot path stats it per line, never resolves it twice)

    def prepare(self, ref: str, field: str, *, mask: bool = False) -> InputRecord:
        """The stored input for `ref`; raises InputError naming `field`. A mask must have an alpha channel."""
        cache_key = self._cache_key(ref)
        hit = self._cache.get(cache_key)
        if hit is not None:
            self._cache.move_to_end(cache_key)
            rec, mask_problem = hit
        else:
            data = self._load(ref, field)
            try:
                decoded = decode(data, self.settings.max_input_pixels)
            except ImageProblem as exc:
                raise InputError(f"{field}: {_short(ref)} is {exc}") from None
            rec = self._record(ref, data, decoded)
            mask_problem = decoded.mask_problem
            self._cache[cache_key] = (rec, mask_problem)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        if mask and mask_problem:
            raise InputError(f"{field}: {mask_problem.removeprefix('mask ')}")
        return rec

    def _record(self, ref: str, data: bytes, decoded: Decoded) -> InputRecord:
        probe = decoded.probe
        sha = hashlib.sha256(data).hexdigest()
        key = self.storage.input_key(sha, probe.ext)
        self._store(key, data, probe, sha)
        return InputRecord(ref=_short(ref), sha256=sha, bytes=len(data), format=probe.format.lower(),
                           width=probe.width, height=probe.height, s3_key=key)

    def _store(self, key: str, data: bytes, probe: Probe, sha: str) -> None:
        if key in self._stored or not self.store:
            return
        if not self.storage.exists(key):
            self.storage.put_bytes(key, data, probe.content_type, sha)
        self._stored.add(key)

    def _cache_key(self, ref: str) -> tuple[str, ...]:
        if ref.startswith("data:"):
            return ("data", hashlib.sha256(ref.encode()).hexdigest())
        if "://" in ref:
            return ("url", ref)
        path = self._paths.get(ref)
        if path is None:
            path = str(self._path(ref))
            if len(self._paths) < CACHE_SIZE:
                self._paths[ref] = path
        try:  # stat on every line: a file changed under a running batch is read again
            st = os.stat(path)
        except (OSError, ValueError):
            return ("path", path)
        return ("path", path, str(st.st_mtime_ns), str(st.st_size))

    def _path(self, ref: str) -> Path:
        p = Path(os.path.expanduser(ref))
        return p if p.is_absolute() else self.base_dir / p

    def _load(self, ref: str, field: str) -> bytes:
        limit = self.settings.max_input_bytes
        if ref.startswith("data:"):
            try:
                data = base64.b64decode(ref.split(",", 1)[1], validate=True)
            except (binascii.Error, IndexError, ValueError):
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
            data = self._read_file(ref, field, limit)
        if len(data) > limit:
            raise InputError(f"{field}: input is larger than {limit} bytes")
        return data

    def _read_file(self, ref: str, field: str, limit: int) -> bytes:
        try:
            path = self._path(ref)
            if not path.is_file():
                raise InputError(f"{field}: file not found: {ref}")
            if path.stat().st_size > limit:
                raise InputError(f"{field}: {ref} is larger than {limit} bytes")
            return path.read_bytes()
        except (OSError, ValueError) as exc:  # a name too long, a NUL byte, no permission...
            if isinstance(exc, InputError):
                raise
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise InputError(f"{field}: cannot read {_short(ref)[:200]} ({reason})") from None

    def _download(self, url: str, field: str, limit: int) -> bytes:
        allowed = self.settings.private_allow_list
        for _ in range(MAX_REDIRECTS + 1):  # every hop is checked
            try:
                target = check_url(url, allowed=allowed)
            except UnsafeURL as exc:
                raise InputError(f"{field}: {_short(url)} refused: {exc}") from None
            sni = target.server_hostname if target.pinned else None
            try:
                # a client per fetch: a pooled TLS connection is keyed by address, not by server name;
                # no proxy from the environment, which would resolve the name again
                with httpx.Client(timeout=30, follow_redirects=False, trust_env=False,
                                  verify=self.tls or True) as client, client.stream(
                    "GET", target.connect_url, headers=target.pin_headers(),
                    extensions={"sni_hostname": sni} if sni else None,
                ) as resp:
                    if resp.is_redirect and resp.headers.get("location"):
                        url = str(httpx.URL(url).join(resp.headers["location"]))
                        continue
                    if resp.status_code != 200:
                        raise InputError(f"{field}: {_short(url)} answered HTTP {resp.status_code}")
                    buf = bytearray()
                    for chunk in resp.iter_bytes():
                        buf += chunk
                        if len(buf) > limit:
                            raise InputError(f"{field}: {_short(url)} is larger than {limit} bytes")
                    return bytes(buf)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise InputError(f"{field}: cannot fetch {_short(url)} ({type(exc).__name__})") from None
        raise InputError(f"{field}: too many redirects for {_short(url)}")


def _short(ref: str) -> str:
    if ref.startswith("data:"):
        return ref[: ref.find(",") + 1] + "…"
    return ref.split("?", 1)[0] if "://" in ref else ref
