"""The interface every provider adapter implements, and the shapes it speaks.

An adapter has two halves:
* pure translation, testable without I/O: `validate(job)` (the provider's rules, checked at
  enqueue time) and `build_request(job, inputs, webhook_url)` (canonical job -> provider request);
* I/O with an `httpx.AsyncClient` the pipeline owns: `submit`, `poll`, `cancel`, and
  `verify_webhook` / `webhook_outcome` for deliveries.
The pipeline never looks inside a provider's payloads; everything comes back as `Outcome`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from schemas.job import EditJob
from schemas.manifest import Usage
from worker.errors import ErrorKind, ProviderError
from worker.policy import kind_for_status, parse_retry_after


class ProviderSettings(BaseSettings):
    """Common knobs; each adapter subclasses this with its own env prefix (e.g. EDITQ_FAL_)."""

    api_key: SecretStr | None = None
    base_url: str = ""
    concurrency: int = 8
    rpm: int = 0
    webhooks: bool = True
    timeout_s: float = 30.0


@dataclass(frozen=True)
class InputUrls:
    """Where the provider can fetch each input (presigned S3 URLs), in job order."""

    images: list[str]
    mask: str | None = None


@dataclass
class ProviderRequest:
    """A fully translated provider request: everything `submit` sends, nothing secret."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, Any] | None = None


@dataclass
class OutputRef:
    """One output image as the provider offers it: a URL to stream, or inline base64."""

    url: str | None = None
    b64: str | None = None
    content_type: str | None = None


@dataclass
class Result:
    outputs: list[OutputRef]
    usage: Usage | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """What a poll or a webhook says: still running, finished with a result, or failed."""

    done: bool
    result: Result | None = None
    error: ProviderError | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def running(cls, **info: Any) -> Outcome:
        return cls(done=False, info=info)


@dataclass
class Submitted:
    request_id: str
    handle: dict[str, Any]
    outcome: Outcome | None = None  # synchronous providers answer with the result at once


@dataclass
class WebhookEvent:
    delivery_id: str
    request_id: str
    payload: dict[str, Any]


class ProviderAdapter(ABC):
    name: ClassVar[str]
    settings_cls: ClassVar[type[ProviderSettings]]
    synchronous: ClassVar[bool] = False  # the submit call itself returns the images (own queue)
    supports_webhooks: ClassVar[bool] = True
    claim_size: ClassVar[int | None] = None  # jobs per submit_many call; None = settings.submit_batch
    auth_scheme: ClassVar[str] = "Bearer"  # the Authorization scheme (fal and ModelRunner: "Key")

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        self.settings = settings or self.settings_cls()

    # ---- pure -----------------------------------------------------------------------------
    @abstractmethod
    def validate(self, job: EditJob) -> list[str]:
        """Messages naming this provider, the field and the allowed values; empty when the job fits."""

    @abstractmethod
    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        """Canonical job -> provider request. Pure: no I/O, no clock, no secrets."""

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"{self.auth_scheme} {self.secret_key()}"}

    def secret_key(self) -> str:
        """The API key's text, "" when none is configured."""
        return self.settings.api_key.get_secret_value() if self.settings.api_key else ""

    def scrub(self, text: str) -> str:
        """`text` with the API key replaced by `***` (for reasons that quote provider answers)."""
        key = self.secret_key()
        return text.replace(key, "***") if key else text

    # ---- I/O --------------------------------------------------------------------------------
    @abstractmethod
    async def submit(self, http: httpx.AsyncClient, job: EditJob, req: ProviderRequest) -> Submitted: ...

    async def submit_many(
        self, http: httpx.AsyncClient, items: Sequence[tuple[EditJob, ProviderRequest]]
    ) -> list[Submitted | ProviderError]:
        """Submit several jobs; adapters whose protocol batches (OpenAI Batch) override this."""

        async def one(job: EditJob, req: ProviderRequest) -> Submitted | ProviderError:
            try:
                return await self.submit(http, job, req)
            except ProviderError as exc:
                return exc

        return list(await asyncio.gather(*(one(j, r) for j, r in items)))

    @abstractmethod
    async def poll(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> Outcome: ...

    async def poll_many(
        self, http: httpx.AsyncClient, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Outcome | ProviderError]:
        """Poll several requests; adapters whose protocol answers for many at once override this."""
        sem = asyncio.Semaphore(32)

        async def one(rid: str, handle: dict[str, Any]) -> Outcome | ProviderError:
            async with sem:
                try:
                    return await self.poll(http, rid, handle)
                except ProviderError as exc:
                    return exc

        return list(await asyncio.gather(*(one(r, h) for r, h in items)))

    async def cancel(self, http: httpx.AsyncClient, request_id: str, handle: dict[str, Any]) -> None:
        return None

    async def verify_webhook(
        self, http: httpx.AsyncClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> WebhookEvent:
        """Check the signature over the raw body before anything else; raise WebhookRejected."""
        raise NotImplementedError(f"{self.name} does not deliver webhooks")

    async def webhook_outcome(
        self, http: httpx.AsyncClient, event: WebhookEvent, handle: dict[str, Any]
    ) -> Outcome:
        """Turn a verified delivery into an outcome (may fetch the result if the payload lacks it)."""
        return await self.poll(http, event.request_id, handle)

    async def prepare_webhooks(self, http: httpx.AsyncClient) -> None:
        """Fetch what verifying deliveries needs (public keys, secrets) before the first one arrives.
        Called by the receiver at start for configured providers; failing here is harmless."""
        return None

    def poll_cap_s(self) -> float | None:
        """Longest gap between two polls of one request (outputs that expire); None = global settings."""
        return None

    def output_headers(self, url: str) -> dict[str, str]:
        """Headers needed to download an output (Replicate wants auth; most CDNs do not)."""
        return {}

    # ---- helpers shared by adapters ------------------------------------------------------------
    async def send(
        self, http: httpx.AsyncClient, req: ProviderRequest, *, timeout: float | None = None
    ) -> httpx.Response:
        """Send a translated request; transport failures become retryable ProviderErrors."""
        url = self.settings.base_url.rstrip("/") + req.path
        try:
            return await http.request(
                req.method,
                url,
                json=req.json,
                params=req.params or None,
                headers={**self.auth_headers(), **req.headers},
                files=req.files,
                data=req.data,
                timeout=timeout or self.settings.timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise ProviderError(
                ErrorKind.retryable, f"{self.name}: timed out ({type(exc).__name__})", maybe_billed=True
            ) from None
        except httpx.TransportError as exc:
            raise ProviderError(ErrorKind.retryable, f"{self.name}: connection error ({type(exc).__name__})") from None

    def http_error(self, resp: httpx.Response, *, what: str) -> ProviderError:
        """Classify a non-2xx answer; adapters refine by body (quota, moderation) before calling this."""
        try:
            body: Any = resp.json()
        except ValueError:
            body = resp.text[:500]
        return ProviderError(
            kind_for_status(resp.status_code),
            f"{self.name} {what}: HTTP {resp.status_code}: {_short(body)}",
            status_code=resp.status_code,
            retry_after_s=parse_retry_after(resp.headers),
        )


def _short(body: Any) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text[:500]
