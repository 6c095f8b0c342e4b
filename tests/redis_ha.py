"""A real Redis high-availability set for tests: a primary, a replica and three sentinels (`redis-server`
and `redis-server --sentinel` processes on free ports, in a temporary directory)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from editq.producer.stack import free_port, wait_until

MASTER = "editq-ha"


@dataclass
class RedisHA:
    root: Path
    primary: int = 0
    replica: int = 0
    sentinels: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, conf: str, *extra: str) -> None:
        path = self.root / f"{name}.conf"
        path.write_text(conf)
        server = shutil.which("redis-server")
        assert server, "redis-server is needed (.ci/run installs it)"
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen([server, str(path), *extra], cwd=self.root, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start(self) -> None:
        self.primary, self.replica = free_port(), free_port()
        base = "bind 127.0.0.1\nappendonly yes\nappendfsync everysec\nsave \"\"\nmaxmemory-policy noeviction\n"
        self._spawn("primary", base + f"port {self.primary}\ndir {self.root}\nappendfilename primary.aof\n"
                    "appenddirname primary-aof\n")
        wait_until(lambda: _ping(self.primary), 20, "redis primary")
        self._spawn("replica", base + f"port {self.replica}\ndir {self.root}\nappenddirname replica-aof\n"
                    f"replicaof 127.0.0.1 {self.primary}\n")
        wait_until(lambda: _linked(self.replica), 20, "redis replica in sync")
        for i in range(3):
            port = free_port()
            self.sentinels.append(port)
            self._spawn(f"sentinel{i}", f"bind 127.0.0.1\nport {port}\ndir {self.root}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {self.primary} 2\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 5000\n"
                        f"sentinel parallel-syncs {MASTER} 1\n", "--sentinel")
        for port in self.sentinels:
            wait_until(lambda p=port: _sees_replica(p), 30, "sentinel sees primary and replica")

    def env(self) -> dict[str, str]:
        return {"EDITQ_REDIS_URL": f"redis://127.0.0.1:{self.primary}/0",
                "EDITQ_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinels),
                "EDITQ_REDIS_SENTINEL_MASTER": MASTER}

    def master_port(self) -> int:
        addr = redis.Redis(port=self.sentinels[0], socket_timeout=2).sentinel_get_master_addr_by_name(MASTER)
        return int(addr[1])

    def kill_primary(self) -> None:
        """A hard crash of the primary: SIGKILL, no shutdown, no last AOF fsync."""
        proc = self.procs.pop("primary")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()


def _ping(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _linked(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_timeout=1).info("replication").get("master_link_status") == "up"
    except redis.RedisError:
        return False


def _sees_replica(port: int) -> bool:
    try:
        r = redis.Redis(port=port, socket_timeout=1)
        return bool(r.sentinel_master(MASTER).get("num-slaves", 0)) and len(r.sentinel_sentinels(MASTER)) >= 2
    except (redis.RedisError, KeyError):
        return False


@contextlib.contextmanager
def redis_ha(root: Path) -> Iterator[RedisHA]:
    ha = RedisHA(root)
    try:
        ha.start()
        yield ha
    finally:
        ha.stop()
