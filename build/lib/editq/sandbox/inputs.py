"""Fetch model inputs the way a provider's runner does: ``http(s)://`` URLs and ``data:`` URIs.

Every failure (unreachable, non-2xx, too large, not an image) raises :class:`InputError`, which a
provider turns into a job error.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from collections import OrderedDict
from typing import Any

import httpx

from editq.sandbox.engine import sniff_image_type

_OFFLOAD_CHARS = 256 * 1024  # decode bigger data URIs off the event loop


class InputError(Exception):
    """An input the provider could not use; ``kind`` follows fal's error-type vocabulary."""

    def __init__(self, message: str, *, kind: str = "file_download_error", url: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url


def decode_data_uri(uri: str, *, max_bytes: int) -> bytes:
    """Payload of ``data:[<mime>][;base64],<data>``."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.startswith("data:"):
        raise InputError("Malformed data URI.", kind="file_download_error", url=uri[:64])
    if header.endswith(";base64"):
        if len(payload) * 3 // 4 > max_bytes + 3:
            raise InputError("The file is too large.", kind="file_too_large", url=uri[:64])
        compact = "".join(payload.split())
        try:
            return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
        except (binascii.Error, ValueError):
            try:
                return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
            except (binascii.Error, ValueError) as exc:
                raise InputError("Malformed base64 in data URI.", url=uri[:64]) from exc
    data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise InputError("The file is too large.", kind="file_too_large", url=uri[:64])
    return data


# With render=cached the sandbox stands in for a provider on the same (small) machine as the system
# under test; then it keeps the bytes of each input by URL without its query (editq's inputs are
# content-addressed S3 keys; the query is only the presigned signature), so each distinct input is
# downloaded once instead of once per job. render=real downloads every input every time.
_INPUT_CACHE: OrderedDict[str, bytes] = OrderedDict()
_INPUT_CACHE_MAX_BYTES = 64 * 1024 * 1024
_input_cache = {"on": False, "bytes": 0}


def set_input_cache(enabled: bool) -> None:
    _input_cache["on"] = enabled
    if not enabled:
        _INPUT_CACHE.clear()
        _input_cache["bytes"] = 0


def _cache_put(key: str, data: bytes) -> None:
    if len(data) > _INPUT_CACHE_MAX_BYTES // 8:
        return
    _INPUT_CACHE[key] = data
    _input_cache["bytes"] += len(data)
    while _input_cache["bytes"] > _INPUT_CACHE_MAX_BYTES:
        _, old = _INPUT_CACHE.popitem(last=False)
        _input_cache["bytes"] -= len(old)


async def fetch_bytes(url: str, client: httpx.AsyncClient, *, max_bytes: int, timeout: float) -> bytes:
    if _input_cache["on"] and not url.startswith("data:"):
        key = url.split("?", 1)[0]
        data = _INPUT_CACHE.get(key)
        if data is None:
            # single flight: a burst of submits naming one input (the first wave of a batch) waits for one
            # download instead of starting one each
            pending = _FETCHING.get(key)
            if pending is None:
                pending = asyncio.ensure_future(_fetch_bytes(url, client, max_bytes=max_bytes, timeout=timeout))
                _FETCHING[key] = pending
                pending.add_done_callback(lambda fut: _settle(key, fut))
            data = await asyncio.shield(pending)
        if len(data) > max_bytes:
            raise InputError("The file is too large.", kind="file_too_large", url=url)
        return data
    return await _fetch_bytes(url, client, max_bytes=max_bytes, timeout=timeout)


_FETCHING: dict[str, asyncio.Future[bytes]] = {}


def _settle(key: str, fut: asyncio.Future[bytes]) -> None:
    _FETCHING.pop(key, None)
    if not fut.cancelled() and fut.exception() is None:
        _cache_put(key, fut.result())


async def _fetch_bytes(url: str, client: httpx.AsyncClient, *, max_bytes: int, timeout: float) -> bytes:
    if url.startswith("data:"):
        if len(url) > _OFFLOAD_CHARS:
            return await asyncio.to_thread(decode_data_uri, url, max_bytes=max_bytes)
        return decode_data_uri(url, max_bytes=max_bytes)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise InputError(f"Unsupported URL scheme {scheme!r}.", url=url)
    try:
        async with client.stream("GET", url, timeout=timeout) as response:
            if response.status_code >= 400:
                raise InputError(
                    f"Failed to download the file: HTTP {response.status_code}.", url=url
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise InputError("The file is too large.", kind="file_too_large", url=url)
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise InputError("The file is too large.", kind="file_too_large", url=url)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise InputError(f"Failed to download the file: {type(exc).__name__}.", url=url) from exc
    return b"".join(chunks)


async def fetch_image(url: str, client: httpx.AsyncClient, *, max_bytes: int, timeout: float) -> bytes:
    """Bytes of an image input; raises :class:`InputError` if unreachable or not an image."""
    data = await fetch_bytes(url, client, max_bytes=max_bytes, timeout=timeout)
    if sniff_image_type(data) is None:
        raise InputError("The file is not a supported image.", kind="image_load_error", url=url[:200])
    return data


def summarize_for_log(value: Any, *, max_chars: int = 256) -> Any:
    """``value`` with big data URIs (and other very long strings) replaced by a short description."""
    if isinstance(value, str):
        if value.startswith("data:") and len(value) > max_chars:
            header = value.partition(",")[0]
            return f"{header},<{len(value) - len(header) - 1} chars elided>"
        if len(value) > 8 * max_chars:
            return value[: 8 * max_chars] + f"...<{len(value) - 8 * max_chars} chars elided>"
        return value
    if isinstance(value, dict):
        return {k: summarize_for_log(v, max_chars=max_chars) for k, v in value.items()}
    if isinstance(value, list):
        return [summarize_for_log(v, max_chars=max_chars) for v in value]
    return value
