"""One error vocabulary for every provider: retryable, terminal or unknown, with the reason kept."""

from __future__ import annotations

import email.utils
import time
from enum import StrEnum

from schemas.manifest import ErrorInfo


class ErrorKind(StrEnum):
    retryable = "retryable"  # 429, 5xx, timeouts, connection errors: try again later
    terminal = "terminal"  # validation, moderation, auth, insufficient quota: trying again cannot help
    unknown = "unknown"  # anything else; retried once with care, then failed


class ProviderError(Exception):
    def __init__(
        self,
        kind: ErrorKind,
        reason: str,
        *,
        status_code: int | None = None,
        provider_code: str | None = None,
        retry_after_s: float | None = None,
        maybe_billed: bool = False,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status_code = status_code
        self.provider_code = provider_code
        self.retry_after_s = retry_after_s
        self.maybe_billed = maybe_billed

    def info(self, attempt: int | None = None) -> ErrorInfo:
        return ErrorInfo(
            kind=self.kind.value,
            reason=self.reason[:2000],
            status_code=self.status_code,
            provider_code=self.provider_code,
            attempt=attempt,
        )

    def __repr__(self) -> str:
        return f"ProviderError({self.kind}, {self.reason!r}, status={self.status_code})"


class WebhookRejected(Exception):
    """A delivery that failed verification. It changes no state."""


def kind_for_status(status: int) -> ErrorKind:
    if status in (408, 409, 425, 429) or status >= 500:
        return ErrorKind.retryable
    if 400 <= status < 500:
        return ErrorKind.terminal
    return ErrorKind.unknown


def parse_retry_after(headers: dict[str, str] | object) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - time.time())
