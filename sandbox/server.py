"""App factory and server entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from editq.sandbox.config import SandboxConfig
from editq.sandbox.control import control_router
from editq.sandbox.files import files_router
from editq.sandbox.http_faults import FaultInjector
from editq.sandbox.providers import builders
from editq.sandbox.state import SandboxState


def create_app(config: SandboxConfig | None = None) -> FastAPI:
    """The sandbox ASGI app: control API, file server and every registered provider router."""
    state = SandboxState(config or SandboxConfig())
    mounts = [build(state) for build in builders()]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.http()  # the client for input downloads and webhooks (its TLS context) before the first job
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(
        title="editq provider sandbox",
        lifespan=lifespan,
        docs_url="/_sandbox/docs",
        openapi_url="/_sandbox/openapi.json",
        redoc_url=None,
    )
    app.state.sandbox = state
    app.include_router(control_router(state, mounts))
    app.include_router(
        files_router(state.files, state.base_url, lambda: state.current.max_input_bytes)
    )
    for mount in mounts:
        app.include_router(mount.router)
    app.add_middleware(FaultInjector, config=lambda: state.current, dice=state.dice,
                       providers=lambda: state.runner.providers, count=state.runner.reject)
    return app


def serve(host: str, port: int, config: SandboxConfig | None = None) -> None:
    """Run the sandbox with uvicorn until interrupted (blocking)."""
    config = (config or SandboxConfig.from_env()).updated({"host": host, "port": port}, runtime=False)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=host,
            port=port,
            log_level=config.log_level,
            access_log=False,
            timeout_keep_alive=30,
            backlog=4096,
            lifespan="on",
        )
    )
    server.run()
