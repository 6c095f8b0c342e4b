"""Shared builders for the provider tests: input records, jobs, data URIs, provider clients on mock transports."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from PIL import Image

from editq.providers.spec import ProviderSpec
from editq.schemas.job import EditJob, InputRecord
from editq.worker.provider_client import ProviderClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]


def record(name: str = "mug.png", w: int = 512, h: int = 512, **over: Any) -> InputRecord:
    """A placeholder input record (no real bytes behind it); `over` replaces any field."""
    data: dict[str, Any] = {"ref": name, "sha256": "0" * 64, "bytes": 1, "format": "png", "width": w, "height": h,
                            "s3_key": f"inputs/{name}"}
    return InputRecord(**{**data, **over})


def example_record(name: str, fmt: str = "png") -> InputRecord:
    """The input record of examples/`name`: its real sha256, size and dimensions."""
    data = (EXAMPLES / name).read_bytes()
    with Image.open(EXAMPLES / name) as im:
        w, h = im.size
    return InputRecord(ref=name, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), format=fmt, width=w,
                       height=h, s3_key=f"inputs/{name}")


def make_job(provider: str | None = None, /, **over: Any) -> EditJob:
    """An EditJob for `provider` (the default provider when None); `over` replaces any field (`provider` too)."""
    data: dict[str, Any] = {"prompt": "make it sepia", "images": ["mug.png"], "job_id": "job_1",
                            "batch_id": "batch_1", "idempotency_key": "k"}
    if provider is not None:
        data["provider"] = provider
    data.update(over)
    if "inputs" not in data:
        data["inputs"] = [record()]
    return EditJob.model_validate(data)


def data_uri(image: str | Path = "mug.png") -> str:
    """A base64 data URI of an image file: a path, or a name in examples/ (jpeg for .jpg, else png)."""
    path = image if isinstance(image, Path) else EXAMPLES / image
    mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def mock_http(handler: Handler) -> httpx.AsyncClient:
    """An httpx client whose every request `handler` answers in-process."""
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def client_of(spec: ProviderSpec, protocol: Any, http: httpx.AsyncClient | None = None) -> ProviderClient:
    """The provider's client for `protocol`'s settings on `http` (a real pooled client when None)."""
    return ProviderClient(spec, protocol.settings, http or httpx.AsyncClient())


def mock_client(spec: ProviderSpec, protocol: Any, handler: Handler) -> ProviderClient:
    """The provider's client for `protocol`'s settings on a mock transport answered by `handler`."""
    return client_of(spec, protocol, mock_http(handler))


def patched_sandbox(url: str, baseline: dict[str, Any]) -> Iterator[str]:
    """For a fixture: the sandbox at `url` with `baseline` config applied before and after the test."""
    httpx.patch(url + "/_sandbox/config", json=baseline, timeout=5).raise_for_status()
    yield url
    httpx.patch(url + "/_sandbox/config", json=baseline, timeout=5).raise_for_status()


def provider_http(sandbox_url: str, provider: str, auth: str, config: dict[str, Any]) -> Iterator[httpx.Client]:
    """For a fixture: a client on the sandbox's `provider` routes (Authorization: `auth`), `config` applied first."""
    with httpx.Client(base_url=f"{sandbox_url}/{provider}", headers={"Authorization": auth}, timeout=30) as c:
        assert c.patch(sandbox_url + "/_sandbox/config", json=config).status_code == 200
        yield c
