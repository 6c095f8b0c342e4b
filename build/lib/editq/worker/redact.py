"""The one redactor: every secret editq knows is replaced by `***` in any text that leaves a process.

Secrets are registered when a process starts (worker/startup.py: every `SecretStr` of every provider's
settings, the webhook secret, the S3 keys) and when a provider client is built; `redact()` is applied to
provider error reasons (`ProviderError`), to every log line (a structlog processor, and a record factory for
the standard library's loggers, Celery's included: worker/logging.py) and to anything else that quotes a
provider's answer. Keeping one registry means a new provider's key is redacted everywhere the moment its
settings are read. Webhook URL tokens are per job, so they are not registered: the value of any `token`
query parameter (plain or percent-encoded inside another URL) is hidden instead.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

MIN_SECRET_LEN = 6  # shorter values would redact ordinary words; such keys are refused by providers anyway

_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def register(*secrets: str | None) -> None:
    """Add secrets (None and short values are ignored; surrounding white space is registered too)."""
    global _secrets, _pattern
    new = {s for s in secrets if s and len(s) >= MIN_SECRET_LEN}
    new |= {s.strip() for s in new if len(s.strip()) >= MIN_SECRET_LEN}
    if new <= _secrets:
        return
    with _lock:
        _secrets = _secrets | new
        # longest first, so a secret that contains another is replaced whole
        _pattern = re.compile("|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True)))


def registered() -> Iterable[str]:
    return _secrets


# `token=...` in a URL, or `token%3D...` / `token%253D...` when that URL is itself a query value
_TOKEN = re.compile(r"(?i)(token(?:=|%3D|%253D))[^&\s\"'<>%]+")


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`, and the value of every `token` URL parameter."""
    if not text:
        return text
    if "oken" in text:
        text = _TOKEN.sub(r"\1***", text)
    pattern = _pattern
    if pattern is None:
        return text
    return pattern.sub("***", text)
