"""Runtime configuration, read from the environment (prefix `EDITQ_`) by pydantic-settings.

Provider-specific settings (keys, base URLs, limits) live beside each provider in
`providers/<name>/`; this module holds what every process shares.
"""

from __future__ import annotations

from functools import cached_property, lru_cache

from pydantic import AliasChoices, Field, PositiveFloat, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDITQ_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("EDITQ_REDIS_URL", "REDIS_URL")
    )
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url (amqp:// works).")
    redis_sentinels: str | None = Field(
        None, description="Redis Sentinel addresses, `host:port,host:port,...`. Set: editq and Celery find the "
        "primary through them (db and password still come from redis_url) and follow a failover."
    )
    redis_sentinel_master: str = Field("mymaster", description="The primary's name in the Sentinel configuration.")
    redis_sentinel_password: SecretStr | None = Field(None, description="Password of the sentinels themselves.")
    redis_wait_replicas: int | None = Field(
        None, ge=0, description="Replicas that must have a write that decides money (a submit about to be sent, a "
        "recorded request id, an enqueued chunk) before editq goes on (Redis WAIT). Default: 1 with Sentinel, else 0."
    )
    redis_wait_timeout_ms: int = Field(500, ge=1, description="How long one WAIT may take; then editq goes on.")
    redis_failover_s: float = Field(
        30.0, gt=0, description="How long a command keeps retrying while Redis restarts or (with Sentinel) the "
        "primary fails over."
    )
    submit_procs: int = Field(
        0, ge=0, description="Producer processes `editq submit` runs on one file, each a byte range of it "
        "(producer/split.py); 0: one per CPU for a file of at least 8 MB per process, else one."
    )
    key_prefix: str = Field("editq", description="Namespace of every Redis key editq writes.")
    queue_prefix: str = Field("editq", description="Namespace of the Celery queues.")

    s3_endpoint: str | None = Field(None, description="S3-compatible endpoint; None means AWS.")
    s3_bucket: str = "editq"
    s3_prefix: str = Field("outputs", description="Outputs land at {prefix}/{batch_id}/{job_id}/{n}.{ext}.")
    s3_inputs_prefix: str = Field("inputs", description="Content-addressed inputs: {prefix}/{sha256}.{ext}.")
    s3_region: str = "us-east-1"
    s3_public_endpoint: str | None = Field(
        None, description="Host providers use to fetch presigned inputs, when it differs from s3_endpoint."
    )
    presign_ttl_s: int = 6 * 3600

    webhook_base_url: str | None = Field(
        None, description="Public base URL of `editq webhooks`; unset = no webhooks, the poller only."
    )
    webhooks_enabled: bool = True
    webhook_tolerance_s: int = 300
    webhook_secret: SecretStr | None = Field(
        None, description="Server secret the per-job webhook tokens are derived from (HMAC of the job id); "
        "required by the receiver, and by workers when webhook_base_url is set. Never stored in Redis.",
    )
    webhook_max_body_bytes: int = Field(
        5 * 1024 * 1024, description="Larger deliveries are answered 413 before their body is read."
    )

    max_attempts: int = Field(3, description="Provider attempts per job for retryable failures.")
    retry_base_s: float = 2.0
    retry_max_s: float = Field(
        600.0, description="Longest back-off between two attempts (it doubles from retry_base_s up to this)."
    )
    retry_give_up_s: float = Field(
        12 * 3600.0, description="A retryable failure with no fallback provider left keeps being retried (every "
        "retry_max_s at most) until the job has been failing this long; then it fails. An outage shorter than "
        "this ends with the job done."
    )
    submit_lease_s: float = Field(120.0, description="A claim older than this with no request id is recovered.")
    sync_lease_margin_s: float = Field(60.0, description="Synchronous providers: claim lease = timeout_s + this.")
    poll_interval_s: float = Field(5.0, description="First poll delay (webhooks off); grows to poll_max_s.")
    poll_interval_webhook_s: float = Field(60.0, description="Safety-net poll delay when webhooks are on.")
    poll_max_s: float = 60.0
    poll_quiet_min_s: float = Field(
        5.0, description="With webhooks on, the first safety-net poll comes no sooner than this (or 1.5 x the "
        "provider's median latency)."
    )
    sweep_interval_s: float = Field(
        10.0, description="With webhooks on, each provider that has a request history (fal, Replicate) is swept "
        "this often while it holds jobs: one list of its recent requests finds completions whose webhook was "
        "lost, before the safety-net poll (0: off)."
    )
    sweep_margin_s: float = Field(
        60.0, description="A sweep lists from the oldest job the provider holds minus this (clock skew, the list's "
        "own lag)."
    )
    sweep_lookback_s: float = Field(3600.0, description="A sweep never lists further back than this.")
    sweep_max_pages: int = Field(10, description="Pages one sweep reads at most (the rest waits for the next "
                                 "sweep or the safety-net poll).")
    sweep_lease_s: float = Field(60.0, description="A sweep not finished within this frees its provider's lock.")
    collect_lease_s: float = Field(
        120.0, description="A collect that has not finished or failed within this is handed back and counted."
    )
    finalize_lease_s: float = Field(
        60.0, description="A batch manifest not written within this (the write failed, its worker was lost) is "
        "written again; the batch stays queued for it until a write succeeds."
    )
    provider_deadline_s: float = Field(3600.0, description="A job the provider holds longer than this fails.")
    tick_interval_s: float = 0.5
    worker_dead_after_s: float = Field(
        10.0, description="A worker whose heartbeat (every tick_interval_s) is older than this is dead: the "
        "submits and collects it had claimed are recovered at once instead of when their leases run out."
    )
    job_ttl_s: int = Field(14 * 86400, description="Redis keeps finished jobs this long (S3 keeps them forever).")

    submit_batch: int = Field(64, description="Jobs one dispatch task submits concurrently.")
    storage_outage_give_up_s: float = Field(
        3000.0, description="A collect that fails because our own S3 is unreachable (connection refused or "
        "reset, timeout, 5xx) does not use up the job's collect attempts while the provider's output is younger "
        "than this (50 min: fal and Replicate drop outputs about an hour after completion); after it, such "
        "failures count again and the job fails once its attempts are used up.",
    )
    storage_retry_max_s: float = Field(
        30.0, description="Longest wait between two collects of a job while our S3 is unreachable."
    )
    collect_batch: int = Field(32, description="Jobs one collect task stores concurrently.")
    collect_batch_dispatching: int = Field(
        4, description="The same while a dispatch pump is refilling provider slots (submits go first)."
    )
    interactive_reserve: float = Field(
        0.1, description="Share of each provider's concurrency cap that bulk jobs may not take "
        "(while the interactive lane is in use, see interactive_reserve_hold_s)."
    )
    interactive_reserve_hold_s: float = Field(
        600.0, description="The reserve is held while interactive jobs are queued and for this long after one "
        "was claimed; otherwise bulk may use the whole cap. inf: always held."
    )
    metrics_port: int = Field(
        9808, description="Port a worker serves /metrics, /livez, /readyz and /healthz on (0: off). The receiver "
        "serves them on its own port."
    )
    metrics_host: str = Field("0.0.0.0", description="Address the worker's metrics/health server binds.")
    tenant_budgets: dict[str, float] = Field(
        default_factory=dict, description="USD per tenant per UTC day, e.g. EDITQ_TENANT_BUDGETS='{\"acme\": 100}'; "
        "`editq budget --tenant` overrides one in Redis.",
    )
    tenant_budget_default: float | None = Field(
        None, description="USD per UTC day for a tenant not in tenant_budgets; unset = no cap for them."
    )
    tenant_weights: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Share of each provider's claims per tenant while several have jobs queued, "
        "e.g. EDITQ_TENANT_WEIGHTS='{\"acme\": 3, \"globex\": 1}' (acme gets 3 claims for globex's 1); the key \"\" "
        "is the jobs without a tenant.",
    )
    tenant_weight_default: float = Field(1.0, gt=0, description="Weight of a tenant not in tenant_weights.")
    max_input_bytes: int = 50 * 1024 * 1024
    max_input_pixels: int = Field(
        36_000_000, description="Inputs are decoded in full at enqueue; more pixels than this are refused "
        "(decompression bombs)."
    )
    max_output_bytes: int = 200 * 1024 * 1024
    allowed_private_hosts: str = Field(
        "", description="Comma list of exact host:port pairs that inputs and provider outputs may be fetched "
        "from although private (and over http://): the sandbox, a local S3. Everything else private is refused."
    )

    @field_validator("allowed_private_hosts")
    @classmethod
    def _allowed_private_hosts(cls, v: str) -> str:
        from editq.worker.netguard import allow_list

        allow_list(v)  # a malformed entry stops start-up with its name, not the first fetch
        return v

    @cached_property
    def private_allow_list(self) -> frozenset[tuple[str, int]]:
        from editq.worker.netguard import allow_list

        return allow_list(self.allowed_private_hosts)

    def sentinel_hosts(self) -> list[tuple[str, int]]:
        out = []
        for part in (self.redis_sentinels or "").split(","):
            host, _, port = part.strip().rpartition(":")
            if part.strip():
                out.append((host or "127.0.0.1", int(port)))
        return out

    def wait_replicas(self) -> int:
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinels else 0


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # values come from the environment
