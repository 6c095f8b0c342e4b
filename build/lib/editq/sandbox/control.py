"""``/_sandbox/`` control API: health, config (read and patch at runtime), request log, stats, reset."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from editq.sandbox.state import ProviderMount, SandboxState


def control_router(state: SandboxState, mounts: list[ProviderMount]) -> APIRouter:
    router = APIRouter(prefix="/_sandbox", tags=["sandbox"])

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "providers": [{"name": m.name, "prefix": m.prefix, "description": m.description} for m in mounts],
            "render": state.current.render,
            "uptime_s": round(state.runner.stats()["uptime_s"], 3),
        }

    @router.get("/config")
    async def get_config() -> dict[str, Any]:
        return state.current.model_dump()

    @router.patch("/config", response_model=None)
    async def patch_config(request: Request) -> JSONResponse:
        try:
            patch = json.loads(await request.body() or b"{}")
        except json.JSONDecodeError as exc:
            return JSONResponse({"detail": f"Invalid JSON: {exc}"}, status_code=400)
        if not isinstance(patch, dict):
            return JSONResponse({"detail": "Expected a JSON object of config fields."}, status_code=400)
        try:
            config = state.config.update(patch)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            return JSONResponse({"detail": errors}, status_code=422)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(config.model_dump())

    @router.get("/requests")
    async def requests(
        provider: str | None = None, status: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """The request log, oldest first; ``limit`` keeps the most recent N (count is before limit)."""
        entries = state.runner.log_entries(provider)
        if status:
            entries = [e for e in entries if e["status"] == status.upper()]
        count = len(entries)
        if limit is not None and limit >= 0:
            entries = entries[count - limit:] if limit else []
        return {"count": count, "requests": entries}

    @router.get("/requests/{request_id}", response_model=None)
    async def request_entry(request_id: str) -> JSONResponse:
        for name in state.runner.providers:
            job = state.runner.get(name, request_id)
            if job is not None:
                return JSONResponse(job.log_entry())
        return JSONResponse({"detail": "Request not found."}, status_code=404)

    @router.api_route("/redirect", methods=["GET", "POST"], response_model=None)
    async def redirect(to: str) -> Response:
        """307 to `to` (the webhook_redirect fault sends deliveries here)."""
        return Response(status_code=307, headers={"Location": to})

    @router.get("/stats")
    async def stats() -> dict[str, Any]:
        return state.runner.stats()

    @router.post("/reset")
    async def reset() -> dict[str, Any]:
        state.runner.reset()
        return {"status": "ok"}

    return router
