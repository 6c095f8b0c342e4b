"""Provider registry: one builder per provider module, mounted in order by ``create_app``.

To add a provider, write ``sandbox/providers/<name>.py`` with ``build(state) -> ProviderMount``
(see :mod:`sandbox.state` and :mod:`sandbox.providers.fal`) and add one line below.
"""

from __future__ import annotations

from collections.abc import Callable

from sandbox.providers import fal, modelrunner, openai, openai_batch, oxen, replicate, wavespeed
from sandbox.state import ProviderMount, SandboxState

ProviderBuilder = Callable[[SandboxState], ProviderMount]

PROVIDERS: list[ProviderBuilder] = [
    fal.build,
    openai.build,
    openai_batch.build,
    oxen.build,
    wavespeed.build,
    modelrunner.build,
    replicate.build,
]

__all__ = ["PROVIDERS", "ProviderBuilder"]
