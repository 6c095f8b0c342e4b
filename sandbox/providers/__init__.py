"""Provider registry of the sandbox: one emulator per provider, mounted in order by ``create_app``.

Each provider's emulator lives in its folder (``providers/<name>/emulator.py``, named by its spec's
``emulator``) and builds a ``ProviderMount`` from the sandbox state (see :mod:`sandbox.state`). The
sandbox reads only the specs, never a provider's protocol or the engine: it stands apart from the
worker so it can catch the worker's mistakes instead of sharing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sandbox.providers import modelrunner, openai, openai_batch, oxen, wavespeed
from sandbox.state import ProviderMount, SandboxState

ProviderBuilder = Callable[[SandboxState], ProviderMount]

_NOT_MOVED: dict[str, ProviderBuilder] = {
    "openai": openai.build,
    "openai_batch": openai_batch.build,
    "oxen": oxen.build,
    "wavespeed": wavespeed.build,
    "modelrunner": modelrunner.build,
}


def builders() -> list[ProviderBuilder]:
    """The emulators of every registered provider (plugins from EDITQ_PROVIDER_MODULES included)."""
    import providers

    out: list[ProviderBuilder] = []
    for spec in providers.specs():
        if spec.emulator:
            module, fn = spec.emulator.split(":")
            out.append(getattr(importlib.import_module(module), fn))
        elif spec.name in _NOT_MOVED:
            out.append(_NOT_MOVED[spec.name])
    return out


__all__ = ["ProviderBuilder", "builders"]
