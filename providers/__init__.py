"""Providers, one folder each: `providers/<name>/` holds its spec (`SPEC` in `__init__.py`), its pure
protocol, its sandbox emulator, its contract-test cases and its doc page.

Adding a provider = one folder + one line in REGISTRY (or, for a plugin outside this package, its
module in `EDITQ_PROVIDER_MODULES`, comma-separated). Everything else that lists providers reads
`specs()`.
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from typing import TYPE_CHECKING

from editq.providers.spec import ProviderSettings, ProviderSpec

if TYPE_CHECKING:
    from editq.providers.pricing import PriceModel
    from editq.providers.protocol import ProviderProtocol

# name -> the package whose `SPEC` describes it
REGISTRY: dict[str, str] = {
    "fal": "editq.providers.fal",
    "openai": "editq.providers.openai",
    "openai_batch": "editq.providers.openai_batch",
    "oxen": "editq.providers.oxen",
    "wavespeed": "editq.providers.wavespeed",
    "modelrunner": "editq.providers.modelrunner",
    "replicate": "editq.providers.replicate",
}

PLUGINS_ENV = "EDITQ_PROVIDER_MODULES"


def _targets() -> dict[str, str]:
    return _targets_for(os.environ.get(PLUGINS_ENV, ""))


@cache
def _targets_for(plugins: str) -> dict[str, str]:
    targets = dict(REGISTRY)
    for module in filter(None, (m.strip() for m in plugins.split(","))):
        targets[module.rsplit(".", 1)[-1]] = module
    return targets


@cache
def _load(target: str) -> ProviderSpec:
    spec = importlib.import_module(target).SPEC
    assert isinstance(spec, ProviderSpec), target
    return spec


def names() -> list[str]:
    return list(_targets())


def specs() -> list[ProviderSpec]:
    return [_load(t) for t in _targets().values()]


def spec_of(name: str) -> ProviderSpec:
    targets = _targets()
    if name not in targets:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(targets)}")
    return _load(targets[name])


@cache
def protocol_of(name: str) -> ProviderProtocol:
    """The provider's protocol with its settings read from the environment (once per process)."""
    return spec_of(name).load_protocol()


@cache
def price_model_of(name: str) -> PriceModel | None:
    """The provider's price model with its settings (prices are settings), once per process."""
    return spec_of(name).price_model(settings_of(name))


def settings_of(name: str) -> ProviderSettings:
    return protocol_of(name).settings


def cache_clear() -> None:
    """Forget loaded protocols and settings (tests and the local stack change the environment)."""
    protocol_of.cache_clear()
    price_model_of.cache_clear()
    _load.cache_clear()
    _targets_for.cache_clear()
