"""The Celery app. Every task is short and carries ids only; see worker/tasks.py.

Settings follow the Celery + Redis pitfalls in shared/reference/peers-and-celery-pitfalls.md:
late acks with prefetch 1, no results stored, no countdown/ETA for waits (the tick does that),
a visibility timeout far above any task's run time.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from celery.signals import setup_logging

from editq.schemas.settings import Settings, get_settings
from editq.worker.broker import transport_for
from editq.worker.logging import configure_logging

VISIBILITY_TIMEOUT_S = 3600


def broker(s: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options: `broker_url`, else the job-state Redis; with Sentinel
    (and no explicit broker_url) kombu's `sentinel://` transport, finding the same primary."""
    transport: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if s.broker_url or not s.redis_sentinels:
        return s.broker_url or s.redis_url, transport
    opts = redis.connection.parse_url(s.redis_url)
    auth = f"{opts.get('username') or ''}:{opts['password']}@" if opts.get("password") else ""
    db = int(opts.get("db", 0) or 0)
    url = ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in s.sentinel_hosts())
    transport["master_name"] = s.redis_sentinel_master
    if s.redis_sentinel_password is not None:
        transport["sentinel_kwargs"] = {"password": s.redis_sentinel_password.get_secret_value()}
    return url, transport


def make_app() -> Celery:
    s = get_settings()
    configure_logging()
    url, transport = broker(s)
    app = Celery("editq", broker=url, include=["editq.worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=s.queue_prefix,
        broker_transport_options=transport,
        visibility_timeout=VISIBILITY_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        # False: every task is short and a job's lease (not the task) recovers what a lost worker held;
        # with the threads pool, cancelling raised NotImplementedError at every broker drop
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport=transport_for(url),
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        task_time_limit=900,
    )
    return app


app = make_app()


@setup_logging.connect
def _one_log_format(**_: object) -> None:
    """Celery's worker lines go through editq's handler (worker/logging.py): plain or JSON, like ours.
    Connecting this signal stops Celery from installing its own handlers and format."""
    configure_logging()


def reconfigure() -> None:
    """Re-read settings (tests and the local stack change the environment after import)."""
    s = get_settings()
    app.conf.task_default_queue = s.queue_prefix
    url, transport = broker(s)
    if app.conf.broker_url == url and app.conf.broker_transport_options == transport:
        return
    app.conf.broker_url = url
    app.conf.broker_transport = transport_for(url)
    app.conf.broker_transport_options = transport
    # drop (do not close) the cached pools: producers handed out earlier may still be in use
    app._pool = None
    app.amqp._producer_pool = None
