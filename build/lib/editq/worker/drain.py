"""Draining a worker before it stops (Kubernetes preStop, `editq drain`): it stops taking tasks, hands its
running pumps over to the broker (another worker takes them), finishes the short steps in hand, and then
SIGTERM's warm shutdown has nothing left to cut. Scaling in never cuts work; a step cut anyway (the grace
period ran out, SIGKILL) is recovered by its job's lease, never lost.

Two halves:
* in the worker: the remote-control command `editq_drain` and Celery's `worker_shutting_down` signal set
  `DRAINING`, which the pumps of worker/tasks.py check between rounds;
* `drain(node, timeout)`, run from the pod (preStop): cancel the node's consumers, send `editq_drain`, wait
  until the node reports no active task.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from celery.signals import worker_shutting_down
from celery.worker.control import control_command

DRAINING = threading.Event()


@control_command()
def editq_drain(state: Any) -> dict[str, str]:
    """Remote control: this worker's pumps hand over at their next round."""
    DRAINING.set()
    return {"ok": "draining"}


@worker_shutting_down.connect
def _on_shutdown(**_: object) -> None:
    DRAINING.set()


def node_name(name: str = "editq") -> str:
    """The Celery node name `editq worker --name NAME` uses on this host (`NAME@hostname`)."""
    return f"{name}@{socket.gethostname()}"


def drain(node: str, timeout_s: float, poll_s: float = 0.5) -> tuple[bool, int]:
    """Stop `node` taking tasks and wait for its active ones. Returns (drained, tasks still active)."""
    from editq.worker.celery_app import app
    from editq.worker.triggers import queue_name

    for queue in (queue_name(), queue_name("sync")):
        app.control.cancel_consumer(queue, destination=[node], reply=True, timeout=2)
    app.control.broadcast("editq_drain", destination=[node], reply=True, timeout=2)
    deadline = time.monotonic() + timeout_s
    active = -1
    while time.monotonic() < deadline:
        replies = app.control.inspect(destination=[node], timeout=1).active() or {}
        if node not in replies:  # the node is gone (already stopped) or did not answer: nothing to wait for
            return True, 0
        active = len(replies[node])
        if active == 0:
            return True, 0
        time.sleep(poll_s)
    return False, active
