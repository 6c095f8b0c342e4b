"""Sandbox configuration: one pydantic model, settable from env, CLI and at runtime.

Precedence: field defaults < ``EDITQ_SANDBOX_<FIELD>`` environment variables < CLI flags
< runtime ``PATCH /_sandbox/config``.  Fields in :data:`STARTUP_ONLY` cannot be changed at runtime.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "EDITQ_SANDBOX_"

Rate = float


def _rate(description: str) -> Any:
    return Field(default=0.0, ge=0.0, le=1.0, description=description)


class SandboxConfig(BaseModel):
    """Behaviour of the provider sandbox.  Immutable; updates produce a new instance."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- server -----------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Bind address (startup only).")
    port: int = Field(default=8900, ge=0, le=65535, description="Bind port (startup only).")
    public_url: str | None = Field(
        default=None,
        description="Base URL put in response/status/file URLs. None: derived from the Host header "
        "the client used, i.e. http://{host}:{port}.",
    )
    files_dir: str | None = Field(
        default=None, description="Directory for generated outputs (startup only; default: a temp dir)."
    )
    render_workers: int = Field(
        default=0, ge=0, description="Render thread-pool size (startup only; 0 = min(8, cpus + 2))."
    )
    log_level: str = Field(default="warning", description="uvicorn log level (startup only).")

    # --- job timing -------------------------------------------------------------------------
    latency_s: float = Field(default=2.0, ge=0.0, description="Time a job spends IN_PROGRESS.")
    jitter_s: float = Field(default=0.5, ge=0.0, description="Uniform extra IN_PROGRESS time.")
    concurrency: int = Field(
        default=8, ge=1, description="Per-provider cap on IN_PROGRESS jobs; the rest wait IN_QUEUE."
    )
    seed: int = Field(default=0, description="Seeds jitter and fault dice (and the signing keys).")

    # --- submit-time faults (request NOT accepted) ---------------------------------------------
    submit_5xx_rate: Rate = _rate("Fraction of submits answered 503 (ingress error).")
    submit_429_rate: Rate = _rate("Fraction of submits answered 429 with Retry-After.")
    retry_after_s: float = Field(default=1.0, ge=0.0, description="Retry-After for 429 (rounded up).")
    submit_timeout_rate: Rate = _rate("Fraction of submits held timeout_hold_s then answered 504.")
    timeout_hold_s: float = Field(default=10.0, ge=0.0, description="Hold time before a 504 fault.")

    # --- faults after admission (sandbox/http_faults.py; every provider, honour provider_faults) ----------
    poll_5xx_rate: Rate = _rate("Fraction of status/result GETs answered 503.")
    poll_429_rate: Rate = _rate("Fraction of status/result GETs answered 429 with Retry-After.")
    download_5xx_rate: Rate = _rate("Fraction of output file GETs (/files/...) answered 503.")
    download_429_rate: Rate = _rate("Fraction of output file GETs answered 429 with Retry-After.")
    submit_reset_rate: Rate = _rate(
        "Fraction of submits (POSTs) accepted and run, whose connection is then dropped before the answer's body."
    )

    # --- job faults ---------------------------------------------------------------------------
    job_failure_rate: Rate = _rate("Fraction of accepted jobs that complete with a provider error.")
    provider_faults: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='Per-provider overrides of *_rate faults, e.g. {"replicate": {"submit_5xx_rate": 0}} (JSON on '
        "CLI/env); honoured by providers that read rates through rate().",
    )

    # --- webhook faults -------------------------------------------------------------------------
    webhook_lost_rate: Rate = _rate("Fraction of webhooks never sent.")
    webhook_duplicate_rate: Rate = _rate("Fraction of webhooks delivered twice.")
    webhook_bad_signature_rate: Rate = _rate("Fraction of webhooks signed with a key not in the JWKS.")
    webhook_delay_s: float = Field(default=0.0, ge=0.0, description="Delay before the first delivery.")
    webhook_late_rate: Rate = _rate("Fraction of webhooks held webhook_late_s before the first delivery.")
    webhook_late_s: float = Field(default=40.0, ge=0.0, description="Hold of a late webhook (on top of the delay).")
    webhook_redirect_rate: Rate = _rate(
        "Fraction of webhooks sent through a 307 redirect (/_sandbox/redirect) to their URL; the sender does "
        "not follow redirects (as ModelRunner documents), so every attempt of such a delivery fails."
    )
    webhook_retry: bool = Field(default=True, description="Retry failed deliveries with backoff.")
    webhook_retry_attempts: int = Field(default=3, ge=0, le=20, description="Retries after the first try.")
    webhook_retry_backoff_s: float = Field(default=0.5, ge=0.0, description="First retry delay (doubles).")
    webhook_timeout_s: float = Field(default=10.0, gt=0.0, description="Per-delivery HTTP timeout.")

    # --- rendering / inputs ---------------------------------------------------------------------
    render: Literal["real", "cached"] = Field(
        default="real", description="real: edit with Pillow; cached: pre-rendered bytes per (w,h,fmt)."
    )
    max_input_bytes: int = Field(default=50 * 1024 * 1024, ge=1, description="Per-input size cap.")
    input_timeout_s: float = Field(default=15.0, gt=0.0, description="Per-input download timeout.")

    # --- provider identities -------------------------------------------------------------------
    fal_user_id: str = Field(default="sandbox-user", min_length=1, description="X-Fal-Webhook-User-Id.")
    openai_batch_expire_after_lines: int = Field(
        default=-1, ge=-1, description="OpenAI Batch: run only the first N lines, then end `expired` (-1: never)."
    )

    @field_validator("provider_faults", mode="before")
    @classmethod
    def _provider_faults(cls, value: Any) -> Any:
        value = json.loads(value) if isinstance(value, str) else value
        for rates in value.values() if isinstance(value, dict) else ():
            for name, rate in rates.items() if isinstance(rates, dict) else ():
                if not name.endswith("_rate") or name not in cls.model_fields or not 0.0 <= float(rate) <= 1.0:
                    raise ValueError(f"{name}={rate!r}: expected a *_rate field name and a rate from 0 to 1")
        return value

    def rate(self, provider: str, name: str) -> float:
        """Fault rate ``name`` for ``provider``: its ``provider_faults`` override if set, else the global field."""
        return float(self.provider_faults.get(provider, {}).get(name, getattr(self, name)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SandboxConfig:
        """Build from ``EDITQ_SANDBOX_*`` variables, then apply ``overrides`` (e.g. CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = None if raw == "" and name in _NULLABLE else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    def updated(self, patch: Mapping[str, Any], *, runtime: bool = True) -> SandboxConfig:
        """Return a validated copy with ``patch`` applied.

        Raises ``ValueError`` for startup-only fields when ``runtime`` and
        ``pydantic.ValidationError`` for invalid values.
        """
        if runtime:
            frozen = sorted(set(patch) & STARTUP_ONLY)
            if frozen:
                raise ValueError(f"cannot be changed at runtime: {', '.join(frozen)}")
        data = self.model_dump()
        data.update(patch)
        return type(self).model_validate(data)


_NULLABLE = {"public_url", "files_dir"}
STARTUP_ONLY = frozenset({"host", "port", "files_dir", "render_workers", "log_level"})


class ConfigHolder:
    """The current config plus change listeners (all on the event loop thread)."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._listeners: list[Callable[[SandboxConfig, SandboxConfig], None]] = []

    @property
    def current(self) -> SandboxConfig:
        return self._config

    def subscribe(self, listener: Callable[[SandboxConfig, SandboxConfig], None]) -> None:
        self._listeners.append(listener)

    def update(self, patch: Mapping[str, Any]) -> SandboxConfig:
        old = self._config
        new = old.updated(patch)
        self._config = new
        for listener in self._listeners:
            listener(old, new)
        return new


__all__ = ["STARTUP_ONLY", "ConfigHolder", "SandboxConfig", "ValidationError"]
