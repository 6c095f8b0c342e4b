"""The one network boundary for providers: the only code that sends a provider request.

A `ProviderClient` is bound to one provider (its spec and settings) and the worker's pooled HTTP client.
For every request it
* joins paths to the provider's `base_url` (absolute URLs from earlier answers are taken as they are);
* adds the credentials only when the URL's host is one the spec allows (`base_url`'s host and the
  configured `auth_hosts`): a request that wants them anywhere else is refused before it leaves,
  whatever a provider answer named;
* maps every transport failure onto the billing line: **not sent** (the connection was never
  established: connect refused or timed out, waiting for a pooled connection, DNS, TLS handshake, a
  URL we cannot send to) or **may have been billed** (anything after the request could have left:
  a read timeout, a connection reset or closed before the answer, a cut body);
* reads the answer whole into an `Answer` (`json` is None for a body that is not JSON);
* redacts every registered secret from every message it raises (worker/redact.py).
Protocols receive it; they never import httpx.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any

import httpx

from editq.providers.spec import ProviderSettings, ProviderSpec, credential_hosts, host_of
from editq.providers.types import Answer, ProviderRequest
from editq.worker import redact, transport
from editq.worker.errors import ErrorKind, ProviderError

# The connection was never established, so the provider cannot have seen the request.
NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol, httpx.InvalidURL,
)


# Set by the pipeline around one job's submit: called once, when the first provider request of that
# submit has a connection open (worker/transport.py `on_connected`), before any byte of it is written.
# Until then the request cannot have reached the provider: a worker lost earlier did not send it.
# It may return an awaitable (the mark's round trip, shared with other submits): the request waits for it.
on_wire: contextvars.ContextVar[Callable[[], Awaitable[None] | None] | None] = contextvars.ContextVar(
    "editq_on_wire", default=None)


@contextlib.contextmanager
def _armed() -> Iterator[None]:
    """Arm the transport's connection hook with this task's `on_wire` mark, for one provider request."""
    mark = on_wire.get()
    if mark is None:
        yield
        return

    def fire() -> Awaitable[None] | None:
        on_wire.set(None)
        return mark()

    token = transport.on_connected.set(fire)
    try:
        yield
    finally:
        transport.on_connected.reset(token)


def transport_error(provider: str, what: str, exc: Exception, timeout_s: float | None = None) -> ProviderError:
    """The billing line, written once: a failure to connect is `not sent`; anything later may have
    reached the provider and been billed (`maybe_billed`), so the attempt is recorded `uncertain`."""
    name = type(exc).__name__
    if isinstance(exc, NOT_SENT):
        return ProviderError(ErrorKind.retryable, f"{provider} {what}: not sent ({name})")
    if isinstance(exc, httpx.TimeoutException):
        within = f" within {timeout_s:.0f}s" if timeout_s else ""
        return ProviderError(
            ErrorKind.retryable,
            f"{provider} {what}: no answer{within} ({name}); the request may have been processed and billed",
            maybe_billed=True,
        )
    return ProviderError(
        ErrorKind.retryable,
        f"{provider} {what}: connection lost after the request was sent ({name}); "
        "the request may have been processed and billed",
        maybe_billed=True,
    )


def unsendable(provider: str, what: str, exc: ValueError) -> ProviderError:
    """The HTTP client refused to write the request (a header or URL it cannot send): nothing left, and the
    same request will never go, so the job fails with the reason (the exception's text is not quoted: it may
    hold the value it refused)."""
    return ProviderError(ErrorKind.terminal, f"{provider} {what}: the request could not be written "
                                             f"({type(exc).__name__}: a header or URL with a forbidden character); "
                                             "not sent")


class ProviderClient:
    def __init__(self, spec: ProviderSpec, settings: ProviderSettings, http: httpx.AsyncClient) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.http = http
        self.hosts = credential_hosts(settings)
        self._key = settings.api_key.get_secret_value() if settings.api_key else ""
        redact.register(self._key)
        # refused at start-up (worker/startup.py); a process that skipped that check fails each job clearly
        # instead of raising from inside the HTTP client on every request
        self._bad_key = any(ord(c) < 32 or ord(c) == 127 for c in self._key)

    # ---- pure helpers ---------------------------------------------------------------------------
    def url(self, req: ProviderRequest) -> str:
        if "://" in req.url:
            return req.url
        return self.settings.base_url.rstrip("/") + req.url

    def may_authenticate(self, url: str) -> bool:
        """The URL's host is one the spec allows: `base_url`'s, an `auth_hosts` entry, or a subdomain of an
        entry written with a leading dot (`.replicate.delivery`: that host and every host under it)."""
        host = host_of(url)
        return host in self.hosts or any(
            h.startswith(".") and (host == h[1:] or host.endswith(h)) for h in self.hosts)

    def auth_headers(self, url: str) -> dict[str, str]:
        """Credentials for `url`; refused (not sent) for a host the spec does not allow."""
        if not self._key:
            return {}
        if self._bad_key:
            raise ProviderError(
                ErrorKind.terminal,
                f"{self.name}: the API key ({self.spec.key_env}) contains a control character (e.g. a trailing "
                "newline); fix the setting; not sent",
            )
        if not self.may_authenticate(url):
            raise ProviderError(
                ErrorKind.unknown,
                f"{self.name}: refusing to send credentials to {host_of(url) or url!r} "
                f"(allowed: {', '.join(sorted(self.hosts)) or 'none'}); not sent",
            )
        return {"Authorization": f"{self.spec.auth_scheme} {self._key}"}

    def output_headers(self, url: str, wants_auth: bool) -> dict[str, str]:
        """Headers for downloading an output: credentials only where the protocol needs them and the
        host is allowed (else none: a CDN URL on another host is fetched anonymously)."""
        if wants_auth and self._key and self.may_authenticate(url):
            return {"Authorization": f"{self.spec.auth_scheme} {self._key}"}
        return {}

    def _timeout(self, req: ProviderRequest) -> httpx.Timeout:
        total = req.timeout_s or self.settings.timeout_s
        return httpx.Timeout(total, connect=req.connect_timeout_s or total)

    def _kwargs(self, req: ProviderRequest, url: str) -> dict[str, Any]:
        headers = {**req.headers, **(self.auth_headers(url) if req.auth else {})}
        kw: dict[str, Any] = {"headers": headers, "timeout": self._timeout(req)}
        if req.params:
            kw["params"] = req.params
        if req.json is not None:
            kw["json"] = req.json
        if req.files is not None:
            kw["files"] = req.files
        if req.data is not None:
            kw["data"] = req.data
        if req.content is not None:
            kw["content"] = req.content
        return kw

    # ---- I/O ---------------------------------------------------------------------------------------
    async def send(self, req: ProviderRequest) -> Answer:
        """Send one request and read its answer whole. Raises ProviderError (transport failures only:
        a non-2xx answer is returned for the protocol to read)."""
        url = self.url(req)
        kw = self._kwargs(req, url)
        try:
            with _armed():
                direct = self._direct(req, url, kw)
                if direct is not None:
                    status, headers, body = await direct
                    return Answer(status, headers, body, url)
                resp = await self.http.request(req.method, url, **kw)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, req.what, exc, kw["timeout"].read) from None
        except ValueError as exc:  # the request could not be written (a header with a control character)
            raise unsendable(self.name, req.what, exc) from None
        return Answer(resp.status_code, resp.headers, resp.content, url)

    def _direct(self, req: ProviderRequest, url: str, kw: dict[str, Any]
                ) -> Coroutine[Any, Any, tuple[int, dict[str, str], bytes]] | None:
        """The same request on editq's client without httpx's models (worker/transport.py `request_direct`),
        when it can be sent that way: a JSON body, bytes or none (not a form or files), a plain URL, no proxy.
        None: send it through httpx."""
        http = self.http
        if req.files is not None or req.data is not None or not isinstance(http, transport.AsyncClient):
            return None
        if req.content is not None and not isinstance(req.content, bytes):
            return None
        if not req.params:
            full = url
        elif "?" in url or "#" in url:  # what httpx's client does with params and a URL that has a query
            full = str(httpx.URL(url, params=req.params))
        else:
            full = f"{url}?{httpx.QueryParams(req.params)}"
        if not http.direct_ok(full):
            return None
        headers: dict[str, str] = kw["headers"]
        body = req.content
        if req.json is not None:  # httpx's own encoding of json= (and its Content-Type unless one is given)
            body = json.dumps(req.json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            if not any(k.lower() == "content-type" for k in headers):
                headers = {**headers, "Content-Type": "application/json"}
        return http.request_direct(req.method, full, headers=headers, body=body, timeout=kw["timeout"])

    @contextlib.asynccontextmanager
    async def stream(self, req: ProviderRequest) -> AsyncIterator[tuple[Answer, AsyncIterator[bytes]]]:
        """Send one request and stream its body: yields (an Answer without body, the chunks). A
        non-2xx answer is read whole first (its body is in the Answer; the chunks are empty)."""
        url = self.url(req)
        kw = self._kwargs(req, url)
        try:  # not armed: a stream reads an output, never a submit
            async with self.http.stream(req.method, url, **kw) as resp:
                if not 200 <= resp.status_code < 300:
                    body = await resp.aread()
                    yield Answer(resp.status_code, resp.headers, body, url), _empty()
                    return
                yield Answer(resp.status_code, resp.headers, b"", url), self._chunks(resp, req, kw)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, req.what, exc, kw["timeout"].read) from None
        except ValueError as exc:
            raise unsendable(self.name, req.what, exc) from None

    async def _chunks(self, resp: httpx.Response, req: ProviderRequest, kw: dict[str, Any]) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(self.name, req.what, exc, kw["timeout"].read) from None


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


_clients: dict[tuple[str, int, int], ProviderClient] = {}


def client_for(name: str) -> ProviderClient:
    """The provider's client on this process's pooled HTTP client (call from inside the worker's loop)."""
    from editq import providers
    from editq.worker import aio

    http = aio.http_client()
    settings = providers.settings_of(name)
    key = (name, id(http), id(settings))
    client = _clients.get(key)
    if client is None:
        if len(_clients) > 256:  # settings or loops replaced many times (tests): start over
            _clients.clear()
        client = _clients[key] = ProviderClient(providers.spec_of(name), settings, http)
    return client
