"""echo's emulator for the sandbox: the queue API of protocol.py, with real edits and the request log."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from editq.sandbox.engine import EngineError, render_edit_images
from editq.sandbox.inputs import summarize_for_log
from editq.sandbox.providers.common import BEARER_AUTH, InputFailed, authorization_matches, fetch_inputs
from editq.sandbox.runner import Job, JobOutcome, JobState, ProviderAdapter
from editq.sandbox.state import ProviderMount, SandboxState

NAME = "echo"


class EchoAdapter(ProviderAdapter):
    name = NAME


def build(state: SandboxState) -> ProviderMount:
    adapter = EchoAdapter()
    state.runner.register(adapter)
    router = APIRouter(prefix="/echo", tags=["echo"])

    async def work(job: Job) -> JobOutcome:
        data: dict[str, Any] = job.payload
        try:
            blobs, _ = await fetch_inputs(state, data["images"])
            fmt = data.get("format", "png")
            rendered = await state.in_thread(render_edit_images, blobs, data["prompt"], None, None, fmt, 1)
        except (InputFailed, EngineError) as exc:
            return JobOutcome(False, 200, None, str(exc), "invalid_input", reason="error")
        return JobOutcome(True, 200, [state.files.put(r.data, r.format).url(job.base_url) for r in rendered])

    def denied(request: Request) -> JSONResponse | None:
        if authorization_matches(request, BEARER_AUTH):
            return None
        return JSONResponse({"error": "unauthorized"}, status_code=401)

    @router.post("/jobs")
    async def submit(request: Request) -> JSONResponse:
        if (no := denied(request)) is not None:
            state.runner.reject(NAME, "auth")
            return no
        data = await request.json()
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) or not data.get("images"):
            state.runner.reject(NAME, "validation")
            return JSONResponse({"error": "prompt and images are required"}, status_code=422)
        job = Job(provider=NAME, request_id=uuid.uuid4().hex, model="echo", work=work, payload=data,
                  input_summary=summarize_for_log(data), base_url=state.base_url(request))
        state.runner.submit(job)
        return JSONResponse({"id": job.request_id})

    @router.get("/jobs/{request_id}")
    async def status(request_id: str, request: Request) -> JSONResponse:
        if (no := denied(request)) is not None:
            return no
        job = state.runner.get(NAME, request_id)
        if job is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        if job.state is not JobState.COMPLETED or job.outcome is None:
            return JSONResponse({"status": "queued" if job.state is JobState.IN_QUEUE else "running"})
        if job.outcome.ok:
            return JSONResponse({"status": "done", "images": job.outcome.body})
        return JSONResponse({"status": "failed", "error": job.outcome.error})

    @router.post("/jobs/{request_id}/cancel")
    async def cancel(request_id: str, request: Request) -> JSONResponse:
        job = state.runner.get(NAME, request_id)
        if job is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse({"result": state.runner.cancel(job).value})

    return ProviderMount(NAME, "/echo", router, adapter, "echo: the test-only ninth provider")
