"""Checks every editq process makes before it starts work, and the registration of every secret for redaction.

* Keys: a key with a control character (a trailing newline from `echo key > file`, a tab) is refused with
  the variable's name, never its value. Sent as a header it would be refused by the HTTP client on every
  request (and, before, printed in tracebacks).
* Webhooks: workers that give providers webhook URLs and the receiver that checks them need
  `EDITQ_WEBHOOK_SECRET` (the per-job tokens are derived from it); with fal webhooks on, `EDITQ_FAL_USER_ID`
  (fal signs every account's deliveries with one key set).
The problems are returned as one line each; the CLI prints them and exits 2, the receiver refuses to start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from editq import providers
from editq.schemas.settings import Settings, get_settings
from editq.worker import redact

Role = Literal["worker", "receiver", "client"]
ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class StartupRefused(RuntimeError):
    """The configuration cannot work; the message names what to fix (never a secret's value)."""


def has_control_char(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def _secrets(settings: Settings) -> Iterator[tuple[str, str]]:
    """(the variable it comes from, the value) for every secret editq is configured with."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):  # the webhook secret, the sentinels' password
            yield (prefix + name).upper(), value.get_secret_value()
    for name in ("redis_url", "broker_url"):  # redis://user:password@host: the password
        password = urlsplit(getattr(settings, name) or "").password
        if password:
            yield f"the password in EDITQ_{name.upper()}", unquote(password)
    for var in ENV_SECRETS:
        if os.environ.get(var):
            yield var, os.environ[var]
    for spec in providers.specs():
        ps = providers.settings_of(spec.name)
        prefix = spec.env_prefix()
        for name in type(ps).model_fields:
            value = getattr(ps, name)
            if isinstance(value, SecretStr):
                var = spec.key_env if name == "api_key" else (prefix + name).upper()
                yield var, value.get_secret_value()


def is_secret_var(name: str) -> bool:
    """Whether an environment variable holds a secret (a key, a password, the webhook secret): not printed."""
    if name in ENV_SECRETS and name != "AWS_ACCESS_KEY_ID":
        return True
    upper = name.upper()
    return any(word in upper for word in ("KEY", "SECRET", "TOKEN", "PASSWORD")) and not upper.endswith("_KEY_PREFIX")


def register_secrets(settings: Settings | None = None) -> None:
    """Every configured secret into the one redactor (worker/redact.py), so no log line or error carries one."""
    redact.register(*(value for _, value in _secrets(settings or get_settings())))


def key_problems(settings: Settings) -> list[str]:
    return [f"{var} contains a control character (e.g. a trailing newline or a tab); remove it "
            "(the value is not shown)" for var, value in _secrets(settings) if has_control_char(value)]


def _fal_webhooks_on(settings: Settings, role: Role) -> bool:
    fal = providers.settings_of("fal") if "fal" in providers.names() else None
    if fal is None or not (settings.webhooks_enabled and fal.webhooks and fal.api_key is not None):
        return False
    return role == "receiver" or bool(settings.webhook_base_url)


def webhook_problems(settings: Settings, role: Role) -> list[str]:
    problems = []
    uses_webhooks = role == "receiver" or (role == "worker" and bool(settings.webhook_base_url)
                                           and settings.webhooks_enabled)
    if uses_webhooks and (settings.webhook_secret is None or not settings.webhook_secret.get_secret_value()):
        problems.append("EDITQ_WEBHOOK_SECRET is not set: webhook URLs are bound to their job by a token derived "
                        "from it; set the same random value (e.g. `openssl rand -hex 32`) on every worker and "
                        "receiver, or unset EDITQ_WEBHOOK_BASE_URL to poll only")
    fal = providers.settings_of("fal") if "fal" in providers.names() else None
    if role != "client" and _fal_webhooks_on(settings, role) and fal is not None and not getattr(fal, "user_id", None):
        problems.append("EDITQ_FAL_USER_ID is not set: fal signs every account's webhooks with the same keys, so "
                        "deliveries are only accepted for your fal user id (fal's X-Fal-Webhook-User-Id); set it, "
                        "or EDITQ_FAL_WEBHOOKS=false to poll fal only")
    return problems


def problems(role: Role, settings: Settings | None = None) -> list[str]:
    s = settings or get_settings()
    return key_problems(s) + (webhook_problems(s, role) if role != "client" else [])


def check(role: Role, settings: Settings | None = None) -> None:
    """Register the secrets for redaction, then raise StartupRefused naming every problem (one per line)."""
    s = settings or get_settings()
    register_secrets(s)
    found = problems(role, s)
    if found:
        raise StartupRefused("\n".join(found))
