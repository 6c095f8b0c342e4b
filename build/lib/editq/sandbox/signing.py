"""Webhook signers.

A signer turns ``(raw body, request id, timestamp)`` into the HTTP headers a provider would send.
The runner calls :meth:`WebhookSigner.sign` for every delivery attempt (retries and duplicates are
re-signed with a fresh timestamp); ``valid=False`` asks for a signature that must NOT verify
(signed with a key/secret the receiver does not know), for the bad-signature fault.

Implemented: fal (Ed25519 + JWKS) and Standard Webhooks (HMAC-SHA256, used by ModelRunner and
Replicate).  WaveSpeed's ``v3,`` hex scheme can be added as another class with the same method.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Protocol

from nacl.signing import SigningKey


class WebhookSigner(Protocol):
    def sign(self, body: bytes, *, request_id: str, timestamp: int, valid: bool = True) -> dict[str, str]:
        """Headers (besides Content-Type) to send with ``body``."""
        ...


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _derive(seed: int, label: str) -> bytes:
    return hashlib.sha256(f"editq-sandbox:{label}:{seed}".encode()).digest()


class Ed25519KeyRing:
    """The key published in the JWKS plus an "unknown" key that is never published."""

    def __init__(self, seed: int, label: str = "fal") -> None:
        self.signing_key = SigningKey(_derive(seed, f"{label}:ed25519"))
        self.unknown_key = SigningKey(_derive(seed, f"{label}:ed25519:unknown"))

    @staticmethod
    def kid(key: SigningKey) -> str:
        return hashlib.sha256(bytes(key.verify_key)).hexdigest()[:16]

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def jwks(self) -> dict[str, Any]:
        key = self.signing_key
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(bytes(key.verify_key)),
                    "kid": self.kid(key),
                    "use": "sig",
                    "alg": "EdDSA",
                }
            ]
        }


def fal_signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """``request_id\\nuser_id\\ntimestamp\\nhex(sha256(body))`` as UTF-8."""
    return "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()]).encode("utf-8")


class FalWebhookSigner:
    """fal: X-Fal-Webhook-{Request-Id,User-Id,Timestamp,Signature}; signature = hex(Ed25519)."""

    def __init__(self, keys: Ed25519KeyRing, user_id: str) -> None:
        self.keys = keys
        self.user_id = user_id

    def sign(self, body: bytes, *, request_id: str, timestamp: int, valid: bool = True) -> dict[str, str]:
        ts = str(timestamp)
        key = self.keys.signing_key if valid else self.keys.unknown_key
        signature = key.sign(fal_signed_message(request_id, self.user_id, ts, body)).signature
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": self.user_id,
            "X-Fal-Webhook-Timestamp": ts,
            "X-Fal-Webhook-Signature": signature.hex(),
        }


class StandardWebhookSigner:
    """Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<b64>``.

    HMAC-SHA256 over ``{id}.{timestamp}.{body}`` keyed with the base64 part of ``whsec_...``.
    The message id is ``msg_<request_id>`` so retries and duplicates share it (dedupe key).
    """

    def __init__(self, seed: int, label: str) -> None:
        self.secret_bytes = _derive(seed, f"{label}:whsec")[:24]
        self.unknown_bytes = _derive(seed, f"{label}:whsec:unknown")[:24]

    @property
    def secret(self) -> str:
        return "whsec_" + base64.b64encode(self.secret_bytes).decode("ascii")

    def sign(self, body: bytes, *, request_id: str, timestamp: int, valid: bool = True) -> dict[str, str]:
        msg_id = f"msg_{request_id}"
        key = self.secret_bytes if valid else self.unknown_bytes
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(mac).decode("ascii"),
        }
