"""`editq webhooks`: the ASGI receiver for provider deliveries.

Order of work for each delivery (`POST /webhooks/{provider}?job={job_id}&token={token}`):
1. a provider that does not take deliveries here (unknown, no webhooks, not configured): 404;
2. the job's token (worker/webhook_auth.py, constant time): 401 when missing or wrong, before the body is read;
3. a body over `EDITQ_WEBHOOK_MAX_BODY_BYTES`: 413, before it is read (by its Content-Length) or as soon
   as it exceeds the limit (chunked);
4. the signature over the raw body: 401; a signed body that is not what the provider sends (not a JSON
   object, no request id): 400;
5. drop duplicates, find the job, move it on through the same state machine the poller uses, answer 200.
A delivery only ever touches the job its URL names. Webhook and poller race to one terminal state;
whichever is second is a no-op.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from editq import providers
from editq.providers.types import Outcome, WebhookEvent
from editq.worker import aio, events, health, startup
from editq.worker import metrics as editq_metrics
from editq.worker.errors import ProviderError, WebhookMalformed, WebhookRejected
from editq.worker.logging import configure_logging
from editq.worker.pipeline import Pipeline
from editq.worker.provider_client import client_for
from editq.worker.redis_client import loop_redis
from editq.worker.state import JobView, State, job_view
from editq.worker.webhook_auth import JOB_PARAM, TOKEN_PARAM, receives_webhooks, token_ok

log = structlog.get_logger("editq.webhooks")

ADOPTABLE = (State.queued, State.retry_wait, State.submitting, State.submitted)  # and see `_adoptable`
WARM_UP_S = 5.0
SEEN_TTL_S = 3 * 3600  # longer than any provider's retry window (fal: 10 tries over ~2 h)


@cache
def _pipeline() -> Pipeline:
    return Pipeline()


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    startup.check("receiver")  # refuses to start (StartupRefused) without what checking deliveries needs
    # One-off costs paid at start, not by the first burst of deliveries: the HTTP client (TLS context),
    # the pipeline with its Redis connection and scripts. Failures here are not fatal: the first
    # delivery pays instead.
    def warm_redis() -> None:
        _pipeline().r.ping()
        _pipeline().store.warm_up()

    try:
        aio.http_client()
        _pipeline().aredis = loop_redis()  # None with Sentinel: then the round trips run on threads
        # bounded: with Redis down the receiver still starts and its probes say so (the client retries)
        await asyncio.wait_for(asyncio.to_thread(warm_redis), timeout=WARM_UP_S)
    except Exception:
        log.warning("warm-up failed", exc_info=True)
    # Webhook keys (fal's JWKS, the others' secrets) are fetched in the background, all at once: the
    # receiver listens at once (a restart must not refuse connections while a key endpoint is slow), and a
    # delivery that arrives while its provider's fetch is in flight waits for that fetch.
    prefetch = asyncio.ensure_future(_prefetch_keys())
    try:
        yield
    finally:
        prefetch.cancel()
        await aio.close_http_client()  # no "Unclosed client session" at exit


async def _prefetch_keys() -> None:
    async def one(name: str) -> None:
        try:
            await asyncio.wait_for(providers.protocol_of(name).prepare_webhooks(client_for(name)), timeout=10)
        except Exception:
            log.warning("webhook keys not prefetched", provider=name, exc_info=True)

    await asyncio.gather(*(one(name) for name in providers.names() if receives_webhooks(name)))


def create_app() -> DeliveriesFirst:
    """The receiver: `POST /webhooks/{provider}` (see DeliveriesFirst), the probes of worker/health.py
    (`/livez`; `/readyz` and `/healthz`: Redis and the broker answer), `/metrics`."""
    configure_logging()
    app = FastAPI(title="editq webhooks", docs_url=None, redoc_url=None, lifespan=_lifespan)
    editq_metrics.register_redis_collector()

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    @app.get("/healthz")
    async def readyz() -> JSONResponse:
        ok, body = await asyncio.to_thread(health.readiness)
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return DeliveriesFirst(app)


class BodyTooLarge(Exception):
    pass


class Delivery:
    """What a delivery handler reads of an ASGI request, taken straight from the scope: the query parameters
    and the headers as plain dicts (names lower-case, as ASGI gives them; a repeated one: its last value), and
    the body read from `receive`. Starlette's Request, QueryParams and Headers built and decoded these anew for
    every lookup, a tenth of the receiver's CPU per delivery (cProfile)."""

    __slots__ = ("headers", "query", "receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        raw = scope.get("query_string", b"")
        self.query = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)) if raw else {}
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        self.receive = receive

    async def body(self, limit: int) -> bytes:
        """The body, refused (BodyTooLarge) by its Content-Length before a byte is read, or as soon as more
        than `limit` bytes arrived (a chunked body has no length to check first)."""
        declared = self.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise BodyTooLarge
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class ClientGone(Exception):
    """The sender closed the connection before its body arrived: nothing to answer."""


def _json(status_code: int, content: dict[str, str]) -> tuple[int, bytes]:
    return status_code, json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def _refuse(provider: str, outcome: str, status_code: int, error: str) -> tuple[int, bytes]:
    events.webhook(provider, outcome)
    log.warning("webhook refused", provider=provider, outcome=outcome, reason=error)
    return _json(status_code, {"error": error})


async def handle_delivery(provider: str, request: Delivery) -> tuple[int, bytes]:
    """One delivery: bound to its job, verified, deduplicated, applied (see the module docstring).
    Returns the status code and the JSON body of the answer."""
    if not receives_webhooks(provider):
        # unknown, without webhooks, or not configured here: nothing to deliver to (no metrics label for it:
        # the provider name is the caller's text)
        return _json(404, {"error": "no webhooks for this provider"})
    adapter = providers.protocol_of(provider)
    job_hint = request.query.get(JOB_PARAM) or ""
    token = request.query.get(TOKEN_PARAM) or ""
    if not job_hint or not token or not token_ok(job_hint, token):
        return _refuse(provider, "unbound", 401, "rejected: missing or wrong job token")
    try:
        body = await request.body(_pipeline().settings.webhook_max_body_bytes)
    except BodyTooLarge:
        return _refuse(provider, "too-large", 413, "body too large")
    client = client_for(provider)
    try:
        event = await adapter.verify_webhook(client, request.headers, body, now=time.time())
    except WebhookRejected as exc:
        outcome = "malformed" if isinstance(exc, WebhookMalformed) else "rejected"
        return _refuse(provider, outcome, exc.status_code, f"rejected: {exc}")

    p = _pipeline()
    seen = p.k.webhook_seen(provider, event.delivery_id)
    # not blocking the event loop: a round trip to a busy Redis took 1-3 ms, and a burst of deliveries (a wave
    # of jobs finishing together) queued behind each one's waits (docs/benchmarks.md, section 12)
    first, recorded, hinted = await _lookup(p, provider, event, seen, job_hint)
    if not first:
        events.webhook(provider, "duplicate", hinted, event.request_id)
        return DUPLICATE
    try:
        status = await _apply(p, provider, event, job_hint, recorded, hinted)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # a signed delivery we cannot read (the provider's format changed?): the poller completes the job
        p.r.delete(seen)
        return _refuse(provider, "malformed", 400, f"unreadable delivery ({type(exc).__name__})")
    except Exception:
        p.r.delete(seen)  # let the provider's retry (or the poller) try again
        raise
    events.webhook(provider, status, hinted, event.request_id, sent_at(request.headers))
    return _json(200, {"status": status})


DUPLICATE = _json(200, {"status": "duplicate"})
INTERNAL_ERROR = _json(500, {"error": "internal error"})


def sent_at(headers: Mapping[str, str]) -> float | None:
    """When the provider sent the delivery, from the signed timestamp header the protocols verify
    (Standard Webhooks' `webhook-timestamp`, fal's `x-fal-webhook-timestamp`, ...): unix seconds."""
    for name, value in headers.items():
        if name.lower().endswith("timestamp"):
            try:
                return float(value)
            except ValueError:
                continue
    return None


async def _answer(send: Send, status_code: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status_code, "headers": [
        (b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class DeliveriesFirst:
    """ASGI wrapper: `POST /webhooks/{provider}` goes straight to `handle_delivery`, everything else
    to the FastAPI app. A wave of jobs finishing together is hundreds of deliveries a second, and
    FastAPI's routing, dependency solving and middleware were a fifth of the receiver's CPU per
    delivery (py-spy) for a route that needs none of them; Starlette's request and response objects
    another tenth (cProfile): the delivery reads the scope and sends its answer itself."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        provider = path[len("/webhooks/"):] if path.startswith("/webhooks/") else ""
        if scope.get("method") == "POST" and provider and "/" not in provider:
            try:
                status_code, body = await handle_delivery(provider, Delivery(scope, receive))
            except ClientGone:
                return
            except Exception:
                log.exception("webhook delivery failed", provider=provider)
                status_code, body = INTERNAL_ERROR
            await _answer(send, status_code, body)
            return
        await self.app(scope, receive, send)


async def _lookup(p: Pipeline, provider: str, event: WebhookEvent, seen: str, job_hint: str
                  ) -> tuple[bool, str | None, JobView | None]:
    """One Redis round trip: mark the delivery seen (False if it was already), find the job that
    recorded this request id, and read the job the delivery URL names (usually the same one).
    On the loop's redis.asyncio client; with Sentinel, the process's client on a thread."""
    def commands(pipe: Any) -> Any:
        pipe.set(seen, "1", nx=True, ex=SEEN_TTL_S)
        pipe.get(p.k.request(provider, event.request_id))
        pipe.hgetall(p.k.job(job_hint))
        return pipe

    if p.aredis is not None:
        first, recorded, raw = await commands(p.aredis.pipeline(transaction=False)).execute()
    else:
        first, recorded, raw = await asyncio.to_thread(lambda: commands(p.r.pipeline(transaction=False)).execute())
    return bool(first), recorded, job_view(job_hint, raw)


def _uncertain(view: JobView) -> bool:
    """An attempt of this job is recorded `uncertain`: a request may exist at the provider whose id we lost."""
    return any('"uncertain"' in v for k, v in view.fields.items() if k.startswith("req."))


def _adoptable(view: JobView, provider: str) -> bool:
    """Whether a signed result for a request id this job never recorded may be this job's: only when an
    attempt's request id was lost (`uncertain`), or the job is being submitted right now and its request id is
    not recorded yet (the provider answered the webhook before our submit call returned). A queued job, or a
    submitted one whose requests are all accounted for, has no unknown request: nothing is adopted."""
    if view.provider != provider or view.state not in ADOPTABLE:
        return False
    return (view.state is State.submitting and not view.request_id) or _uncertain(view)


async def _apply(p: Pipeline, provider: str, event: WebhookEvent, job_hint: str,
                 recorded: str | None, hinted: JobView | None) -> str:
    """`recorded`: the job id stored under the request id; `hinted`: the job named in the delivery URL (whose
    token was checked), read right after that lookup. Only that job is ever touched."""
    adapter = providers.protocol_of(provider)
    client = client_for(provider)
    if recorded is not None and recorded != job_hint:
        return "other-job"  # a request of another job delivered to this job's URL: not this URL's to apply
    job_id = recorded
    adopt = False
    if job_id is None:
        # A request whose id we never recorded: the provider answered before our submit did (latency ~0),
        # or a worker died between the provider's answer and recording it (the attempt is `uncertain`,
        # and the job may have been resubmitted since). The URL is ours and per job; the delivery is
        # signed by the provider for this request id. Adopt its result rather than pay for another run.
        view = hinted
        if view is not None and view.provider == provider and view.request_id == event.request_id:
            job_id = job_hint  # the worker recorded this very request between our two reads
        elif view is not None and _adoptable(view, provider):
            job_id, adopt = job_hint, True
    if job_id is None:
        return "unknown-request"
    view = hinted if hinted is not None and hinted.job_id == job_id else p.store.get(job_id)
    if view is None or view.state not in (ADOPTABLE if adopt else (State.submitted, State.submitting)):
        return "already-done"
    if not adopt and view.request_id and view.request_id != event.request_id:
        return "stale-request"
    handle = {} if adopt else (view.json_field("handle") or {})
    try:
        outcome = await adapter.webhook_outcome(client, event, handle)
    except (KeyError, ProviderError):
        if adopt:
            return "stale-request"  # nothing usable in the delivery itself; the job's own request goes on
        raise
    if adopt and outcome.result is None:
        if _current_attempt(view):  # its submitting worker was lost: apply the failure, do not wait out the lease
            return await _late_failure(p, provider, view, event.request_id, outcome)
        return "stale-request"  # a late failure of an attempt already given up changes nothing
    if adopt:  # recorded before the move: the collector may write the manifest right after it
        field = _record_adoption(p, provider, view, event.request_id)
    frm: tuple[State, ...] = ADOPTABLE if adopt else (State.submitted,)
    if not adopt and view.state is State.submitting and not any(
        event.request_id in v for k, v in view.fields.items() if k.startswith("req.")
    ):
        # Our submit recorded this request id a moment ago and its move to `submitted` is on its way
        # (an id from an earlier attempt would be in that attempt's req.N entry). Without this the
        # delivery was answered 200 and dropped, and the job waited for the safety-net poll (60 s).
        frm = (State.submitting, State.submitted)
    ok = await p.complete(job_id, outcome, frm=frm, request_id=event.request_id, provider=provider, via="webhook")
    if adopt and not ok:
        p.r.hdel(p.k.job(job_id), field)
    elif adopt and view.request_id and view.request_id != event.request_id and view.state is State.submitted:
        await adapter.cancel(client, view.request_id, view.json_field("handle") or {})
    return "accepted" if ok else "already-done"


def _current_attempt(view: JobView) -> bool:
    """A job `submitting` without a request id and without an earlier attempt left `uncertain`: a signed
    delivery to its URL for a request we never recorded can only answer its current attempt (whose
    worker died, or has not recorded the answer yet)."""
    current = f"req.{view.attempts}"
    return view.state is State.submitting and not view.request_id and not any(
        '"uncertain"' in v for k, v in view.fields.items() if k.startswith("req.") and k != current)


async def _late_failure(p: Pipeline, provider: str, view: JobView, request_id: str, outcome: Outcome) -> str:
    """The failure of the current attempt's request, delivered before (or instead of) its submit answer:
    recorded on that attempt, then retried or failed by the policy now."""
    assert outcome.error is not None
    p.r.set(p.k.request(provider, request_id), view.job_id, ex=p.settings.job_ttl_s)
    p.store.set_fields(view.job_id, request_id=request_id, **{f"req.{view.attempts}": p._req_entry(
        view, "failed", request_id=request_id, error=outcome.error.reason[:300])})
    await p.retry_or_fail(view, outcome.error, State.submitting, sent=False)
    return "accepted"


def _record_adoption(p: Pipeline, provider: str, view: JobView, request_id: str) -> str:
    """Note the adopted request in the job's request log; a newer request in flight gets cancelled."""
    p.r.set(p.k.request(provider, request_id), view.job_id, ex=p.settings.job_ttl_s)
    lost = _uncertain(view)
    note = ("late answer of a request whose id was lost; result used" if lost
            else "completion arrived before the submit answer was recorded")
    if view.request_id and view.request_id != request_id and view.state is State.submitted:
        note += f"; request {view.request_id} cancelled"
    entry = {"attempt": view.attempts, "provider": provider, "status": "adopted", "request_id": request_id,
             "at": time.time(), "note": note}
    field = f"req.adopted.{request_id}"
    fields = {field: json.dumps(entry)}
    if _current_attempt(view):  # the adopted request is this attempt's: it was accepted, not still `sending`
        fields[f"req.{view.attempts}"] = p._req_entry(view, "accepted", request_id=request_id,
                                                      note="answer lost; its result arrived by webhook")
    p.store.set_fields(view.job_id, **fields)
    return field


app = create_app()
