"""Celery tasks: thin, short, ids only. The work itself is in worker/pipeline.py."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from functools import cache

import structlog
from celery.signals import worker_init, worker_ready, worker_shutdown

from editq import providers
from editq.schemas.settings import get_settings
from editq.worker import aio, health
from editq.worker.celery_app import app
from editq.worker.drain import DRAINING
from editq.worker.pipeline import Pipeline, worker_id
from editq.worker.sweep import Sweeper

log = structlog.get_logger("editq.tasks")


@cache
def pipeline() -> Pipeline:
    return Pipeline()


PUMP_MAX_S = 20.0  # a pump hands over to a fresh task after this long, so every task stays short


def _pump(flag: str, step: Callable[[], int], more: Callable[[], bool], again: Callable[[], None]) -> int:
    """Run `step` round after round while it finds work, holding the kick flag meanwhile, so the
    thousands of wake-ups of a burst (each completion kicks collect and dispatch) are absorbed by
    this task instead of each sending a task that finds one job. No wake-up is lost: once the flag
    is released, work that arrived meanwhile (`more`) is taken here or by the kick that wins the flag."""
    kick = pipeline().kick
    deadline = time.monotonic() + PUMP_MAX_S
    total = 0
    kick.hold(flag)
    idle_rounds = 0
    while True:
        n = step()
        total += n
        if n:
            idle_rounds = 0
            if time.monotonic() > deadline or DRAINING.is_set():  # draining: another worker goes on
                kick.clear(flag)
                again()
                return total
            kick.hold(flag)
            continue
        kick.clear(flag)
        idle_rounds += 1
        # one more round if work arrived while we held the flag (bounded: a provider in backoff or a
        # reserved slot can leave `more` true while nothing is claimable; the tick retries those)
        if idle_rounds > 1 or not more() or not kick.take(flag):
            return total


@app.task(name="editq.dispatch")
def dispatch(provider: str) -> int:
    p = pipeline()
    synchronous = providers.spec_of(provider).synchronous
    return _pump(p.k.kick_dispatch(provider), lambda: aio.run(p.dispatch(provider)), lambda: p.dispatchable(provider),
                 lambda: p.kick.dispatch(provider, synchronous))


@app.task(name="editq.poll")
def poll(provider: str, job_ids: list[str], via: str = "poll") -> int:
    return aio.run(pipeline().poll(provider, job_ids, via))


@app.task(name="editq.sweep")
def sweep(provider: str) -> int:
    """One list of the provider's recent requests (worker/sweep.py); returns the jobs handed to the poll path."""
    return len(aio.run(Sweeper(pipeline()).sweep(provider)).found)


@app.task(name="editq.collect")
def collect() -> int:
    p = pipeline()
    return _pump(p.k.kick_collect, lambda: aio.run(p.collect()), lambda: bool(p.r.llen(p.k.ready)), p.kick.collect)


@app.task(name="editq.finalize")
def finalize(batch_id: str) -> str:
    return pipeline().finalize(batch_id)


@app.task(name="editq.cancel")
def cancel(job_id: str) -> bool:
    return aio.run(pipeline().cancel(job_id))


@app.task(name="editq.cancel_remote")
def cancel_remote(job_ids: list[str]) -> int:
    return aio.run(pipeline().cancel_remote(job_ids))


# ---- the tick: an embedded scheduler thread in every worker; a Redis lock elects one per tick ----
_stop = threading.Event()


def _beat() -> None:
    """This worker is alive: its key and its entry in `Keys.alive` (named `worker_id()`, as on every job it
    claims). Redis away: logged, and the next beat retries."""
    try:
        p = pipeline()
        now = time.time()
        beat = p.r.pipeline(transaction=False)
        ttl = max(5, int(get_settings().tick_interval_s * 10))
        beat.set(p.k.worker(socket.gethostname(), os.getpid()), repr(now), ex=ttl)
        beat.zadd(p.k.alive, {worker_id(): now})  # what `editq status --watch` counts; dead ones are reaped
        beat.zremrangebyscore(p.k.alive, "-inf", now - 3600)
        beat.execute()
    except Exception:
        log.warning("heartbeat failed", exc_info=True)


def _heartbeat_loop() -> None:
    """`_beat` every tick interval, on a thread of its own. A tick can block for long (a manifest write while
    S3 is frozen); a heartbeat written by the tick stopped with it, other workers judged this one dead and
    recovered the submits it still had in hand."""
    interval = get_settings().tick_interval_s
    while not _stop.wait(interval):
        _beat()


def _tick_loop() -> None:
    s = get_settings()
    interval = s.tick_interval_s
    p = pipeline()
    connected_since: float | None = None  # since the last failure: a worker just back cannot judge others
    while not _stop.wait(interval):
        health.LIVENESS.beat()  # alive whatever Redis says (liveness never checks dependencies)
        try:
            connected_since = connected_since or time.monotonic()
            p.tick(reap=time.monotonic() - connected_since > s.worker_dead_after_s)
        except Exception:  # keep ticking through Redis hiccups; the next tick retries
            connected_since = None
            log.exception("tick failed")
            time.sleep(interval)


@worker_init.connect
def _serve_health(**_: object) -> None:
    """Metrics and probes from the start, before the broker answers: a worker waiting for Redis is alive
    (`/livez` 200) and not ready (`/readyz` 503), never restarted into the same outage."""
    s = get_settings()
    health.serve(s.metrics_port, s.metrics_host)


@worker_ready.connect
def _start_tick(**_: object) -> None:
    _warm_up()
    _beat()  # listed as alive before its first claim: a worker lost within its first interval is reaped too
    threading.Thread(target=_heartbeat_loop, name="editq-heartbeat", daemon=True).start()
    threading.Thread(target=_tick_loop, name="editq-tick", daemon=True).start()


def _warm_up() -> None:
    """Pay the one-off costs before the first job instead of during it: the HTTP client (its TLS
    context loads the CA bundle), botocore's endpoint rules (loaded on the first presigned URL),
    the Redis connection and the state machine's scripts, and Pillow's format plugins (imported by
    the first output probed)."""
    try:
        from PIL import Image

        Image.init()
        p = pipeline()

        async def client() -> None:
            aio.http_client()

        aio.run(client())
        p.storage.presign_put("editq-warm-up", "application/octet-stream")
        p.r.ping()
        p.store.warm_up()
    except Exception:  # nothing here is needed for correctness; the first job pays instead
        log.warning("warm-up failed", exc_info=True)


@worker_shutdown.connect
def _stop_tick(**_: object) -> None:
    _stop.set()
    try:  # a worker that stops is not counted as alive for the next minute
        p = pipeline()
        p.r.zrem(p.k.alive, worker_id())
    except Exception:
        log.warning("could not deregister the worker", exc_info=True)
    aio.shutdown()  # close the pooled HTTP client (no "Unclosed client session" at exit)
