"""The interface every provider protocol implements.

A protocol has two halves:
* pure translation, testable without I/O: `validate(job)` (the provider's rules, checked at enqueue)
  and `build_request(job, inputs, webhook_url)` (canonical job -> provider request), plus the
  parsers that turn an `Answer` into an `Outcome` / `Submitted` / `ProviderError`;
* the calls, made only through the `ProviderClient` it is given (`submit`, `poll`, `cancel`,
  `verify_webhook`, `webhook_outcome`). A protocol never imports httpx, aiohttp, redis, boto3 or
  storage: the client is the one network boundary (credentials, error mapping, redaction).
The pipeline never looks inside a provider's payloads; everything comes back as `Outcome`.
"""

from __future__ import annotations

import asyncio
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from editq.providers.spec import ProviderSettings
from editq.providers.types import (
    Answer,
    InputUrls,
    ListedPage,
    Outcome,
    ProviderRequest,
    Submitted,
    WebhookEvent,
    malformed,
)
from editq.schemas.job import EditJob
from editq.worker.errors import ProviderError

if TYPE_CHECKING:
    from editq.worker.provider_client import ProviderClient

POLL_CONCURRENCY = 32


def engine_service(target: str, *args: Any, **kwargs: Any) -> Any:
    """An engine service a protocol needs besides the client (reading input bytes from our storage,
    staging a converted mask, OpenAI Batch's state shared by workers), named "module:Class" and built on
    first use. The services live in worker/ (worker/provider_inputs.py, worker/batch_ingest.py), so a
    protocol module never imports storage or Redis; tests hand the protocol their own instead."""
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(*args, **kwargs)


class ProviderProtocol(ABC):
    name: ClassVar[str]
    settings_cls: ClassVar[type[ProviderSettings]]

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        self.settings = settings or self.settings_cls()

    # ---- pure -----------------------------------------------------------------------------
    @abstractmethod
    def validate(self, job: EditJob) -> list[str]:
        """Messages naming this provider, the field and the allowed values; empty when the job fits."""

    @abstractmethod
    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        """Canonical job -> provider request. Pure: no I/O, no clock, no secrets."""

    def poll_cap_s(self) -> float | None:
        """Longest gap between two polls of one request (outputs that expire); None = global settings."""
        return None

    def deadline_s(self) -> float | None:
        """How long a request may stay with the provider before it is cancelled; None = global setting."""
        return None

    def claim_size(self) -> int | None:
        """Jobs one dispatch claims; None = the engine's `submit_batch` (OpenAI Batch: its settings)."""
        return None

    def history_request(self, start: float, end: float) -> ProviderRequest | None:
        """The first page of the provider's own list of requests (its request history) covering requests of
        ours that were sent and finished in [start, end) (Unix seconds): what the sweep reads to find
        completions whose webhook was lost (worker/sweep.py). None: this provider has no such list, or its
        sweep is off. Pure."""
        return None

    def parse_history(self, answer: Answer, request: ProviderRequest) -> ListedPage:
        """A page of that list (`request` asked for it), with the request for the next page. Raises the
        provider's error for an answer that is not one. Pure."""
        raise NotImplementedError(f"{self.name} has no request history")

    def output_auth(self, url: str) -> bool:
        """Whether downloading this output needs the provider's credentials (Replicate's CDN does). The
        client adds them only when the URL's host is one the spec allows."""
        return False

    # ---- calls (through the client) ------------------------------------------------------------
    @abstractmethod
    async def submit(self, client: ProviderClient, job: EditJob, req: ProviderRequest) -> Submitted: ...

    async def submit_many(
        self, client: ProviderClient, items: Sequence[tuple[EditJob, ProviderRequest]]
    ) -> list[Submitted | ProviderError]:
        """Submit several jobs; protocols that batch (OpenAI Batch) override this."""

        async def one(job: EditJob, req: ProviderRequest) -> Submitted | ProviderError:
            try:
                return await self.submit(client, job, req)
            except ProviderError as exc:
                return exc

        return list(await asyncio.gather(*(one(j, r) for j, r in items)))

    @abstractmethod
    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> Outcome: ...

    async def poll_many(
        self, client: ProviderClient, items: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[Outcome | ProviderError]:
        """Poll several requests. Each answer stands alone: one that cannot be read (not JSON, a field
        missing) is that request's error, never the group's."""
        sem = asyncio.Semaphore(POLL_CONCURRENCY)

        async def one(rid: str, handle: dict[str, Any]) -> Outcome | ProviderError:
            async with sem:
                return await self.poll_guarded(client, rid, handle)

        return list(await asyncio.gather(*(one(r, h) for r, h in items)))

    async def poll_guarded(self, client: ProviderClient, request_id: str, handle: dict[str, Any]
                           ) -> Outcome | ProviderError:
        """`poll`, with an answer it cannot read turned into that request's error."""
        try:
            return await self.poll(client, request_id, handle)
        except ProviderError as exc:
            return exc
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            return malformed(self.name, "status", f"{type(exc).__name__}: {exc}"[:300])

    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        return None

    async def verify_webhook(
        self, client: ProviderClient, headers: Mapping[str, str], body: bytes, *, now: float
    ) -> WebhookEvent:
        """Check the signature over the raw body before anything else; raise WebhookRejected."""
        raise NotImplementedError(f"{self.name} does not deliver webhooks")

    async def webhook_outcome(self, client: ProviderClient, event: WebhookEvent, handle: dict[str, Any]) -> Outcome:
        """Turn a verified delivery into an outcome (may fetch the result if the payload lacks it)."""
        return await self.poll(client, event.request_id, handle)

    async def prepare_webhooks(self, client: ProviderClient) -> None:
        """Fetch what verifying deliveries needs (public keys, secrets) before the first one arrives.
        Called by the receiver at start for configured providers; failing here is harmless."""
        return None
