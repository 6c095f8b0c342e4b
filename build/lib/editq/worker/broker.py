"""Kombu's Redis transport, with channels that fail like a lost connection once their connection is gone.

When the broker drops (a Redis restart), Celery closes the connection and opens a new one. A task that
was running meanwhile (threads pool) then acknowledges its message on the old channel, whose
connection parameters kombu has already released: `_connparams` raised
`AttributeError('NoneType' object has no attribute 'hostname')`, which is not a connection error,
so Celery called it unrecoverable and the worker process ended. Here that is a `redis.ConnectionError`:
Celery logs "Couldn't ack" and carries on (the message stays in the unacked set and is restored after
the visibility timeout; editq never depends on it: the tick re-sends every wake-up, and a job's lease,
not its task, recovers a lost step).
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("this channel's broker connection was closed (the broker went away)")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(kombu_redis.SentinelChannel):
    """The same for the Sentinel transport (`sentinel://`, EDITQ_REDIS_SENTINELS): a failover drops the
    broker connection exactly like a restart does."""

    def _connparams(self, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise redis.ConnectionError("this channel's broker connection was closed (the broker went away)")
        return super()._connparams(asynchronous=asynchronous)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = "editq.worker.broker:Transport"
SENTINEL_TRANSPORT = "editq.worker.broker:SentinelTransport"


def transport_for(url: str) -> str | None:
    """The transport Celery should use for a broker URL: ours for Redis and Sentinel, Celery's choice
    otherwise."""
    scheme = url.split("://", 1)[0]
    if scheme in ("redis", "rediss"):
        return TRANSPORT
    return SENTINEL_TRANSPORT if scheme == "sentinel" else None
