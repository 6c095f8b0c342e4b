"""`editq up` / `editq down`: the embedded stack (Redis, S3, sandbox, receiver, one worker), detached.

`editq up` starts a supervisor process in its own session (`python -m editq.producer.up --state-dir DIR`),
which starts the stack with `producer.stack.LocalStack` and writes, once everything answers:

* `DIR/env`: `export NAME=value` lines, the environment other shells use (`source .editq/env`);
* `DIR/pids.json`: the supervisor's and each service's process id (for `editq down`);
* `DIR/logs/`: each service's log.

`editq down` sends the supervisor SIGTERM (it stops every service it started, then exits), waits, and
falls back to stopping the recorded services itself if the supervisor is gone. Nothing else is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from editq.producer.preflight import Problem

DEFAULT_DIR = Path(".editq")
PASS_THROUGH = ("EDITQ_KEY_PREFIX", "EDITQ_QUEUE_PREFIX")  # namespaces chosen by the caller, kept in the env file


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not running
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def read_pids(state_dir: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((state_dir / "pids.json").read_text()))
    except (OSError, ValueError):
        return None


def env_lines(env: dict[str, str]) -> list[str]:
    return [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]


def running(state_dir: Path) -> int | None:
    """The supervisor's pid if a stack started from `state_dir` is up."""
    pids = read_pids(state_dir)
    pid = int(pids["supervisor"]) if pids else 0
    return pid if pid and _alive(pid) and (state_dir / "env").exists() else None


def up(state_dir: Path = DEFAULT_DIR, *, latency_s: float = 2.0, timeout: float = 180.0) -> tuple[bool, list[str]]:
    """Start the stack unless it runs already. Returns (started now, the env file's lines)."""
    state_dir = state_dir.resolve()
    if running(state_dir):
        return False, (state_dir / "env").read_text().splitlines()
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("env", "pids.json"):
        (state_dir / name).unlink(missing_ok=True)
    log = (state_dir / "supervisor.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "editq.producer.up", "--state-dir", str(state_dir), "--latency", str(latency_s)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while not (state_dir / "env").exists():
        if proc.poll() is not None:
            tail = (state_dir / "supervisor.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise Problem("the stack did not start: " + (" | ".join(tail) or f"exit code {proc.returncode}"))
        if time.monotonic() > deadline:
            _stop(state_dir, proc.pid)
            raise Problem(f"the stack did not start within {timeout:.0f}s (logs: {state_dir / 'logs'})")
        time.sleep(0.2)
    return True, (state_dir / "env").read_text().splitlines()


def _stop(state_dir: Path, pid: int, timeout: float = 60.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def down(state_dir: Path = DEFAULT_DIR, timeout: float = 60.0) -> bool:
    """Stop the stack started from `state_dir`. Returns False if none was running."""
    state_dir = state_dir.resolve()
    pids = read_pids(state_dir)
    if not pids:
        return False
    was_running = False
    sup = int(pids.get("supervisor", 0))
    if sup and _alive(sup):
        was_running = True
        _stop(state_dir, sup, timeout)
    for pid in pids.get("services", {}).values():  # the supervisor was killed before it could stop them
        if _alive(int(pid)):
            was_running = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _alive(int(pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                if _alive(int(pid)):
                    os.killpg(int(pid), signal.SIGKILL)
    for name in ("env", "pids.json"):
        (state_dir / name).unlink(missing_ok=True)
    return was_running


def supervise(state_dir: Path, latency_s: float) -> int:
    """The detached process: start the stack, publish its environment, stop it on SIGTERM/SIGINT."""
    from editq.producer.stack import LocalStack

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(sandbox_opts={"latency_s": latency_s, "jitter_s": latency_s / 4, "concurrency": 16},
                       isolate=False, log_dir=logs)
    try:
        stack.start()
        services = {name: p.pid for name, p in stack.procs.items()}
        embedded = getattr(stack._embedded_redis, "pid", None)
        if embedded:
            services["redis"] = int(embedded)
        (state_dir / "pids.json").write_text(json.dumps({"supervisor": os.getpid(), "services": services}))
        env = {**stack.env, **{k: os.environ[k] for k in PASS_THROUGH if k in os.environ}}
        tmp = state_dir / "env.tmp"
        tmp.write_text("# editq up: source this file in other shells\n" + "\n".join(env_lines(env)) + "\n")
        tmp.replace(state_dir / "env")  # appears whole: `editq up` waits for it
        print(f"editq stack up (pid {os.getpid()})", flush=True)
        while not stop.wait(1.0):
            dead = [n for n, p in stack.procs.items() if p.poll() is not None]
            if dead:
                print(f"stopped: {', '.join(dead)} exited (logs in {logs})", flush=True)
                break
        return 0
    finally:
        (state_dir / "env").unlink(missing_ok=True)
        stack.stop()
        print("editq stack down", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m editq.producer.up")
    ap.add_argument("--state-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--latency", type=float, default=2.0)
    args = ap.parse_args(argv)
    return supervise(args.state_dir.resolve(), args.latency)


if __name__ == "__main__":
    sys.exit(main())
