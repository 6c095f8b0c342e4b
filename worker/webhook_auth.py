"""Binding a webhook URL to its job: the per-job token, and which providers take deliveries at all.

Every webhook URL editq gives a provider is `{EDITQ_WEBHOOK_BASE_URL}/webhooks/{provider}?job={job_id}&token={t}`
with `t = HMAC-SHA256(EDITQ_WEBHOOK_SECRET, job_id)` (base64url). The token is derived, not stored: nothing
per job is kept for it, it never reaches Redis, and the receiver checks it (constant time) before anything
else, so a delivery can only touch the job whose URL it was sent to, whoever signed it. Tokens are redacted
from every log line and error reason (`worker/redact.py`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlencode

from editq import providers
from editq.schemas.settings import Settings, get_settings

JOB_PARAM = "job"
TOKEN_PARAM = "token"  # worker/redact.py hides the value of any `token=` query parameter
_CONTEXT = b"editq-webhook-v1:"  # keeps these MACs apart from any other use of the same secret


class WebhookSecretMissing(RuntimeError):
    """Webhooks are on but EDITQ_WEBHOOK_SECRET is not set."""


def _secret(settings: Settings) -> bytes:
    if settings.webhook_secret is None or not settings.webhook_secret.get_secret_value():
        raise WebhookSecretMissing(
            "EDITQ_WEBHOOK_SECRET is not set: webhook URLs are bound to their job with a token derived from it "
            "(set the same random value, e.g. `openssl rand -hex 32`, on every worker and receiver)"
        )
    return settings.webhook_secret.get_secret_value().encode()


def job_token(job_id: str, settings: Settings | None = None) -> str:
    """The token of `job_id`'s webhook URL (43 characters, URL-safe)."""
    mac = hmac.new(_secret(settings or get_settings()), _CONTEXT + job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def token_ok(job_id: str, token: str, settings: Settings | None = None) -> bool:
    """Whether `token` is `job_id`'s (compared in constant time)."""
    return hmac.compare_digest(job_token(job_id, settings).encode(), token.encode("utf-8", "replace"))


def delivery_url(base_url: str, provider: str, job_id: str, settings: Settings | None = None) -> str:
    """The webhook URL a provider is given for one job."""
    query = urlencode({JOB_PARAM: job_id, TOKEN_PARAM: job_token(job_id, settings)})
    return f"{base_url.rstrip('/')}/webhooks/{provider}?{query}"


def receives_webhooks(name: str, settings: Settings | None = None) -> bool:
    """The receiver takes deliveries for this provider: it delivers webhooks (spec), they are on (global and
    the provider's `EDITQ_<P>_WEBHOOKS`) and the provider is configured (has a key). Else: 404."""
    s = settings or get_settings()
    try:
        spec = providers.spec_of(name)
    except KeyError:
        return False
    ps = providers.settings_of(name)
    return bool(s.webhooks_enabled and spec.webhooks and ps.webhooks and ps.api_key is not None)
