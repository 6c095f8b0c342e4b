"""One Redis connection pool per process (re-created after fork): a plain URL, or the primary found
through Redis Sentinel (EDITQ_REDIS_SENTINELS), followed across a failover.

With Sentinel, every command retries on connection errors, timeouts and READONLY (a demoted primary)
for up to `redis_failover_s`, asking the sentinels for the new primary each time. Retrying is safe for
editq's writes: every state move is a script that checks the job's state first, so one applied twice is a
no-op the second time; a claim whose answer was lost leaves jobs `submitting` under a lease, recovered
by the tick (nothing was sent for them).

Replication is asynchronous: a primary that dies can take its last writes with it. `replicated()` (Redis
WAIT) makes the writes that decide money reach a replica before editq acts on them (see
docs/operations.md, "Redis failover").
"""

from __future__ import annotations

import os
from typing import Any

import redis
import structlog
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from editq.schemas.settings import Settings, get_settings

log = structlog.get_logger("editq.redis")

_clients: dict[tuple[int, str, str], Any] = {}
BACKOFF_CAP_S = 1.0


def get_redis(url: str | None = None) -> Any:
    """A decode_responses client. Typed Any: redis-py's stubs cannot express that replies are str."""
    s = get_settings()
    url = url or s.redis_url
    sentinels = s.redis_sentinels if url == s.redis_url else None
    key = (os.getpid(), url, sentinels or "")
    client = _clients.get(key)
    if client is None:
        client = sentinel_client(s, url) if sentinels else redis.Redis.from_url(
            url, decode_responses=True, health_check_interval=30, retry=retry_policy(s),
            retry_on_error=[ConnectionError, TimeoutError])
        _clients[key] = client
    return client


ASYNC_CONNECTIONS = 64


def loop_redis() -> Any:
    """A redis.asyncio client (decode_responses) for the running event loop, on the same URL and with the same
    retries as `get_redis`, one per loop (a client belongs to the loop it was made on); for the receiver, whose
    loop waits on Redis without a thread hop per round trip. None with Sentinel (EDITQ_REDIS_SENTINELS): the
    caller uses `get_redis` on a thread, which follows a failover."""
    import asyncio

    s = get_settings()
    if s.redis_sentinels:
        return None
    loop = asyncio.get_running_loop()
    key = (os.getpid(), s.redis_url, f"loop:{id(loop)}")
    entry = _clients.get(key)
    if entry is None or entry[0] is not loop:
        import redis.asyncio
        from redis.asyncio.retry import Retry as AsyncRetry

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            s.redis_url, decode_responses=True, max_connections=ASYNC_CONNECTIONS, timeout=None,
            health_check_interval=30, retry=retry_policy(s, AsyncRetry), retry_on_error=[ConnectionError, TimeoutError])
        entry = _clients[key] = (loop, redis.asyncio.Redis(connection_pool=pool))
    return entry[1]


def retry_policy(s: Settings, cls: Any = Retry) -> Any:
    """Without Sentinel too, a command that finds Redis gone (a restart) is retried for about
    `redis_failover_s` before the error reaches the caller: a step that fails half-way through its
    bookkeeping would leave its job to a lease (120 s), and a worker rides through a restart instead
    (the same reasoning as for a failover above makes retrying safe). `cls`: redis-py's Retry, or
    redis.asyncio's (editq.aio's polls)."""
    return cls(ExponentialBackoff(cap=BACKOFF_CAP_S, base=0.05), max(1, int(s.redis_failover_s / BACKOFF_CAP_S)))


def probe_client() -> Any:
    """A client for health probes: the same Redis (or the primary the sentinels name) with 2 s timeouts and no
    retries, so a probe answers within seconds when Redis is gone (the working client retries for
    `redis_failover_s`). One per process."""
    s = get_settings()
    key = (os.getpid(), s.redis_url, "probe:" + (s.redis_sentinels or ""))
    client = _clients.get(key)
    if client is None:
        if s.redis_sentinels:
            client = sentinel_client(s, s.redis_url, probe=True)
        else:
            client = redis.Redis.from_url(s.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=None)
        _clients[key] = client
    return client


def sentinel_client(s: Settings, url: str, probe: bool = False) -> Any:
    """The primary named `redis_sentinel_master`, through the sentinels; db, username and password from `url`.
    `probe`: short timeouts and no retries (health checks)."""
    opts = redis.connection.parse_url(url)
    sentinel_kwargs = {"socket_timeout": 2.0}
    if s.redis_sentinel_password is not None:
        sentinel_kwargs["password"] = s.redis_sentinel_password.get_secret_value()  # type: ignore[assignment]
    sentinel = Sentinel(s.sentinel_hosts(), sentinel_kwargs=sentinel_kwargs, socket_timeout=5.0)
    return sentinel.master_for(
        s.redis_sentinel_master,
        decode_responses=True,
        db=int(opts.get("db", 0) or 0),
        username=opts.get("username"),
        password=opts.get("password"),
        socket_timeout=2.0 if probe else 10.0,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        **({"retry": Retry(NoBackoff(), 0)} if probe else {
            "retry": retry_policy(s), "retry_on_error": [ConnectionError, TimeoutError, ReadOnlyError]}),
    )


def replicated(r: Any, k: Any, what: str) -> int:
    """Wait until `redis_wait_replicas` replicas have every write made so far (Redis WAIT), at most
    `redis_wait_timeout_ms`. WAIT covers the writes of its own connection, so the same pipeline bumps
    `Keys.repl_mark` first: the primary's replication stream is ordered, so a replica that has that write
    has every earlier one, whichever connection made it. Returns the replicas that acknowledged. Too few is
    logged, not raised: a lost replica must not stop the work; it only widens the window described in
    docs/operations.md."""
    s = get_settings()
    want = s.wait_replicas()
    if want <= 0:
        return 0
    try:
        pipe = r.pipeline(transaction=False)
        pipe.incr(k.repl_mark)
        pipe.wait(want, s.redis_wait_timeout_ms)
        got = int(pipe.execute()[-1])
    except redis.RedisError as exc:
        log.warning("replication not confirmed", what=what, error=str(exc)[:200])
        return 0
    if got < want:
        log.warning("replication not confirmed", what=what, replicas=got, wanted=want)
    return got
