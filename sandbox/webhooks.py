"""Webhook delivery with fault injection (lost, duplicate, delayed, late, redirected, bad signature) and retries.

Fault dice are rolled synchronously in :meth:`WebhookDispatcher.schedule` (so, once a job is
COMPLETED, its "lost" decision is already visible in stats); delivery runs as an asyncio task.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from editq.sandbox.config import ConfigHolder
from editq.sandbox.faults import Dice
from editq.sandbox.signing import WebhookSigner

USER_AGENT = "editq-sandbox-webhooks/1"


@dataclass
class WebhookStats:
    scheduled: int = 0  # webhooks due (one per completed job with a webhook URL)
    attempted: int = 0  # HTTP attempts, including retries and duplicates
    succeeded: int = 0  # attempts answered 2xx
    failed: int = 0  # attempts answered non-2xx or with a transport error
    lost: int = 0  # dropped by the webhook_lost fault
    duplicated: int = 0  # delivered a second time by the webhook_duplicate fault
    bad_signature: int = 0  # signed with the unknown key
    late: int = 0  # held webhook_late_s by the webhook_late fault
    redirected: int = 0  # sent through a 307 redirect by the webhook_redirect fault
    pending: int = 0  # scheduled and not finished (delayed, in flight or between retries)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def reset(self) -> None:
        pending = self.pending
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)
        self.pending = pending


@dataclass
class WebhookRecord:
    """Per-job delivery record (shown in the request log)."""

    url: str
    attempts: int = 0
    delivered: int = 0
    lost: bool = False
    duplicated: bool = False
    bad_signature: bool = False
    late: bool = False
    redirected: bool = False
    last_status: int | None = None
    last_error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("history")
        data["history"] = self.history[-10:]
        return data


class WebhookDispatcher:
    def __init__(self, config: ConfigHolder, dice: Dice, client: Callable[[], httpx.AsyncClient]) -> None:
        self._config = config
        self._dice = dice
        self._client = client
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self,
        *,
        record: WebhookRecord,
        payload: Any,
        signer: WebhookSigner,
        request_id: str,
        stats: WebhookStats,
        totals: WebhookStats,
    ) -> None:
        cfg = self._config.current
        lost = self._dice.roll("webhook_lost", cfg.webhook_lost_rate)
        duplicate = self._dice.roll("webhook_duplicate", cfg.webhook_duplicate_rate)
        bad = self._dice.roll("webhook_bad_signature", cfg.webhook_bad_signature_rate)
        late = self._dice.roll("webhook_late", cfg.webhook_late_rate)
        redirected = self._dice.roll("webhook_redirect", cfg.webhook_redirect_rate)
        for s in (stats, totals):
            s.scheduled += 1
        if lost:
            record.lost = True
            for s in (stats, totals):
                s.lost += 1
            return
        record.bad_signature = bad
        record.late = late
        record.redirected = redirected
        for flag, name in ((bad, "bad_signature"), (late, "late"), (redirected, "redirected")):
            if flag:
                for s in (stats, totals):
                    setattr(s, name, getattr(s, name) + 1)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        for s in (stats, totals):
            s.pending += 1
        task = asyncio.get_running_loop().create_task(
            self._deliver(record, body, signer, request_id, duplicate, bad, (stats, totals),
                          hold=cfg.webhook_delay_s + (cfg.webhook_late_s if late else 0.0),
                          url=self.redirector(record.url) if redirected else record.url)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def redirector(self, url: str) -> str:
        """The sandbox's own `/_sandbox/redirect` answering 307 to `url` (the webhook_redirect fault)."""
        cfg = self._config.current
        base = (cfg.public_url or f"http://{cfg.host}:{cfg.port}").rstrip("/")
        return f"{base}/_sandbox/redirect?" + urllib.parse.urlencode({"to": url})

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _deliver(
        self,
        record: WebhookRecord,
        body: bytes,
        signer: WebhookSigner,
        request_id: str,
        duplicate: bool,
        bad: bool,
        stats: tuple[WebhookStats, ...],
        *,
        hold: float = 0.0,
        url: str = "",
    ) -> None:
        try:
            if hold > 0:
                await asyncio.sleep(hold)
            await self._send_with_retries(record, body, signer, request_id, bad, stats, url or record.url)
            if duplicate:
                record.duplicated = True
                for s in stats:
                    s.duplicated += 1
                await self._send_with_retries(record, body, signer, request_id, bad, stats, url or record.url)
        finally:
            for s in stats:
                s.pending -= 1

    async def _send_with_retries(
        self,
        record: WebhookRecord,
        body: bytes,
        signer: WebhookSigner,
        request_id: str,
        bad: bool,
        stats: tuple[WebhookStats, ...],
        url: str,
    ) -> bool:
        cfg = self._config.current
        attempts = 1 + (cfg.webhook_retry_attempts if cfg.webhook_retry else 0)
        backoff = cfg.webhook_retry_backoff_s
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(backoff * 2 ** (attempt - 1))
            headers = signer.sign(body, request_id=request_id, timestamp=int(time.time()), valid=not bad)
            headers["Content-Type"] = "application/json"
            headers["User-Agent"] = USER_AGENT
            record.attempts += 1
            for s in stats:
                s.attempted += 1
            entry: dict[str, Any] = {"at": time.time(), "attempt": attempt + 1}
            try:
                response = await self._client().post(
                    url, content=body, headers=headers, timeout=cfg.webhook_timeout_s
                )
            except httpx.HTTPError as exc:
                record.last_status, record.last_error = None, f"{type(exc).__name__}: {exc}"[:300]
                entry["error"] = record.last_error
            else:
                record.last_status, record.last_error = response.status_code, None
                entry["status"] = response.status_code
                entry["answered_at"] = time.time()
                if 200 <= response.status_code < 300:
                    record.delivered += 1
                    record.history.append(entry)
                    for s in stats:
                        s.succeeded += 1
                    return True
            record.history.append(entry)
            for s in stats:
                s.failed += 1
        return False

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
