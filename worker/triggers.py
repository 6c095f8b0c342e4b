"""Wake-ups for the pipeline's tasks, coalesced so a burst of events sends one task, not thousands."""

from __future__ import annotations

from schemas.settings import get_settings
from worker.redis_client import get_redis

COALESCE_MS = 1000
PUMP_HOLD_MS = 15_000  # a running pump holds its flag this long (refreshed each round; expires if it dies)


def queue_name(kind: str = "") -> str:
    qp = get_settings().queue_prefix
    return f"{qp}.{kind}" if kind else qp


class Kicker:
    """Sends Celery tasks by name (no import of the task modules, so the receiver stays light)."""

    def __init__(self) -> None:
        from worker.celery_app import app

        self.app = app
        self.r = get_redis()
        self.prefix = get_settings().key_prefix

    def _flag(self, name: str) -> str:
        return f"{self.prefix}:kick:{name}"

    def flag(self, name: str) -> str:
        """The Redis key of a kick flag (held while a task for `name` is queued or pumping)."""
        return self._flag(name)

    def _coalesced(self, name: str) -> bool:
        """Take the kick flag for `name` unless a kick or a running pump holds it."""
        return bool(self.r.set(self._flag(name), "1", nx=True, px=COALESCE_MS))

    def send_dispatch(self, provider: str, synchronous: bool = False) -> None:
        """Send the dispatch task whose flag the caller already set (the state machine's move does)."""
        self.app.send_task("editq.dispatch", args=[provider], queue=queue_name("sync") if synchronous else queue_name())

    def send_collect(self) -> None:
        """Send the collect task whose flag the caller already set."""
        self.app.send_task("editq.collect", args=[], queue=queue_name())

    def clear(self, name: str) -> None:
        self.r.delete(self._flag(name))

    def hold(self, name: str) -> None:
        """A pump for `name` is running: kicks are absorbed by it instead of sending tasks."""
        self.r.set(self._flag(name), "1", px=PUMP_HOLD_MS)

    def take(self, name: str) -> bool:
        """Hold the flag unless someone else did (then their kick already sent a task)."""
        return bool(self.r.set(self._flag(name), "1", nx=True, px=PUMP_HOLD_MS))

    def dispatch(self, provider: str, synchronous: bool = False) -> None:
        if self._coalesced(f"dispatch:{provider}"):
            self.send_dispatch(provider, synchronous)

    def collect(self) -> None:
        if self._coalesced("collect"):
            self.send_collect()

    def poll(self, provider: str, job_ids: list[str]) -> None:
        self.app.send_task("editq.poll", args=[provider, job_ids], queue=queue_name())

    def finalize(self, batch_id: str) -> None:
        self.app.send_task("editq.finalize", args=[batch_id], queue=queue_name())
