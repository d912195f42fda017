"""A redis-server of a test's own, on a free port, that the test may stop, restart or freeze
(the shared Redis of the test run must not be touched). No persistence: a restart loses every
key, the worst case for the platform."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from devstack.localstack import free_port


class RedisServer:
    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("the fault tests need redis-server on PATH (apt-get install redis-server)")
        self.port = port or free_port()
        self.log_path = log_dir / f"redis-{self.port}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_timeout=5, socket_connect_timeout=2)

    def start(self, timeout: float = 20.0) -> RedisServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"redis-server on port {self.port} did not start: {self.log_path.read_text()}") from None
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
