"""An httpx transport that sends requests with aiohttp's connection pool and C HTTP parser.

Adapters, storage and tests keep speaking httpx (requests, responses, exceptions); only the bytes on
the wire go through aiohttp. Why: with httpx's default transport (httpcore on anyio) the worker spent
about 60 % of its CPU inside the client stack at a few hundred requests/s (py-spy: pool bookkeeping,
anyio stream attributes, h11 parsing); on this transport the worker needs ~30 % less CPU per job
for the same run (docs/benchmarks.md, "What changed").

Two details matter for correctness, not speed:

* URLs are passed to aiohttp as already encoded. aiohttp would otherwise re-quote them, and a
  presigned S3 URL whose query changes by one character no longer matches its signature.
* Errors map to the httpx exception a request would have raised on httpx's own transport, and the
  line between "never sent" and "may have reached the server" is kept: only a failure to connect
  (`ConnectError`, `ConnectTimeout`) means the provider cannot have seen the request. A connection
  dropped after it was opened is `RemoteProtocolError` / `ReadError` (the request may have been
  processed), never a connect error; a generic mapping that turns every aiohttp connection error
  into a connect timeout would make a billed request look unsent.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import multidict
import yarl

CHUNK = 64 * 1024
# a URL `request_direct` can send as it is: nothing for httpx to normalise (quote, lower-case, IDNA-encode,
# remove dot segments); anything else goes through httpx
_URL_CHAR = r"(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9\-_~!$&'()*+,;=:@/]|\.(?![./?]|$))"
_PLAIN_URL = re.compile(rf"https?://[a-z0-9\-]+(?:\.[a-z0-9\-]+)*(?::[0-9]+)?(?:/{_URL_CHAR}*)?(?:\?(?:{_URL_CHAR}|[?.])*)?")

# Called once, in the task that sends, the moment a connection for its next request is open (a new
# one connected, or a pooled one taken): nothing can reach the server before this. Armed by
# worker/provider_client.py for provider requests only; the call disarms it.
# It may return an awaitable: the request waits for it before it writes a byte.
on_connected: contextvars.ContextVar[Callable[[], Awaitable[None] | None] | None] = contextvars.ContextVar(
    "editq_on_connected", default=None)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's pool, calling the task's `on_connected` hook once a connection for its request is open.
    Here rather than in an aiohttp TraceConfig: with one configured, aiohttp builds trace objects and
    sends their signals on every request (~40-55 us per request, measured on its own), for a hook one request in
    four needs. `connect` returns the connection (new or pooled) before the request writes a byte."""

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)
        callback = on_connected.get()
        if callback is not None:
            on_connected.set(None)
            try:
                pending = callback()
                if pending is not None:  # the mark is written in a round trip shared with other tasks
                    await pending
            except BaseException:
                conn.release()  # nothing was written on it: back to the pool
                raise
        return conn


@contextlib.contextmanager
def _mapped(request: httpx.Request | None) -> Iterator[None]:
    """Re-raise aiohttp's failures as the httpx exception httpx's own transport would raise."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except aiohttp.ConnectionTimeoutError as exc:  # connect or wait for a pooled connection: not sent
        raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
    except aiohttp.ClientConnectorError as exc:  # refused, DNS, TLS handshake: not sent
        raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:  # sent; no answer in time
        raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:  # sent (or partly); the server hung up
        raise httpx.RemoteProtocolError(str(exc) or "server disconnected", request=request) from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError(str(exc) or "incomplete body", request=request) from exc
    except (aiohttp.ClientOSError, aiohttp.ClientConnectionError, OSError) as exc:  # reset mid-request
        raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from exc
    except aiohttp.ClientError as exc:
        raise httpx.TransportError(str(exc) or type(exc).__name__, request=request) from exc


async def _chunks(response: aiohttp.ClientResponse, request: httpx.Request | None) -> AsyncIterator[bytes]:
    with _mapped(request):
        async for chunk in response.content.iter_chunked(CHUNK):
            yield chunk


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    """One limit for connecting (pool wait included) and for each read, as httpx's `timeout=seconds`."""
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _chunks(self._response, self._request)

    async def aclose(self) -> None:
        # back to the pool when the body was read to the end; aiohttp closes it otherwise
        self._response.release()


async def _request_body(stream: httpx.AsyncByteStream) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (created on first use, inside the running loop) with a global connection cap."""

    def __init__(self, max_connections: int, keepalive_expiry: float = 4.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = _Connector(
                limit=self.max_connections,
                limit_per_host=0,
                keepalive_timeout=self.keepalive_expiry,
                ssl=self._ssl or httpx.create_ssl_context(),
            )
            # cookies are not kept (httpx keeps its own jar on the client); proxies come from httpx's mounts
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._get_session()
        timeout = request.extensions.get("timeout", {})
        connect = timeout.get("connect")
        pool = timeout.get("pool")
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            assert isinstance(request.stream, httpx.AsyncByteStream)
            data = _request_body(request.stream)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
                   if k.lower() != b"transfer-encoding"]  # aiohttp frames a body without Content-Length itself
        with _mapped(request):
            response = await session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                compress=None,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=None if connect is None else connect + (pool or 0.0),
                    sock_connect=connect,
                    sock_read=timeout.get("read"),
                ),
            )
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_Body(response, request),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1")},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing. editq's clients call APIs with explicit credentials; httpx would
    otherwise build a urllib request object for every response just to look for Set-Cookie (py-spy:
    ~9 % of the worker's CPU)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class AsyncClient(httpx.AsyncClient):
    """httpx's client on `AiohttpTransport`, without a cookie jar, plus `put_direct` and `stream_direct`."""

    _jar = _NoCookies()

    def __init__(self, *, wire: AiohttpTransport, **kwargs: Any) -> None:
        super().__init__(transport=wire, **kwargs)
        self.wire = wire

    async def put_direct(self, url: str, *, content: bytes | AsyncIterator[bytes], headers: dict[str, str],
                         timeout: float) -> tuple[int, str]:
        """PUT on the aiohttp session itself, without httpx's request and response models (URL
        parsing, header objects, body decoding): for presigned S3 uploads, two per stored job, where
        those layers were about a fifth of the worker's CPU (py-spy). Answers (status, body text);
        failures raise the same httpx exceptions as `put`."""
        session = self.wire._get_session()
        with _mapped(None):
            async with session.put(
                yarl.URL(url, encoded=True), data=content, headers=headers, allow_redirects=False, compress=None,
                timeout=_timeout(timeout),
            ) as response:
                body = await response.read()
                return response.status, body.decode("utf-8", "replace")

    def direct_ok(self, url: str) -> bool:
        """Whether `request_direct` may send to `url`: no proxy mounts (they route through httpx) and a URL
        that needs no normalising (plain ASCII, already quoted, http or https)."""
        return not self._mounts and _PLAIN_URL.fullmatch(url) is not None

    async def request_direct(self, method: str, url: str, *, headers: dict[str, str], body: bytes | None,
                             timeout: httpx.Timeout) -> tuple[int, dict[str, str], bytes]:
        """A request read whole, on the aiohttp session itself: what `request` sends and answers (the
        client's default headers under the request's, the same timeouts, a compressed answer decoded,
        the same httpx exceptions), without httpx's URL, header and request/response models, which were
        over half of the worker's CPU per provider submit (py-spy). Answers (status, headers with
        duplicates joined by ", " as httpx does, body). Only for URLs `direct_ok` accepts."""
        session = self.wire._get_session()
        sent = multidict.CIMultiDict(self._default_headers())
        for name, value in headers.items():
            sent[name] = value
        if body is not None and "content-length" not in sent:
            sent["Content-Length"] = str(len(body))
        t = timeout.as_dict()
        connect, pool = t.get("connect"), t.get("pool")
        with _mapped(None):
            async with session.request(
                method, yarl.URL(url, encoded=True), headers=sent, data=body, allow_redirects=False,
                compress=None, auto_decompress=True,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None if connect is None else connect + (pool or 0.0),
                    sock_connect=connect, sock_read=t.get("read")),
            ) as response:
                data = await response.read()
                answer_headers: dict[str, str] = {}
                for name, value in response.headers.items():
                    key = name.lower()
                    answer_headers[key] = f"{answer_headers[key]}, {value}" if key in answer_headers else value
                return response.status, answer_headers, data

    def _default_headers(self) -> list[tuple[str, str]]:
        cached: list[tuple[str, str]] | None = getattr(self, "_defaults", None)
        if cached is None:
            cached = self._defaults = list(self.headers.items())
        return cached

    @contextlib.asynccontextmanager
    async def stream_direct(self, url: str, *, headers: dict[str, str], timeout: float,
                            server_hostname: str | None = None) -> AsyncIterator[tuple[int, AsyncIterator[bytes]]]:
        """GET on the aiohttp session itself, streamed: yields (status, chunks). For provider outputs,
        one per stored image. No Accept-Encoding is sent; a compressed answer is decoded anyway.
        `server_hostname`: the TLS name when `url` names the checked address instead of the host
        (worker/netguard.py); pooled connections are keyed by it too."""
        session = self.wire._get_session()
        extra: dict[str, Any] = {"server_hostname": server_hostname} if server_hostname else {}
        with _mapped(None):
            response = await session.get(
                yarl.URL(url, encoded=True), headers=headers, allow_redirects=False, auto_decompress=True,
                timeout=_timeout(timeout), **extra,
            )
        try:
            yield response.status, _chunks(response, None)
        finally:
            response.release()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("editq's HTTP client keeps no cookies")


def async_client(max_connections: int, *, keepalive_expiry: float = 4.0, **kwargs: Any) -> httpx.AsyncClient:
    """A pooled client (the worker's and the sandbox's): at most `max_connections` open at once.

    Keep-alive is 4 s, under the 5 s that uvicorn and many servers use, so an idle connection is
    dropped here before the server can close it under a new request."""
    return AsyncClient(wire=AiohttpTransport(max_connections, keepalive_expiry), **kwargs)

