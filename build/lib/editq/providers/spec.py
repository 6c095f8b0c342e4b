"""What editq knows about a provider besides its protocol: name, settings, capabilities, hosts.

Token and per-image prices are settings of the providers that bill by them (e.g. `EDITQ_OPENAI_PRICE_*`).

Each provider folder (`providers/<name>/__init__.py`) defines one `SPEC`. Everything that lists
providers (the local stack's environment, compose, `infra/env.example`, the README's table, the
docs index) is generated from the specs or checked against them by a test (tests/test_specs.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

if TYPE_CHECKING:
    from editq.providers.pricing import PriceModel
    from editq.providers.protocol import ProviderProtocol


class ProviderSettings(BaseSettings):
    """Common knobs; each provider subclasses this with its own env prefix (e.g. EDITQ_FAL_).

    `auth_hosts`: hosts besides `base_url`'s that may receive the API key (Replicate's output CDN); an
    entry with a leading dot (`.replicate.delivery`) also covers every host under it.
    The client refuses to send credentials anywhere else, whatever an answer names."""

    api_key: SecretStr | None = None
    base_url: str = ""
    concurrency: int = 8
    rpm: int = 0
    webhooks: bool = True
    timeout_s: float = 30.0
    auth_hosts: list[str] = []


@dataclass(frozen=True)
class ProviderSpec:
    """A provider's folder is its package (`package=__name__` in its `__init__.py`): the folder's name is
    the provider's name, `protocol.py` holds its ProviderProtocol, `emulator.py` the sandbox's `build`,
    `cases.py` its contract cases and `README.md` its page (with the README table's cells)."""

    package: str
    settings_cls: type[ProviderSettings]
    sandbox_path: str = ""  # where the sandbox serves this provider's API; "" = "/{name}"; base_url = sandbox + this
    sandbox_key: str = "sandbox-key"  # a placeholder key the sandbox accepts
    sandbox_env: dict[str, str] = field(default_factory=dict)  # more settings for the local stack;
    # "{sandbox}" in a value is the sandbox's base URL
    synchronous: bool = False  # the submit call itself returns the images (own queue, cap-bounded)
    webhooks: bool = True  # the provider can deliver signed webhooks
    batches: bool = False  # the protocol groups many jobs into one provider request (`submit_many`)
    auth_scheme: str = "Bearer"  # Authorization scheme (fal and ModelRunner: "Key")
    doc: str = "README.md"  # the provider's doc page, inside its folder
    default: bool = False  # the provider a job gets when it names none

    def protocol_class(self) -> type[ProviderProtocol]:
        """The ProviderProtocol subclass named for this provider in `{package}.protocol`."""
        from editq.providers.protocol import ProviderProtocol

        module = importlib.import_module(f"{self.package}.protocol")
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, ProviderProtocol) and value.__module__ == module.__name__
                    and getattr(value, "name", None) == self.name):
                return value
        raise LookupError(f"{module.__name__} defines no ProviderProtocol named {self.name!r}")

    def load_protocol(self, settings: ProviderSettings | None = None) -> ProviderProtocol:
        return self.protocol_class()(settings or self.settings_cls())

    def price_model(self, settings: ProviderSettings | None = None) -> PriceModel | None:
        """How this provider bills: `price_model(settings)` of `{package}.pricing`, None when the folder has
        no pricing module (such a provider's jobs cost nothing editq knows of; a budget refuses them)."""
        name = f"{self.package}.pricing"
        if importlib.util.find_spec(name) is None:
            return None
        build = importlib.import_module(name).price_model
        return build(settings or self.settings_cls())  # type: ignore[no-any-return,unused-ignore]

    def emulator_module(self) -> str | None:
        """`{package}.emulator` when the folder has one (its `build(state)` is mounted by the sandbox)."""
        name = f"{self.package}.emulator"
        return name if importlib.util.find_spec(name) is not None else None

    @property
    def name(self) -> str:
        """The folder's name: `providers.fal` -> `fal`."""
        return self.package.rsplit(".", 1)[-1]

    @property
    def sandbox_prefix(self) -> str:
        return self.sandbox_path or f"/{self.name}"

    @property
    def key_env(self) -> str:
        """The variable users set the key in: the first name the settings' `api_key` is read from."""
        return next(_env_names(self.settings_cls, only="api_key"))

    @property
    def folder(self) -> str:
        """The provider's folder, relative to the repository root (`providers/fal`)."""
        return self.package.replace(".", "/")

    def env_vars(self) -> list[str]:
        """Every environment variable the provider's settings read, in field order."""
        return list(_env_names(self.settings_cls))

    def local_env(self, sandbox: str) -> dict[str, str]:
        """The settings that point this provider at the sandbox at `sandbox` (the local stack's)."""
        env = {f"{self.env_prefix()}BASE_URL": sandbox.rstrip("/") + self.sandbox_prefix}
        env[self.key_env] = self.sandbox_key
        env.update({k: v.replace("{sandbox}", sandbox.rstrip("/")) for k, v in self.sandbox_env.items()})
        return env

    def env_prefix(self) -> str:
        return str(self.settings_cls.model_config.get("env_prefix", ""))


def _env_names(cls: type[BaseSettings], only: str | None = None) -> Iterator[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    for name, info in cls.model_fields.items():
        if only is not None and name != only:
            continue
        alias: Any = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    yield choice
        elif isinstance(alias, str):
            yield alias
        else:
            yield (prefix + name).upper()


def host_of(url: str) -> str:
    """`host[:port]` of a URL, lower case ('' for a relative path)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if host and parts.port else host


def credential_hosts(settings: ProviderSettings) -> frozenset[str]:
    """The hosts that may receive this provider's key: base_url's and the configured `auth_hosts`."""
    extra = getattr(settings, "auth_hosts", None) or []  # settings classes outside ProviderSettings have none
    hosts = {host_of(settings.base_url)} | {h.lower() for h in extra}
    return frozenset(h for h in hosts if h)
