"""Celery tasks: thin, short, ids only. The work itself is in worker/pipeline.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from functools import cache

import structlog
from celery.signals import worker_ready, worker_shutdown

from schemas.settings import get_settings
from worker import aio
from worker.celery_app import app
from worker.pipeline import Pipeline

log = structlog.get_logger("editq.tasks")


@cache
def pipeline() -> Pipeline:
    return Pipeline()


@app.task(name="editq.dispatch")
def dispatch(provider: str) -> int:
    p = pipeline()
    p.kick.clear(f"dispatch:{provider}")
    return aio.run(p.dispatch(provider))


@app.task(name="editq.poll")
def poll(provider: str, job_ids: list[str]) -> int:
    return aio.run(pipeline().poll(provider, job_ids))


@app.task(name="editq.collect")
def collect() -> int:
    p = pipeline()
    p.kick.clear("collect")
    return aio.run(p.collect())


@app.task(name="editq.finalize")
def finalize(batch_id: str) -> str:
    return pipeline().finalize(batch_id)


@app.task(name="editq.cancel")
def cancel(job_id: str) -> bool:
    return aio.run(pipeline().cancel(job_id))


# ---- the tick: an embedded scheduler thread in every worker; a Redis lock elects one per tick ----
_stop = threading.Event()


def _tick_loop() -> None:
    interval = get_settings().tick_interval_s
    p = pipeline()
    me = f"{p.k.prefix}:workers:{socket.gethostname()}:{os.getpid()}"
    while not _stop.wait(interval):
        try:
            p.r.set(me, repr(time.time()), ex=max(5, int(interval * 10)))
            p.tick()
        except Exception:  # keep ticking through Redis hiccups; the next tick retries
            log.exception("tick failed")
            time.sleep(interval)


@worker_ready.connect
def _start_tick(**_: object) -> None:
    threading.Thread(target=_tick_loop, name="editq-tick", daemon=True).start()


@worker_shutdown.connect
def _stop_tick(**_: object) -> None:
    _stop.set()
