"""Start the platform's processes and node daemons on one machine (demo, tests, benchmarks).

Real processes talking over HTTP and a real broker: a WSGI server (gunicorn), a Celery worker
(with beat for the reconciler) and one `python -m hospital_node run` per hospital.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
PLATFORM_DIR = REPO / "platform"


def db_url_for_children(connection) -> str:
    """A DATABASE_URL that points child processes at the same PostgreSQL database as `connection`."""
    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    pw = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"postgres://{user}{pw}@{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLATFORM_DIR), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    ready_file: Path | None = None  # a Celery worker writes it once it consumes tasks

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class Stack:
    log_dir: Path
    env: dict
    procs: list[Proc] = field(default_factory=list)
    base_url: str = ""

    def spawn(self, name: str, args: list[str], cwd: Path | None = None, env: dict | None = None) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        fh = open(log_path, "ab")
        p = subprocess.Popen(args, cwd=str(cwd or REPO), env=env or self.env, stdout=fh, stderr=subprocess.STDOUT,
                             start_new_session=True)
        fh.close()
        proc = Proc(name, p, log_path)
        self.procs.append(proc)
        return proc

    def start_web(self, port: int | None = None, threads: int = 32) -> Proc:
        port = port or free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        proc = self.spawn("web", [sys.executable, "-m", "gunicorn", "config.wsgi:application", "--chdir", str(PLATFORM_DIR),
                                  "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread", "--threads", str(threads),
                                  "--timeout", "120", "--graceful-timeout", "5", "--log-level", "warning"])
        wait_http(f"{self.base_url}/api/health/?scope=web", proc)
        return proc

    def start_worker(self, name: str = "worker", beat: bool = True, concurrency: int = 1,
                     wait_ready_s: float = 120.0, wait: bool = True) -> Proc:
        """Start a Celery worker and wait until it consumes tasks (its ready file appears); with
        wait=False return at once (the caller starts other processes meanwhile, then wait_ready)."""
        args = [sys.executable, "-m", "celery", "-A", "config", "worker", "-n", f"{name}@%h", "-l", "warning",
                "--concurrency", str(concurrency), "--pool", "solo" if concurrency == 1 else "prefork"]
        if beat:
            args += ["-B", "-s", str(self.log_dir / f"celerybeat-{name}")]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        ready = self.log_dir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self.spawn(name, args, cwd=PLATFORM_DIR, env={**self.env, "FEDPLATFORM_WORKER_READY_FILE": str(ready)})
        proc.ready_file = ready
        if wait:
            self.wait_ready(proc, wait_ready_s)
        return proc

    @staticmethod
    def wait_ready(proc: Proc, timeout: float = 120.0) -> None:
        """Wait until a worker started by start_worker consumes tasks."""
        t0 = time.monotonic()
        while not proc.ready_file.exists():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{proc.name} was not ready within {timeout:.0f}s:\n{proc.tail()}")
            time.sleep(0.1)

    def start_node(self, name: str, config: Path) -> Proc:
        return self.spawn(f"node-{name}", [sys.executable, "-m", "hospital_node", "run", "--config", str(config)])

    def enrol_node(self, config: Path, token: str) -> None:
        r = subprocess.run([sys.executable, "-m", "hospital_node", "enrol", "--config", str(config), "--token", token],
                           cwd=str(REPO), env=self.env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"node enrolment failed ({config}): {r.stdout}\n{r.stderr}")

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def wait_http(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def write_node_config(path: Path, *, base_url: str, csv: Path, max_epsilon: float = 10.0, auto_approve: bool = True,
                      allowed_models: list[str] | None = None, poll_wait_s: int = 20, max_rounds: int = 1000,
                      extra_limits: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    models = allowed_models or ["logistic_regression", "mlp_classifier", "linear_regression", "mlp_regressor"]
    path.write_text(
        "[platform]\n"
        f'url = "{base_url}"\n'
        'credentials_file = "credentials.json"\n'
        "request_timeout_s = 60\n\n"
        "[data]\n"
        f'csv = "{csv}"\n\n'
        "[node]\n"
        'ledger = "ledger.sqlite3"\n'
        'work_dir = "work"\n'
        f"poll_wait_s = {poll_wait_s}\n\n"
        "[limits]\n"
        f"max_epsilon = {max_epsilon}\n"
        "max_delta = 1e-3\n"
        f"allowed_models = {models!r}\n".replace("'", '"') +
        f"auto_approve = {'true' if auto_approve else 'false'}\n"
        f"max_rounds = {max_rounds}\n" + extra_limits)
    return path
