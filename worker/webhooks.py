"""`editq webhooks`: the ASGI receiver for provider deliveries.

Order of work for each delivery: verify the signature over the raw body (refuse with 401 and touch
nothing if it fails), drop duplicates, find the job, move it on through the same state machine the
poller uses, answer 200. Webhook and poller race to one terminal state; whichever is second is a no-op.
"""

from __future__ import annotations

import time
from functools import cache

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from worker import aio
from worker.errors import WebhookRejected
from worker.pipeline import Pipeline
from worker.providers import get_adapter
from worker.providers.base import WebhookEvent
from worker.state import State

log = structlog.get_logger("editq.webhooks")

DELIVERIES = Counter("editq_webhook_deliveries_total", "Webhook deliveries by outcome", ["provider", "outcome"])
SEEN_TTL_S = 3 * 3600  # longer than any provider's retry window (fal: 10 tries over ~2 h)


@cache
def _pipeline() -> Pipeline:
    return Pipeline()


def create_app() -> FastAPI:
    app = FastAPI(title="editq webhooks", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/webhooks/{provider}")
    async def receive(provider: str, request: Request) -> JSONResponse:
        try:
            adapter = get_adapter(provider)
        except KeyError:
            return JSONResponse({"error": "unknown provider"}, status_code=404)
        body = await request.body()
        http = aio.http_client()
        try:
            event = await adapter.verify_webhook(http, request.headers, body, now=time.time())
        except WebhookRejected as exc:
            DELIVERIES.labels(provider, "rejected").inc()
            log.warning("webhook rejected", provider=provider, reason=str(exc))
            return JSONResponse({"error": f"rejected: {exc}"}, status_code=401)

        p = _pipeline()
        seen = p.k.webhook_seen(provider, event.delivery_id)
        if not p.r.set(seen, "1", nx=True, ex=SEEN_TTL_S):
            DELIVERIES.labels(provider, "duplicate").inc()
            return JSONResponse({"status": "duplicate"})
        try:
            status = await _apply(p, provider, event, request.query_params.get("job"))
        except Exception:
            p.r.delete(seen)  # let the provider's retry (or the poller) try again
            raise
        DELIVERIES.labels(provider, status).inc()
        return JSONResponse({"status": status})

    return app


async def _apply(p: Pipeline, provider: str, event: WebhookEvent, job_hint: str | None) -> str:
    adapter = get_adapter(provider)
    job_id = p.r.get(p.k.request(provider, event.request_id))
    early = False
    if job_id is None and job_hint:
        # The provider finished before our submit recorded the request id (latency ~0). The URL is ours
        # and per job; accept it only while that job is still waiting on its submit answer.
        view = p.store.get(job_hint)
        if view is not None and view.state is State.submitting and view.provider == provider:
            job_id, early = job_hint, True
    if job_id is None:
        return "unknown-request"
    view = p.store.get(job_id)
    if view is None or view.state not in (State.submitted, State.submitting):
        return "already-done"
    if view.request_id and view.request_id != event.request_id:
        return "stale-request"
    outcome = await adapter.webhook_outcome(aio.http_client(), event, view.json_field("handle") or {})
    frm = (State.submitting, State.submitted) if early else (State.submitted,)
    ok = await p.complete(job_id, outcome, frm=frm, request_id=event.request_id)
    return "accepted" if ok else "already-done"


app = create_app()
