"""A private redis-server (Debian's package) on a free loopback port, for the cluster tests and the cluster benchmark;
never the system one."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


class RedisServer:
    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *options: str) -> None:
        """Starts it with these redis-server `options` besides ours (e.g. "--replicaof", host, port)."""
        self.process = subprocess.Popen(
            [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory), "--save", "",
             "--appendonly", "no", "--logfile", str(self.directory / "redis.log"), *options])
        self._wait()

    def _wait(self) -> None:
        assert self.process is not None
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class RedisSentinel(RedisServer):
    """A Sentinel (Debian's redis-server in sentinel mode) watching the master `master_name` at `master`, with a
    quorum of one and a failover after a second of silence."""

    def __init__(self, directory: Path, port: int, master_name: str, master: RedisServer) -> None:
        super().__init__(directory, port)
        self.master_name = master_name
        self.master = master

    def start(self, *options: str) -> None:
        config = self.directory / "sentinel.conf"  # Sentinel rewrites its config file: one of its own
        config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
                          f"logfile {self.directory / 'sentinel.log'}\n"
                          f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
                          f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                          f"sentinel failover-timeout {self.master_name} 5000\n")
        self.process = subprocess.Popen([_binary(), str(config), "--sentinel", *options])
        self._wait()


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
    return binary
