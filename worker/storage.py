"""S3-compatible storage: content-addressed inputs, streamed outputs with hashes, manifests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import cache
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

import boto3
import httpx
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError
from PIL import Image

from editq.schemas.manifest import OutputRecord
from editq.schemas.settings import Settings, get_settings
from editq.worker.errors import ErrorKind, ProviderError, StorageUnavailable
from editq.worker.netguard import Target, check_url_async
from editq.worker.policy import kind_for_status
from editq.worker.presign import QuerySigner

PUT_ATTEMPTS = 5  # like botocore's standard retry mode: 5xx and connection errors are retried in place
PUT_URL_TTL_S = 900
PRESIGN_CACHE_MAX = 10_000
SPOOL_MEMORY = 1024 * 1024  # per output in flight; bigger outputs spill to a temp file (RSS stays flat)
CHUNK = 256 * 1024
FORMAT_CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}


class StorageError(RuntimeError):
    """S3 refused a write (4xx): not transient, so not retried (a ClientError did the same before)."""


@dataclass(frozen=True)
class Probe:
    format: str  # PIL name: PNG, JPEG, WEBP
    width: int
    height: int

    @property
    def content_type(self) -> str:
        return FORMAT_CONTENT_TYPES.get(self.format, "application/octet-stream")

    @property
    def ext(self) -> str:
        return FORMAT_EXT.get(self.format, self.format.lower())


def probe_image(fp: IO[bytes]) -> Probe:
    """Identify an image by its bytes (header only, nothing decoded). Raises ValueError if not an image."""
    pos = fp.tell()
    try:
        with Image.open(fp) as im:
            fmt, (w, h) = im.format or "", im.size
    except Exception as exc:  # PIL raises several types for non-images
        raise ValueError(f"not a readable image ({type(exc).__name__})") from None
    finally:
        fp.seek(pos)
    return Probe(fmt, w, h)


class Storage:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.bucket = self.settings.s3_bucket
        cfg = Config(
            max_pool_connections=64,
            retries={"max_attempts": 5, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # no client-side CRC32 of every body (botocore >= 1.36 default); S3 still checks Content-MD5
            # where it requires one, and each output's sha256 is computed while it streams in
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._session = boto3.session.Session()
        self.client = self._session.client(
            "s3", endpoint_url=self.settings.s3_endpoint, region_name=self.settings.s3_region, config=cfg
        )
        self._base: tuple[str, str, str] | None = None  # scheme, host, path prefix of this bucket's URLs
        self._get_urls: dict[tuple[str, int], tuple[str, float]] = {}
        self._signer = QuerySigner(self.client.meta.region_name)

    # ---- keys -------------------------------------------------------------------------------
    def input_key(self, sha256: str, ext: str) -> str:
        return f"{self.settings.s3_inputs_prefix}/{sha256}.{ext}"

    def job_prefix(self, batch_id: str, job_id: str) -> str:
        return f"{self.settings.s3_prefix}/{batch_id}/{job_id}"

    def output_key(self, batch_id: str, job_id: str, index: int, ext: str) -> str:
        return f"{self.job_prefix(batch_id, job_id)}/{index}.{ext}"

    def manifest_key(self, batch_id: str, job_id: str) -> str:
        return f"{self.job_prefix(batch_id, job_id)}/manifest.json"

    def batch_manifest_key(self, batch_id: str) -> str:
        return f"{self.settings.s3_prefix}/{batch_id}/manifest.jsonl"

    def batch_summary_key(self, batch_id: str) -> str:
        """The batch's totals (jobs, counts by state, cost), written with its manifest."""
        return f"{self.settings.s3_prefix}/{batch_id}/summary.json"

    # ---- plain operations ---------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put_bytes(self, key: str, data: bytes, content_type: str, sha256: str | None = None) -> None:
        extra: dict[str, Any] = {"ContentType": content_type}
        if sha256:
            extra["Metadata"] = {"sha256": sha256}
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)

    def put_json(self, key: str, obj: Any) -> None:
        body = json.dumps(obj, indent=2, sort_keys=True).encode()
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    # ---- presigned URLs ----------------------------------------------------------------------------
    # botocore's generate_presigned_url runs the whole request pipeline (parameter validation,
    # serialisation, endpoint rules, event hooks) for each URL; on the worker that was most of the cost
    # of a URL, and there are three per job. Here botocore resolves this bucket's base URL once, and each
    # URL is signed by worker/presign.py, botocore's SigV4 query signing written out for one path and a
    # few headers (tests/test_storage_presign.py checks the URLs are identical to botocore's).
    def _sign(
        self, method: str, key: str, expires: int, headers: dict[str, str] | None = None, *, public: bool = False
    ) -> str:
        if self._base is None:
            probe = urlsplit(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": "k"}, ExpiresIn=60))
            self._base = (probe.scheme, probe.netloc, probe.path[: -len("k")])
        creds = self._session.get_credentials()
        if creds is None:
            raise NoCredentialsError()
        scheme, netloc, prefix = self._base
        if public and self.settings.s3_public_endpoint:
            # the provider reaches S3 by another name than we do; SigV4 signs the host, so sign for that one
            pub = urlsplit(self.settings.s3_public_endpoint)
            scheme, netloc = pub.scheme, pub.netloc
        frozen = creds.get_frozen_credentials()
        if frozen.access_key is None or frozen.secret_key is None:
            raise NoCredentialsError()
        return self._signer.sign(method, scheme, netloc, prefix + quote(key, safe="/~"), headers or {}, expires,
                                 access_key=frozen.access_key, secret_key=frozen.secret_key, token=frozen.token)

    def presign_put(self, key: str, content_type: str, metadata: dict[str, str] | None = None) -> str:
        headers = {"Content-Type": content_type}
        for name, value in (metadata or {}).items():
            headers[f"x-amz-meta-{name}"] = value
        return self._sign("PUT", key, PUT_URL_TTL_S, headers)

    async def put_async(
        self,
        http: httpx.AsyncClient,
        key: str,
        body: bytes | IO[bytes],
        content_type: str,
        metadata: dict[str, str] | None = None,
    ) -> None:
        """One PUT of `body` (bytes, or a seekable file streamed in CHUNK blocks) to `key`.

        5xx answers and connection errors are retried (PUT_ATTEMPTS in all, short backoff) and then
        raised as StorageUnavailable (our outage: worker/policy.py `collect_try_counts`); other refusals
        raise StorageError."""
        url = self.presign_put(key, content_type, metadata)
        headers = {"Content-Type": content_type}
        for name, value in (metadata or {}).items():
            headers[f"x-amz-meta-{name}"] = value
        size = len(body) if isinstance(body, bytes) else body.seek(0, io.SEEK_END)
        if not isinstance(body, bytes):
            headers["Content-Length"] = str(size)
        err: StorageUnavailable | None = None
        for attempt in range(PUT_ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
            content: bytes | AsyncIterator[bytes]
            if isinstance(body, bytes):
                content = body
            else:  # up to one block is sent as bytes (aiohttp writes them at once; a stream costs per chunk)
                body.seek(0)
                content = body.read() if size <= CHUNK else _read_blocks(body)
            try:
                if _direct(http):  # editq's own client: straight to its aiohttp session
                    status, text = await http.put_direct(url, content=content, headers=headers, timeout=60)  # type: ignore[attr-defined]
                else:
                    resp = await http.put(url, content=content, headers=headers, timeout=60)
                    status, text = resp.status_code, resp.text
            except httpx.TransportError as exc:
                err = StorageUnavailable(f"S3 PUT: {type(exc).__name__}")
                continue
            if status < 300:
                return
            if status >= 500:
                err = StorageUnavailable(f"S3 PUT: HTTP {status}", status_code=status)
                continue
            raise StorageError(f"S3 PUT {key}: HTTP {status} {text[:300]}")
        assert err is not None
        raise err

    async def put_json_async(self, http: httpx.AsyncClient, key: str, obj: Any) -> None:
        body = json.dumps(obj, indent=2, sort_keys=True).encode()  # the same bytes as put_json
        await self.put_async(http, key, body, "application/json")

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def presign(self, key: str, ttl_s: int | None = None) -> str:
        """A GET URL for the provider (signed for EDITQ_S3_PUBLIC_ENDPOINT's host when set), valid
        `ttl_s` (default EDITQ_PRESIGN_TTL_S). Inputs are shared by many jobs, so a URL is reused while
        it has at least 90 % of its lifetime left (each provider still gets hours to fetch it)."""
        ttl = ttl_s or self.settings.presign_ttl_s
        now = time.monotonic()
        hit = self._get_urls.get((key, ttl))
        if hit is not None and now - hit[1] < ttl / 10:
            return hit[0]
        url = self._sign("GET", key, ttl, public=True)
        if len(self._get_urls) >= PRESIGN_CACHE_MAX:
            self._get_urls.clear()
        self._get_urls[(key, ttl)] = (url, now)
        return url

    def list_keys(self, prefix: str) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    # ---- outputs: provider -> S3, streamed, hashed on the way ---------------------------------------
    async def store_output(
        self,
        http: httpx.AsyncClient,
        *,
        url: str | None,
        b64: str | None,
        key_for_ext: Any,
        index: int,
        headers: dict[str, str] | None = None,
    ) -> OutputRecord:
        """Download one output (or decode inline base64) into a spool, hashing as it arrives, then upload.

        `key_for_ext(ext)` names the S3 key once the real format is known from the bytes.
        The same job and index always map to the same key, so a retry overwrites instead of duplicating.
        """
        digest = hashlib.sha256()
        size = 0
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            if b64 is not None:
                data = base64.b64decode(b64)
                digest.update(data)
                size = len(data)
                spool.write(data)
                del data
            elif url:
                # resolved once; the connection goes to the address that was checked
                target = await check_url_async(url, allowed=self.settings.private_allow_list)
                try:
                    async with _get_stream(http, target, headers or {}) as (status, chunks):
                        if status != 200:
                            raise ProviderError(
                                kind_for_status(status), f"output download: HTTP {status}", status_code=status
                            )
                        async for chunk in chunks:
                            size += len(chunk)
                            if size > self.settings.max_output_bytes:
                                raise ProviderError(ErrorKind.terminal, "output larger than max_output_bytes")
                            digest.update(chunk)
                            spool.write(chunk)
                except httpx.TransportError as exc:
                    raise ProviderError(ErrorKind.retryable, f"output download: {type(exc).__name__}") from None
            else:
                raise ProviderError(ErrorKind.unknown, "provider returned an output with neither url nor data")
            spool.seek(0)
            try:
                probe = probe_image(spool)
            except ValueError as exc:
                raise ProviderError(ErrorKind.unknown, f"provider output #{index} {exc}") from None
            sha = digest.hexdigest()
            key = key_for_ext(probe.ext)
            await self.put_async(http, key, spool, probe.content_type, {"sha256": sha})
        return OutputRecord(
            index=index, key=key, sha256=sha, bytes=size, content_type=probe.content_type,
            width=probe.width, height=probe.height, source_url=_strip_query(url) if url else None,
        )


def _direct(http: httpx.AsyncClient) -> bool:
    """editq's client (worker/transport.py, not imported here: the producer loads this module and needs
    no aiohttp) can skip httpx's models for S3 uploads and output downloads."""
    return hasattr(http, "put_direct") and hasattr(http, "stream_direct")


@contextlib.asynccontextmanager
async def _get_stream(http: httpx.AsyncClient, target: Target, headers: dict[str, str]
                      ) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
    """(status, body chunks) of a GET to the checked address of `target` (Host and TLS name of its URL):
    on the aiohttp session directly when the client is editq's own."""
    url, headers = target.connect_url, target.pin_headers(headers)
    sni = target.server_hostname if target.pinned else None
    if _direct(http):
        async with http.stream_direct(url, headers=headers, timeout=60, server_hostname=sni) as got:  # type: ignore[attr-defined]
            yield got
    else:
        extensions = {"sni_hostname": sni} if sni else None
        async with http.stream("GET", url, headers=headers, timeout=60, extensions=extensions) as resp:
            yield resp.status_code, resp.aiter_bytes(CHUNK)


async def _read_blocks(fp: IO[bytes]) -> AsyncIterator[bytes]:
    """The file in CHUNK blocks (an in-memory spool holds at most SPOOL_MEMORY; a bigger one is on disk)."""
    while block := fp.read(CHUNK):
        yield block


def _strip_query(url: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, p.path, "", ""))


@cache
def get_storage() -> Storage:
    return Storage()

