"""One error vocabulary for every provider: retryable, terminal or unknown, with the reason kept.

What a status means and what happens next is decided in `worker.policy`."""

from __future__ import annotations

from enum import StrEnum

from editq.schemas.manifest import ErrorInfo
from editq.worker.redact import redact


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
        moderation: str | None = None,
    ) -> None:
        reason = redact(reason)  # every reason may quote a provider's answer, and so a key
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status_code = status_code
        self.provider_code = provider_code
        self.retry_after_s = retry_after_s
        self.maybe_billed = maybe_billed
        # a moderation block: the stage the provider names ('input' or 'output'), 'unknown' if it names none.
        # Terminal, and never retried on the same provider (worker/policy.py).
        self.moderation = moderation
        if moderation:
            self.kind = ErrorKind.terminal

    def info(self, attempt: int | None = None) -> ErrorInfo:
        return ErrorInfo(
            kind=self.kind.value,
            reason=self.reason[:2000],
            status_code=self.status_code,
            provider_code=self.provider_code,
            attempt=attempt,
            moderation_stage=self.moderation,
        )

    def __repr__(self) -> str:
        return f"ProviderError({self.kind}, {self.reason!r}, status={self.status_code})"


class StorageUnavailable(ProviderError):
    """Our own S3 did not answer (connection refused or reset, a timeout, a 5xx): our outage, not the job's.
    Retryable; while the provider still keeps the output it does not use up the job's collect attempts
    (worker/policy.py `collect_try_counts`). A 4xx from S3 (credentials, bucket policy) is not this: it is a
    `StorageError` and fails the job once its attempts are used up."""

    def __init__(self, reason: str, *, status_code: int | None = None) -> None:
        super().__init__(ErrorKind.retryable, reason, status_code=status_code)


class WebhookRejected(Exception):
    """A delivery that failed verification (answered 401). It changes no state."""

    status_code = 401


class WebhookMalformed(WebhookRejected):
    """A delivery whose signature is valid but whose body is not what the provider sends (not JSON, not a JSON
    object, no request id): answered 400, no state change."""

    status_code = 400
