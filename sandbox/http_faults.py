"""Faults after admission, for every provider at once: an ASGI middleware in front of the sandbox.

Submit-time refusals (5xx, 429, timeout before a request is accepted) are each provider's own
(`sandbox.providers.common.admit`), because the answer's shape is the provider's. The faults here
need no provider shape, so they are injected around the routes:

* ``poll_5xx_rate`` / ``poll_429_rate``: a GET on a provider's API (status, result, prediction) is
  answered 503, or 429 with ``Retry-After``, without reaching the route.
* ``download_5xx_rate`` / ``download_429_rate``: a GET of an output file (``/files/...``) likewise.
* ``submit_reset_rate``: a POST on a provider's API (a submit; cancels excluded) runs normally, so
  the request is accepted (and, for a synchronous API, the edit is done), then the connection is
  dropped after the status line, before the body: the client cannot know the request was taken.

A provider is the first path segment (the sandbox serves each under ``/{name}``); rates honour
``provider_faults`` overrides. Each kind draws from its own dice stream (``sandbox.faults.Dice``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from editq.sandbox.config import SandboxConfig
from editq.sandbox.faults import Dice


class SubmitReset(Exception):
    """Raised after the answer's status line was sent: the server closes the connection mid-answer."""


def route_kind(method: str, path: str, providers: list[str]) -> tuple[str, str] | None:
    """(kind, provider) for a request a post-admission fault may hit: kind is `poll`, `download` or
    `submit`; None for the control API, uploads, cancels and webhook paths."""
    if path.startswith("/files/"):
        return ("download", "") if method == "GET" else None
    first = path.strip("/").split("/", 1)[0]
    if first not in providers:
        return None
    if method == "GET":
        return ("poll", first)
    if method == "POST" and "cancel" not in path.rsplit("/", 1)[-1]:
        return ("submit", first)
    return None


class FaultInjector:
    """ASGI middleware rolling the faults above for each request (see the module docstring)."""

    def __init__(self, app: ASGIApp, config: Callable[[], SandboxConfig], dice: Dice,
                 providers: Callable[[], list[str]], count: Callable[[str, str], None]) -> None:
        self.app = app
        self.config = config
        self.dice = dice
        self.providers = providers
        self.count = count  # (provider or "files", reason): the fault shows in the provider's stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hit = route_kind(scope.get("method", ""), scope.get("path", ""), self.providers())
        if hit is None:
            await self.app(scope, receive, send)
            return
        kind, provider = hit
        cfg = self.config()
        if kind in ("poll", "download"):
            for status in ("5xx", "429"):
                name = f"{kind}_{status}_rate"
                rate = cfg.rate(provider, name) if provider else float(getattr(cfg, name))
                if self.dice.roll(f"{kind}_{status}", rate):
                    self.count(provider, f"{kind}_{status}")
                    await _answer(send, 503 if status == "5xx" else 429, cfg)
                    return
            await self.app(scope, receive, send)
            return
        if not self.dice.roll("submit_reset", cfg.rate(provider, "submit_reset_rate")):
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _resetting(send, lambda: self.count(provider, "submit_reset")))


def _resetting(send: Send, counted: Callable[[], None]) -> Send:
    """A `send` that passes a 2xx status line on, then raises instead of sending the body (the server
    closes the connection). A non-2xx answer (the request was refused) goes through untouched."""
    state = {"status": 0}

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            state["status"] = int(message["status"])
            await send(message)
            return
        if message["type"] == "http.response.body" and 200 <= state["status"] < 300:
            counted()
            raise SubmitReset("sandbox fault: connection reset after the request was accepted")
        await send(message)

    return wrapped


async def _answer(send: Send, status: int, cfg: SandboxConfig) -> None:
    body = json.dumps({"detail": "sandbox fault: service unavailable" if status == 503
                       else "sandbox fault: too many requests"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 429:
        headers.append((b"retry-after", str(math.ceil(cfg.retry_after_s)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
