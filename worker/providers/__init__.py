"""Provider adapters, one module each, all implementing `worker.providers.base.ProviderAdapter`."""

from __future__ import annotations

import importlib
from functools import cache

from worker.providers.base import ProviderAdapter

# name -> "module:Class". Adding a provider = one module + one line here.
REGISTRY: dict[str, str] = {
    "fal": "worker.providers.fal:FalAdapter",
    "replicate": "worker.providers.replicate:ReplicateAdapter",
}


def names() -> list[str]:
    return list(REGISTRY)


@cache
def get_adapter(name: str) -> ProviderAdapter:
    try:
        target = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
