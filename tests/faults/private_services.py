"""A PostgreSQL cluster and a Redis server of the fault suite's own, so a test can stop, restart,
freeze and thaw them without touching the shared services the rest of the suite uses.

PostgreSQL refuses to run as root: when the tests run as root, the cluster lives in a temporary
folder owned by the `postgres` user and every server command runs through `runuser`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_USER = "postgres"


def _pg_bin() -> Path:
    """FAULTS_PG_BIN, else PostgreSQL 15's server binaries, else the newest installed version's."""
    if os.environ.get("FAULTS_PG_BIN"):
        return Path(os.environ["FAULTS_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    preferred = [p for p in found if p.parts[-3] == "15"] or found
    return preferred[-1].parent if preferred else Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class PrivatePostgres:
    """One PostgreSQL 15 cluster on a free port, trust auth on 127.0.0.1. fsync is off: the
    cluster has to survive its server being stopped or killed, not the machine (the OS keeps
    what was written). synchronous_commit stays on: with it off, a commit acknowledged in the
    last few hundred milliseconds before an immediate stop is lost, which no real server does."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        if not (self.bin / "initdb").exists():
            raise RuntimeError(f"PostgreSQL server binaries not found in {self.bin}: install postgresql-15 "
                               "(or point FAULTS_PG_BIN at a bin/ folder holding initdb and pg_ctl)")
        # PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres` and every
        # server command runs through runuser; as anyone else, it is that user's own.
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="fedfaults-pg-"))
        if self.as_root:
            shutil.chown(self.root, PG_USER, PG_USER)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                     f"unix_socket_directories = '{self.root}'\n"
                     "fsync = off\nfull_page_writes = off\n"
                     "max_connections = 200\nshared_buffers = 32MB\n")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                               f"{self.log_tail()}")
        return r

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", "-c logging_collector=off",
                  "start")
        _wait(self.accepts_connections, 30, "PostgreSQL to accept connections")

    def stop(self, mode: str = "fast") -> None:
        """fast: roll back open transactions and close every session (an orderly restart);
        immediate: no shutdown checkpoint, like a server that died."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop_for(self, seconds: float, mode: str = "fast") -> None:
        """The deliberate outage: down for `seconds`, then back."""
        self.stop(mode)
        time.sleep(seconds)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def destroy(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """One redis-server on a free port, nothing persisted (a restart loses every key, as a
    cache-only production Redis does)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found on PATH: install redis-server")
        self.exe = exe
        self.root = Path(tempfile.mkdtemp(prefix="fedfaults-redis-"))
        self.log = self.root / "redis.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen([self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.root)],
                                     stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        fh.close()
        _wait(self.ping, 30, "redis-server to answer")

    def ping(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{self.log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop_for(self, seconds: float) -> None:
        self.stop()
        time.sleep(seconds)
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server, not a dead one)."""
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("FLUSHALL failed on the private Redis")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
