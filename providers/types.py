"""The shapes a provider protocol speaks: requests it builds, answers it reads, outcomes it returns.

Nothing here does I/O. A protocol builds `ProviderRequest`s, hands them to the `ProviderClient` it is
given (worker/provider_client.py, the only code that sends provider requests) and reads `Answer`s.
"""

from __future__ import annotations

import json as _json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from editq.schemas.manifest import Usage
from editq.worker.errors import ErrorKind, ProviderError
from editq.worker.policy import kind_for_status, parse_retry_after


@dataclass(frozen=True)
class InputUrls:
    """Where the provider can fetch each input (presigned S3 URLs), in job order."""

    images: list[str]
    mask: str | None = None


@dataclass
class ProviderRequest:
    """A fully translated provider request, nothing secret in it: the client adds the credentials.

    `url` is a path joined to the provider's `base_url` (`/v1/images/edits`) or an absolute URL taken
    from an earlier answer (fal's `status_url`). `auth=False` sends no credentials (public key sets).
    `timeout_s` None: the provider's `timeout_s`; `connect_timeout_s` for calls that hold the
    connection for the whole edit (synchronous providers)."""

    method: str
    url: str
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, Any] | None = None
    content: bytes | None = None
    auth: bool = True
    timeout_s: float | None = None
    connect_timeout_s: float | None = None
    what: str = "request"  # names the call in error reasons ("submit", "status", "result", ...)

    @property
    def path(self) -> str:
        """The URL as given (a path for requests on the provider's base URL)."""
        return self.url


class Answer:
    """A provider's HTTP answer, read whole: status, lower-case headers, body bytes.

    `json` is the parsed body, or None when it is not JSON: a protocol never meets a parse exception,
    and a malformed answer becomes its provider's error, never a crash of the step."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, url: str = "") -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body
        self.url = url

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @cached_property
    def json(self) -> Any:
        try:
            return _json.loads(self.body)
        except ValueError:
            return None

    @property
    def obj(self) -> dict[str, Any]:
        """The body when it is a JSON object, else {}."""
        data = self.json
        return data if isinstance(data, dict) else {}

    def error(self, provider: str, what: str, *, kind: ErrorKind | None = None, provider_code: str | None = None,
              maybe_billed: bool = False) -> ProviderError:
        """This answer as an error, classified by the one status table unless `kind` is given."""
        body = self.json if self.json is not None else self.text[:500]
        text = body if isinstance(body, str) else repr(body)
        return ProviderError(
            kind or kind_for_status(self.status),
            f"{provider} {what}: HTTP {self.status}: {text[:500]}",
            status_code=self.status,
            provider_code=provider_code,
            retry_after_s=parse_retry_after(self.headers),
            maybe_billed=maybe_billed,
        )

    def __repr__(self) -> str:
        return f"Answer({self.status}, {len(self.body)} bytes)"


def malformed(provider: str, what: str, detail: str, *, maybe_billed: bool = False) -> ProviderError:
    """An answer we cannot read (not JSON, a field missing or of the wrong type): unknown, so it is
    retried once and then fails with this reason."""
    return ProviderError(ErrorKind.unknown, f"{provider} {what}: malformed answer: {detail}"[:2000],
                         maybe_billed=maybe_billed)


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

    @classmethod
    def succeeded(cls, result: Result) -> Outcome:
        return cls(done=True, result=result)

    @classmethod
    def failed(cls, error: ProviderError) -> Outcome:
        return cls(done=True, error=error)


@dataclass
class Submitted:
    request_id: str
    handle: dict[str, Any]
    outcome: Outcome | None = None  # synchronous providers answer with the result at once


@dataclass(frozen=True)
class Listed:
    """One request in a provider's own list of requests (fal's request history, Replicate's list of
    predictions): its id, whether the provider says it is finished, and the time the list is filtered on
    (Unix seconds; None when the answer has none)."""

    request_id: str
    done: bool
    at: float | None = None


@dataclass
class ListedPage:
    """A page of such a list, and the request for the next page (None: the last one, or a next page the
    protocol will not follow)."""

    items: list[Listed]
    next: ProviderRequest | None = None


def iso_utc(ts: float) -> str:
    """Unix seconds as an ISO 8601 UTC date-time with milliseconds and a `Z`, as list filters take them."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_instant(value: Any) -> float | None:
    """An ISO 8601 date-time from an answer (`Z` or an offset; naive = UTC) as Unix seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass
class WebhookEvent:
    delivery_id: str
    request_id: str
    payload: dict[str, Any]
