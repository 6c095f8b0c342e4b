"""`editq review BATCH`: the report's grid as a local web app to approve, reject and pick variants.

A small FastAPI app: `GET /` is the grid (the report's page with its review controls), `/thumbs/` the
thumbnails (made once into a cache folder, as for the report), `POST /api/decide` one decision,
`POST /api/bulk` a bulk action (approve every succeeded job of a label; reject every failed job),
`GET /api/state` the decisions so far. Every decision is appended to `review.jsonl` beside the batch
manifest in S3 before the answer is sent, so closing the page loses nothing and reopening resumes.
"""

from __future__ import annotations

import getpass
import socket
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from editq.producer.report import load_entries, make_thumbs
from editq.producer.report_model import Cell, Report, build
from editq.producer.report_render import render_html
from editq.producer.review_log import ReviewLog
from editq.producer.review_state import Decision
from editq.worker.storage import Storage


def default_reviewer() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class DecideBody(BaseModel):
    action: Literal["approve", "reject", "pick", "clear"]
    job_id: str


class BulkBody(BaseModel):
    action: Literal["approve", "reject"]
    label: str | None = None
    failed: bool = False


class ReviewSession:
    """The batch's jobs (read once) and its review log."""

    def __init__(self, batch_id: str, storage: Storage, cache: Path, reviewer: str) -> None:
        self.batch_id = batch_id
        self.storage = storage
        self.cache = cache
        self.reviewer = reviewer
        self.entries = load_entries(batch_id, storage)
        self.log = ReviewLog(storage, batch_id)
        self.log.load()
        self.cells: dict[str, Cell] = {c.job_id: c for row in self.report().rows for c in row.cells}
        make_thumbs(self.report(), cache, storage)

    def report(self) -> Report:
        return build(self.batch_id, self.entries, self.log.state())

    def decision(self, action: str, cell: Cell, bulk: str | None = None) -> Decision:
        return Decision(action=action, job_id=cell.job_id, group=cell.group, at=round(time.time(), 3), by=self.reviewer,
                        label=cell.label, provider=cell.provider, bulk=bulk)

    def answer(self, cells: list[Cell]) -> dict[str, Any]:
        state = self.log.state()
        groups = {c.group for c in cells}
        jobs = {c.job_id: state.of(c.job_id) for c in self.cells.values() if c.group in groups}
        return {"jobs": jobs, "picked": {g: state.picked.get(g) for g in groups}, "review": state.summary(),
                "saved": len(self.log.decisions)}


def _same_origin(request: Request) -> None:
    """Refuse a write sent by another site's page (a browser always sends Origin on a cross-site POST)."""
    origin = request.headers.get("origin")
    host = request.headers.get("host", "")
    if origin and origin.split("://", 1)[-1] != host:
        raise HTTPException(403, "cross-origin request refused")


def create_app(session: ReviewSession) -> FastAPI:
    app = FastAPI(title=f"editq review {session.batch_id}", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/thumbs", StaticFiles(directory=session.cache / "thumbs"), name="thumbs")

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return render_html(session.report(), review=True)

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return session.answer(list(session.cells.values()))

    @app.post("/api/decide")
    def decide(body: DecideBody, request: Request) -> dict[str, Any]:
        _same_origin(request)
        cell = session.cells.get(body.job_id)
        if cell is None:
            raise HTTPException(404, f"no job {body.job_id!r} in batch {session.batch_id}")
        session.log.append([session.decision(body.action, cell)])
        return session.answer([cell])

    @app.post("/api/bulk")
    def bulk(body: BulkBody, request: Request) -> dict[str, Any]:
        _same_origin(request)
        if body.failed:
            chosen = [c for c in session.cells.values() if c.failed]
            what = f"{body.action} all failed"
        elif body.label is not None:
            chosen = [c for c in session.cells.values() if c.label == body.label and not c.failed]
            what = f"{body.action} label {body.label}"
        else:
            raise HTTPException(422, "bulk: give a label or failed=true")
        session.log.append([session.decision(body.action, c, bulk=what) for c in chosen])
        return session.answer(chosen)

    return app
