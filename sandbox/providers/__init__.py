"""Provider registry of the sandbox: one emulator per provider, mounted in order by ``create_app``.

Each provider's emulator lives in its folder (``providers/<name>/emulator.py``) and builds a
``ProviderMount`` from the sandbox state (see :mod:`sandbox.state`). The sandbox reads only the specs,
never a provider's protocol or the engine: it stands apart from the worker so it can catch the worker's
mistakes instead of sharing them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from editq.sandbox.state import ProviderMount, SandboxState

ProviderBuilder = Callable[[SandboxState], ProviderMount]


def builders() -> list[ProviderBuilder]:
    """The emulators of every registered provider (plugins from EDITQ_PROVIDER_MODULES included)."""
    from editq import providers

    out: list[ProviderBuilder] = []
    for spec in providers.specs():
        module = spec.emulator_module()
        if module is not None:
            out.append(importlib.import_module(module).build)
    return out


__all__ = ["ProviderBuilder", "builders"]
