"""Wake-ups for the pipeline's tasks, coalesced so a burst of events sends one task, not thousands."""

from __future__ import annotations

from editq.schemas.settings import get_settings
from editq.worker.keys import keys
from editq.worker.redis_client import get_redis

COALESCE_MS = 1000
# A running pump holds its flag this long, refreshed each round (a round is at most STREAM_S, 2 s, plus the
# answers in flight). When its worker dies the flag outlives it by this much, and every kick meanwhile is
# absorbed: with 15 s, killing a worker that was pumping stalled collect (or a provider's dispatch) for 15 s.
# A live pump whose hold ran out only lets a second pump start, which is harmless.
PUMP_HOLD_MS = 5_000


def queue_name(kind: str = "") -> str:
    qp = get_settings().queue_prefix
    return f"{qp}.{kind}" if kind else qp


class Kicker:
    """Sends Celery tasks by name (no import of the task modules, so the receiver stays light).

    A kick flag is a Redis key from worker/keys.py (`Keys.kick_dispatch(provider)`, `Keys.kick_collect`);
    `hold`, `clear` and `take` get that key."""

    def __init__(self) -> None:
        from editq.worker.celery_app import app

        self.app = app
        self.r = get_redis()
        self.k = keys()

    def _coalesced(self, flag: str) -> bool:
        """Take the kick flag `flag` unless a kick or a running pump holds it."""
        return bool(self.r.set(flag, "1", nx=True, px=COALESCE_MS))

    def send_dispatch(self, provider: str, synchronous: bool = False) -> None:
        """Send the dispatch task whose flag the caller already set (the state machine's move does)."""
        self.app.send_task("editq.dispatch", args=[provider], queue=queue_name("sync") if synchronous else queue_name())

    def send_collect(self) -> None:
        """Send the collect task whose flag the caller already set."""
        self.app.send_task("editq.collect", args=[], queue=queue_name())

    def clear(self, flag: str) -> None:
        self.r.delete(flag)

    def hold(self, flag: str) -> None:
        """A pump for `flag` is running: kicks are absorbed by it instead of sending tasks."""
        self.r.set(flag, "1", px=PUMP_HOLD_MS)

    def take(self, flag: str) -> bool:
        """Hold the flag unless someone else did (then their kick already sent a task)."""
        return bool(self.r.set(flag, "1", nx=True, px=PUMP_HOLD_MS))

    def dispatch(self, provider: str, synchronous: bool = False) -> None:
        if self._coalesced(self.k.kick_dispatch(provider)):
            self.send_dispatch(provider, synchronous)

    def collect(self) -> None:
        if self._coalesced(self.k.kick_collect):
            self.send_collect()

    def poll(self, provider: str, job_ids: list[str], via: str = "poll") -> None:
        self.app.send_task("editq.poll", args=[provider, job_ids, via], queue=queue_name())

    def sweep(self, provider: str) -> None:
        self.app.send_task("editq.sweep", args=[provider], queue=queue_name())

    def finalize(self, batch_id: str) -> None:
        self.app.send_task("editq.finalize", args=[batch_id], queue=queue_name())
