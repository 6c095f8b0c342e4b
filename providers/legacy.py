"""Adapters not yet moved into their folder, seen through the new interface (removed once all moved)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from providers.protocol import ProviderProtocol
from providers.spec import ProviderSettings, ProviderSpec
from providers.types import InputUrls, Outcome, ProviderRequest, Submitted, WebhookEvent
from schemas.job import EditJob
from worker.errors import ProviderError
from worker.provider_client import ProviderClient
from worker.providers.base import ProviderAdapter

_OLD = {
    "openai": "worker.providers.openai:OpenAIAdapter",
    "openai_batch": "worker.providers.openai_batch:OpenAIBatchAdapter",
    "oxen": "worker.providers.oxen:OxenAdapter",
    "wavespeed": "worker.providers.wavespeed:WaveSpeedAdapter",
    "modelrunner": "worker.providers.modelrunner:ModelRunnerAdapter",
}


_SANDBOX: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "openai": ("/openai/v1", "EDITQ_OPENAI_API_KEY", "sk-sandbox-key", {}),
    "openai_batch": ("/openai/v1", "EDITQ_OPENAI_BATCH_API_KEY", "sk-sandbox-batch-key", {}),
    "oxen": ("/oxen/api/ai", "EDITQ_OXEN_API_KEY", "oxen-sandbox-key", {}),
    "wavespeed": ("/wavespeed", "EDITQ_WAVESPEED_API_KEY", "ws-sandbox-key", {}),
    "modelrunner": ("/modelrunner", "EDITQ_MODELRUNNER_KEY", "mr-sandbox-key",
                    {"EDITQ_MODELRUNNER_REST_URL": "{sandbox}/modelrunner"}),
}


def _cls(name: str) -> Any:
    module, cls = _OLD[name].split(":")
    return getattr(importlib.import_module(module), cls)


def spec_for(name: str) -> ProviderSpec:
    cls = _cls(name)
    path, key_env, key, extra = _SANDBOX[name]
    return ProviderSpec(
        sandbox_path=path, key_env=key_env, sandbox_key=key, sandbox_env=extra,
        name=name, title=name, settings_cls=cls.settings_cls, protocol=f"providers.legacy:{name}", emulator=None,
        synchronous=cls.synchronous, webhooks=cls.supports_webhooks, claim_size=cls.claim_size,
        auth_scheme=cls.auth_scheme, batches=cls.submit_many is not ProviderAdapter.submit_many,
    )


class Legacy(ProviderProtocol):
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.settings = inner.settings
        self.name = inner.name  # type: ignore[misc]

    def validate(self, job: EditJob) -> list[str]:
        return list(self.inner.validate(job))

    def build_request(self, job: EditJob, inputs: InputUrls, webhook_url: str | None) -> ProviderRequest:
        return self.inner.build_request(job, inputs, webhook_url)

    def poll_cap_s(self) -> float | None:
        return self.inner.poll_cap_s()

    def deadline_s(self) -> float | None:
        return getattr(self.inner.settings, "deadline_s", None)

    def output_auth(self, url: str) -> bool:
        return bool(self.inner.output_headers(url))

    async def submit(self, client: ProviderClient, job: EditJob, req: ProviderRequest) -> Submitted:
        return await self.inner.submit(client.http, job, req)

    async def submit_many(self, client: ProviderClient, items: Sequence[tuple[EditJob, ProviderRequest]]
                          ) -> list[Submitted | ProviderError]:
        return await self.inner.submit_many(client.http, items)

    async def poll(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> Outcome:
        return await self.inner.poll(client.http, request_id, handle)

    async def poll_many(self, client: ProviderClient, items: Sequence[tuple[str, dict[str, Any]]]
                        ) -> list[Outcome | ProviderError]:
        return await self.inner.poll_many(client.http, items)

    async def cancel(self, client: ProviderClient, request_id: str, handle: dict[str, Any]) -> None:
        await self.inner.cancel(client.http, request_id, handle)

    async def verify_webhook(self, client: ProviderClient, headers: Mapping[str, str], body: bytes, *,
                             now: float) -> WebhookEvent:
        return await self.inner.verify_webhook(client.http, headers, body, now=now)

    async def webhook_outcome(self, client: ProviderClient, event: WebhookEvent, handle: dict[str, Any]) -> Outcome:
        return await self.inner.webhook_outcome(client.http, event, handle)

    async def prepare_webhooks(self, client: ProviderClient) -> None:
        await self.inner.prepare_webhooks(client.http)


def __getattr__(name: str) -> Any:  # "providers.legacy:openai" -> a protocol class for it
    if name in _OLD:
        def make(settings: ProviderSettings | None = None) -> Legacy:
            return Legacy(_cls(name)(settings))
        return make
    raise AttributeError(name)
