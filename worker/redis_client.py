"""One Redis connection pool per process (re-created after fork)."""

from __future__ import annotations

import os
from typing import Any

import redis

from schemas.settings import get_settings

_clients: dict[tuple[int, str], Any] = {}


def get_redis(url: str | None = None) -> Any:
    """A decode_responses client. Typed Any: redis-py's stubs cannot express that replies are str."""
    url = url or get_settings().redis_url
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)
        _clients[key] = client
    return client
