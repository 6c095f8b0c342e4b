"""The shared core every provider module builds on: one :class:`SandboxState` per app.

A provider module exposes ``build(state: SandboxState) -> ProviderMount``: it creates its
:class:`~sandbox.runner.ProviderAdapter` (with its webhook signer), registers it with
``state.runner.register(adapter)`` and returns its router.  ``sandbox.providers.builders()`` lists
the builders; :func:`sandbox.server.create_app` mounts them all.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from fastapi import APIRouter, Request

from editq.sandbox.config import ConfigHolder, SandboxConfig
from editq.sandbox.faults import Dice
from editq.sandbox.files import FileStore
from editq.sandbox.inputs import set_input_cache
from editq.sandbox.runner import ProviderAdapter, Runner
from editq.sandbox.webhooks import WebhookDispatcher
from editq.worker.transport import async_client

T = TypeVar("T")


@dataclass
class ProviderMount:
    name: str  # e.g. "fal"; also the provider key in stats and the request log
    prefix: str  # e.g. "/fal"; the router's routes already include it
    router: APIRouter
    adapter: ProviderAdapter
    description: str = ""


class SandboxState:
    def __init__(self, config: SandboxConfig) -> None:
        self.config = ConfigHolder(config)
        set_input_cache(config.render == "cached")
        self.config.subscribe(lambda old, new: set_input_cache(new.render == "cached"))
        self.dice = Dice(config.seed)
        self.files = FileStore(config.files_dir)
        self.webhooks = WebhookDispatcher(self.config, self.dice, self.http)
        self.runner = Runner(self.config, self.dice, self.webhooks)
        self.started_at = time.time()
        self._http: httpx.AsyncClient | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def current(self) -> SandboxConfig:
        return self.config.current

    def http(self) -> httpx.AsyncClient:
        """Shared client for input downloads and webhook deliveries (created on first use)."""
        if self._http is None:
            # the same transport (aiohttp pool) as editq's workers
            # idle connections kept 30 s, as the HTTP clients of real webhook senders do (Go's default is
            # 90 s): deliveries that come in waves reuse them (editq's receiver keeps them 75 s)
            self._http = async_client(
                256,
                keepalive_expiry=30.0,
                timeout=httpx.Timeout(15.0),
                follow_redirects=False,
            )
        return self._http

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            workers = self.current.render_workers or min(8, (os.cpu_count() or 1) + 2)
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-render")
        return self._executor

    async def in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking work (rendering, file writes) off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def base_url(self, request: Request) -> str:
        """``public_url`` if set, else the scheme://host:port the client used to reach us."""
        public = self.current.public_url
        if public:
            return public.rstrip("/")
        return str(request.base_url).rstrip("/")

    async def aclose(self) -> None:
        await self.runner.aclose()
        await self.webhooks.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.files.close()
