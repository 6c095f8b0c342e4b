"""Every Redis key editq uses, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.settings import get_settings


@dataclass(frozen=True)
class Keys:
    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:jobs"

    def batch_errors(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:errors"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def request(self, provider: str, request_id: str) -> str:
        return f"{self.prefix}:req:{provider}:{request_id}"

    def pending(self, provider: str, lane: str) -> str:
        return f"{self.prefix}:pending:{provider}:{lane}"

    def slots(self, provider: str) -> str:
        return f"{self.prefix}:slots:{provider}"

    def rpm(self, provider: str) -> str:
        return f"{self.prefix}:rpm:{provider}"

    def backoff(self, provider: str) -> str:
        return f"{self.prefix}:backoff:{provider}"

    def circuit(self, provider: str) -> str:
        return f"{self.prefix}:circuit:{provider}"

    def circuit_fails(self, provider: str) -> str:
        """Consecutive non-terminal failures of a provider (the circuit opens at policy.CIRCUIT_FAILURES)."""
        return f"{self.prefix}:circuit:{provider}:fails"

    def poll_backoff(self, provider: str) -> str:
        """Set when a poll was answered with Retry-After: the tick holds the provider's polls meanwhile."""
        return f"{self.prefix}:backoff:{provider}:poll"

    def webhook_seen(self, provider: str, delivery_id: str) -> str:
        return f"{self.prefix}:whseen:{provider}:{delivery_id}"

    @property
    def providers(self) -> str:
        """Set of providers that have ever had pending work (the tick pumps each)."""
        return f"{self.prefix}:providers"

    @property
    def inflight(self) -> str:
        return f"{self.prefix}:inflight"

    @property
    def retry(self) -> str:
        return f"{self.prefix}:retry"

    @property
    def ready(self) -> str:
        return f"{self.prefix}:ready"

    @property
    def collecting(self) -> str:
        return f"{self.prefix}:collecting"

    @property
    def finalize(self) -> str:
        return f"{self.prefix}:finalize"

    @property
    def tick_lock(self) -> str:
        return f"{self.prefix}:lock:tick"

    # OpenAI Batch (providers/openai_batch, through worker/batch_ingest.py): per provider batch
    def oaib_meta(self, batch_id: str) -> str:
        """Hash: how many lines the provider batch has (cancel counts against it), when it was created."""
        return f"{self.prefix}:oaib:{batch_id}:meta"

    def oaib_status(self, batch_id: str) -> str:
        """The last `GET /batches/{id}` answer, shared by every poller for status_ttl_s."""
        return f"{self.prefix}:oaib:{batch_id}:status"

    def oaib_results(self, batch_id: str) -> str:
        """Hash custom_id -> the job's record (staged output keys, usage, or the classified error)."""
        return f"{self.prefix}:oaib:{batch_id}:results"

    def oaib_lock(self, batch_id: str) -> str:
        """The ingest lock: one worker reads a batch's files at a time."""
        return f"{self.prefix}:oaib:{batch_id}:lock"

    def oaib_ingested(self, batch_id: str) -> str:
        """Set (to the batch's final status) once both files have been read whole."""
        return f"{self.prefix}:oaib:{batch_id}:ingested"

    def oaib_cancelled(self, batch_id: str) -> str:
        """Set of custom_ids cancelled by editq (the batch is cancelled when all are)."""
        return f"{self.prefix}:oaib:{batch_id}:cancelled"

def keys() -> Keys:
    return Keys(get_settings().key_prefix)
