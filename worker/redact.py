"""The one redactor: every secret editq knows is replaced by `***` in any text that leaves a process.

Secrets are registered when settings are loaded (every `SecretStr` of a provider's settings, the S3
keys); `redact()` is applied to provider error reasons (`ProviderError`), to log lines (a structlog
processor) and to anything else that quotes a provider's answer. Keeping one registry means a new
provider's key is redacted everywhere the moment its settings are read.
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


def redact(text: str) -> str:
    """`text` with every registered secret replaced by `***`."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub("***", text)
